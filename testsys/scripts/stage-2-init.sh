#!@busybox@/bin/sh
# Stage 2 of the test system: proves the image's own closure runs as PID 1 after the
# initramfs switched root to it, then powers the machine off. The root is mounted
# read-only, so booting never changes the image.
export PATH=@busybox@/bin
mount -t proc proc /proc 2>/dev/null
echo "MDI-REPORT stage2 $(cat @out@/nixos-version)"
sync
poweroff -f
