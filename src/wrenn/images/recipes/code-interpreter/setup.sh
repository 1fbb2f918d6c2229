# Run in the image's root (chroot, as root) after its Python packages are installed.
# The Bash kernel's spec, system-wide (/usr/local/share/jupyter/kernels/bash).
python3 -m bash_kernel.install --prefix /usr/local >/dev/null
# Byte-compile what the kernels import, so that no sandbox pays for it at first start.
python3 -m compileall -q -j 0 /usr/local/lib/python3.11/dist-packages >/dev/null || true
# matplotlib's font cache, built once here rather than in every sandbox's first chart.
HOME=/home/user MPLBACKEND=Agg python3 -c 'import matplotlib.pyplot' 2>/dev/null
chown -R user:user /home/user
# Deno (from npm.lock, unpacked into node_modules) on PATH: the JavaScript/TypeScript kernel's binary.
ln -sf ../lib/node_modules/@deno/linux-x64-glibc/deno /usr/local/bin/deno
/usr/local/bin/deno --version >/dev/null
