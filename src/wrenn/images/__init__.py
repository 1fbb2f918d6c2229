"""Guest images: the kernel and root filesystem builder (`wrenn image build`)."""
