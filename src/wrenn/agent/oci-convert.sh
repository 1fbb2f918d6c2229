#!/bin/sh
# The conversion of an OCI image into a Wrenn guest's file system, run as root in a converter VM
# (agent/_oci.py). Arguments: the work directory (layers as layer-NNN, the host's static busybox as
# busybox) and the file system's size in MiB (0: fitted). It writes root.ext4 there.
set -eu
work=$1 root=$1/root
rm -rf "$root"; mkdir -p "$root"
for layer in $(ls "$work" | grep '^layer-' | sort); do
  python3 - "$root" "$work/$layer" <<'PY'
import os, shutil, sys, tarfile
root, layer = sys.argv[1], sys.argv[2]
def drop(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)
with tarfile.open(layer) as tar:
    for member in tar:
        name = os.path.normpath(member.name.lstrip("/"))
        if name.startswith(".."):
            continue
        parent, base = os.path.split(name)
        if base == ".wh..wh..opq":
            here = os.path.join(root, parent)
            if os.path.isdir(here) and not os.path.islink(here):
                for entry in os.listdir(here):
                    drop(os.path.join(here, entry))
        elif base.startswith(".wh."):
            drop(os.path.join(root, parent, base[4:]))
PY
  tar -xpf "$work/$layer" -C "$root" --numeric-owner --exclude='.wh.*' --exclude='*/.wh.*'
  rm -f "$work/$layer"
  echo "unpacked $layer"
done
b=$root/opt/wrenn
rm -rf "$b"; mkdir -p "$b/bin" "$b/lib"
cp -a /opt/wrenn/site "$b/site"
cp /usr/bin/python3.11 "$b/bin/python3.bin"
mkdir -p "$b/lib/python3.11"
(cd /usr/lib/python3.11 && tar -cf - --exclude=test --exclude=idlelib --exclude=tkinter --exclude=ensurepip \
  --exclude=lib2to3 --exclude=turtledemo --exclude=__pycache__ .) | tar -xf - -C "$b/lib/python3.11"
cp /usr/bin/tini-static "$b/bin/tini"
cp /usr/sbin/resize2fs "$b/bin/resize2fs.bin"
for f in /usr/bin/python3.11 /usr/sbin/resize2fs $(find /usr/lib/python3.11/lib-dynload /opt/wrenn/site -name '*.so'); do
  ldd "$f" 2>/dev/null | awk '/=> \//{print $3} /^[[:space:]]*\/lib/{print $1}'
done | sort -u | while read -r lib; do cp -L "$lib" "$b/lib/"; done
cp -L /lib64/ld-linux-x86-64.so.2 "$b/lib/ld-linux-x86-64.so.2"
install -m 0755 "$work/busybox" "$b/bin/busybox"
for applet in sh ash mount mountpoint mkdir ln cat date hostname ip awk stat mkfifo tee rm tr echo printf \
    sleep env grep sed ls id cp mv chmod chown; do
  ln -sf busybox "$b/bin/$applet"
done
for tool in python3 resize2fs; do
  printf '#!/opt/wrenn/bin/sh\nexec /opt/wrenn/lib/ld-linux-x86-64.so.2 --library-path /opt/wrenn/lib /opt/wrenn/bin/%s.bin "$@"\n' \
    "$tool" > "$b/bin/$tool"
  chmod 0755 "$b/bin/$tool"
done
cat > "$b/bin/envd" <<'SH'
#!/opt/wrenn/bin/sh
export PYTHONHOME=/opt/wrenn PYTHONPATH=/opt/wrenn/site PYTHONDONTWRITEBYTECODE=1
exec /opt/wrenn/lib/ld-linux-x86-64.so.2 --library-path /opt/wrenn/lib /opt/wrenn/bin/python3.bin -m wrenn.envd --port 49983
SH
chmod 0755 "$b/bin/envd"
line=$(grep -n '^exec tini' /sbin/wrenn-init | cut -d: -f1)
{ echo '#!/opt/wrenn/bin/sh'; sed -n "2,$((line - 1))p" /sbin/wrenn-init \
  | sed 's|^export PATH=|export PATH=/opt/wrenn/bin:|'; echo 'exec /opt/wrenn/bin/tini -s -- /opt/wrenn/bin/envd'; } > "$b/init"
chmod 0755 "$b/init"
for d in sbin etc proc sys dev tmp run root var/log; do [ -e "$root/$d" ] || [ -L "$root/$d" ] || mkdir -p "$root/$d"; done
# A copy, not a link: the initramfs checks /sbin/wrenn-init before switch_root, where an absolute link would
# point into the initramfs. Written from inside the root (chroot), so that an image whose /sbin is a link
# (/usr/sbin, absolute or not) gets it where its links lead, and nothing outside the root is touched.
chroot "$root" /opt/wrenn/bin/sh -c 'rm -f /sbin/wrenn-init && cp /opt/wrenn/init /sbin/wrenn-init && chmod 0755 /sbin/wrenn-init'
[ -s "$root/etc/passwd" ] || echo 'root:x:0:0:root:/root:/bin/sh' > "$root/etc/passwd"
[ -s "$root/etc/group" ] || echo 'root:x:0:' > "$root/etc/group"
used=$(du -sm "$root" | cut -f1)
size=${2:-0}; [ "$size" -gt 0 ] || size=$((used * 3 / 2 + 128))
rm -f "$work/root.ext4"
mkfs.ext4 -q -F -L wrenn-root -b 4096 -O ^has_journal -E lazy_itable_init=0 -d "$root" "$work/root.ext4" "${size}M"
rm -rf "$root"
echo "converted: ${used} MiB of files in a ${size} MiB file system"
