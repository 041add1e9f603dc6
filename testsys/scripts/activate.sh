#!@busybox@/bin/sh
# Activation of the test system: what NixOS' activation script does that an image
# build depends on, run by nixos-enter inside the mounted image (chrooted there).
# Its interpreter and tools are the static busybox in the system's closure, so it
# needs nothing from the build host.
set -e
export PATH=@busybox@/bin
systemConfig=@out@

is_mounted() {
    awk -v m="$1" '$5 == m { found = 1 } END { exit !found }' /proc/self/mountinfo 2>/dev/null
}

# specialfs: the kernel file systems the later steps (and the boot loader installer,
# which reads /proc/self/mountinfo and /sys) expect.
mkdir -p /proc /sys /dev /run /tmp /etc /bin /var /nix/var/nix/profiles
[ -e /proc/self ] || mount -t proc proc /proc
is_mounted /sys || [ -d /sys/class ] || mount -t sysfs sysfs /sys
is_mounted /run || mount -t tmpfs -o mode=0755 tmpfs /run
chmod 1777 /tmp

# etc: the static /etc of the generation, linked entry by entry like NixOS' setup-etc.
ln -sfn @etc@/etc /etc/static
for entry in /etc/static/*; do
    name=${entry##*/}
    case $name in
        passwd | group) ;;
        *) ln -sfn "/etc/static/$name" "/etc/$name" ;;
    esac
done

# users-groups: real files (not links), like update-users-groups.pl writes.
for db in passwd group; do
    cp @etc@/etc/$db /etc/.$db.tmp
    chmod 0644 /etc/.$db.tmp
    mv -f /etc/.$db.tmp /etc/$db
done

# binsh and the current system link.
ln -sfn @busybox@/bin/sh /bin/sh
ln -sfn "$systemConfig" /run/current-system
