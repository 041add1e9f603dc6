"""What the guest runs: the initramfs' init script, and the command it is handed.

The command line, environment and exit status travel through a private read-write 9p
share (the "control" share), not the kernel command line (2 KiB limit, quoting) or the
serial console (where the command's own output could be mistaken for a status).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Where the guest assembles its root (a tmpfs) before chrooting into it.
GUEST_ROOT = "/newroot"
# Where the control share sits in the initramfs (outside the chroot).
GUEST_CONTROL = "/control"
CONTROL_TAG = "mdi-control"
# Where the guest's busybox sits inside the root, for the command snippet.
BUSYBOX_IN_ROOT = "/run/make-disk-image/busybox"
ROOT_TAG = "root"

# Larger 9p messages make big reads (python's stdlib, mkfs binaries) much faster; the
# kernel caps it at what the virtio transport allows. nosuid: qemu reports owners as it
# sees them, and from inside a Nix sandbox with build users a setuid-root program of the
# root directory (util-linux's mount) belongs to the overflow uid; executed, it would
# drop the guest's root to that uid ("must be superuser to use mount"). The guest runs
# everything as root, so no setuid bit is needed there.
_9P_OPTIONS = "trans=virtio,version=9p2000.L,msize=512000,nosuid"


# The init run by the guest kernel. It reads what to do from the control share:
#   shares   lines "TAG GUEST-PATH rw|ro"
#   command  a shell snippet run by busybox sh inside the chroot
# and writes "status" there: "exit N" when the command ran, "error MESSAGE" when the
# guest could not be set up.
_RUN_INIT = r"""#!/bin/busybox sh
export PATH=/bin
R=__ROOT__
C=__CONTROL__

fail() {
    echo "make-disk-image vm: $*" >/dev/console
    echo "error $*" >$C/status
    sync
    poweroff -f
    exit 1
}

mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
exec </dev/null >/dev/console 2>&1
# The firmware's last console line ("Booting from ROM..") has no newline; end it so the
# command's first line starts on its own.
echo

while read -r ko; do
    # "File exists" (already built in or loaded) and missing CPU features
    # (crc32c-intel under TCG) are fine; a real failure shows at the mounts below.
    insmod /lib/modules/__KVER__/$ko 2>/dev/null
done </lib/modules/load-order

mount -t 9p -o __9P__ __CONTROL_TAG__ $C || { echo "control share missing"; poweroff -f; }
# The root: a tmpfs holding the root directory's top-level entries (read-only binds,
# symlinks recreated), so that a share can be mounted at any path.
mkdir -p /root-dir
mount -t 9p -o ro,__9P__,cache=loose __ROOT_TAG__ /root-dir ||
    fail "cannot mount the root directory over 9p"
mount -t tmpfs -o mode=0755 tmpfs $R || fail "cannot mount the guest's root tmpfs"
while read -r p; do
    if [ -L /root-dir$p ]; then
        ln -s "$(readlink /root-dir$p)" "$R$p" || fail "cannot link $p"
    elif [ -d /root-dir$p ]; then
        mkdir -p "$R$p" && mount -o bind /root-dir$p "$R$p" || fail "cannot bind $p"
    elif [ -e /root-dir$p ]; then
        touch "$R$p" && mount -o bind /root-dir$p "$R$p" || fail "cannot bind $p"
    fi
done <$C/root-entries
mkdir -p $R/dev $R/proc $R/sys $R/tmp $R/run $R/mnt

mount -t devtmpfs devtmpfs $R/dev || fail "cannot mount /dev"
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o gid=5,mode=620 devpts $R/dev/pts
mount -t tmpfs -o mode=1777 tmpfs $R/dev/shm
ln -sfn /proc/self/fd $R/dev/fd
ln -sfn /proc/self/fd/0 $R/dev/stdin
ln -sfn /proc/self/fd/1 $R/dev/stdout
ln -sfn /proc/self/fd/2 $R/dev/stderr
mount -t proc proc $R/proc || fail "cannot mount /proc"
mount -t sysfs sysfs $R/sys || fail "cannot mount /sys"
if [ -d $R/sys/firmware/efi/efivars ]; then
    mount -t efivarfs efivarfs $R/sys/firmware/efi/efivars || fail "cannot mount efivarfs"
fi
for d in tmp run mnt; do
    mount -t tmpfs -o mode=0755 tmpfs $R/$d || fail "cannot mount tmpfs on /$d"
done
chmod 1777 $R/tmp

if [ -f $C/shares ]; then
    while read -r tag guest mode; do
        mkdir -p "$R$guest" 2>/dev/null || [ -d "$R$guest" ] ||
            fail "share mount point $guest is missing from a read-only directory of the" \
                "root (use a path that exists there, or one under /tmp, /run, /mnt or a" \
                "new top-level directory)"
        # Read-only shares are inputs the host leaves alone while the guest runs.
        cache=""
        [ "$mode" = ro ] && cache=,cache=loose
        mount -t 9p -o $mode,__9P__$cache "$tag" "$R$guest" ||
            fail "cannot mount share $tag on $guest"
    done <$C/shares
fi

# The command runs under the initramfs' busybox sh (copied into the chroot's tmpfs) so
# it does not depend on a shell in the root directory.
mkdir -p $R/run/make-disk-image
cp /bin/busybox $R__BUSYBOX__
chroot $R __BUSYBOX__ sh -c "$(cat $C/command)"
status=$?

# stty sets the terminal with TCSADRAIN: it returns once the command's output left the
# serial port, so the host sees all of it before the status.
stty -F /dev/console onlcr >/dev/null 2>&1
sync
echo "exit $status" >$C/status
sync
poweroff -f
"""


def run_init_script(kernel_version: str) -> str:
    """The init script run_in_vm's initramfs uses."""
    replacements = {
        "__ROOT__": GUEST_ROOT,
        "__CONTROL__": GUEST_CONTROL,
        "__CONTROL_TAG__": CONTROL_TAG,
        "__ROOT_TAG__": ROOT_TAG,
        "__KVER__": kernel_version,
        "__9P__": _9P_OPTIONS,
        "__BUSYBOX__": BUSYBOX_IN_ROOT,
    }
    script = _RUN_INIT
    for key, value in replacements.items():
        script = script.replace(key, value)
    return script


def command_snippet(argv: Sequence[str], env: Mapping[str, str], cwd: str) -> str:
    """The shell snippet the guest's busybox sh runs in the root: `argv` with exactly
    `env` (PATH defaults to DEFAULT_PATH) in `cwd`.

    The program is looked up in that PATH by `which` and run by its path: busybox
    (built to prefer its applets) would otherwise run its own `sh`, `true`, ... instead
    of the root's programs the command names. Nothing of the root is assumed but PATH.
    """
    full_env = {"PATH": DEFAULT_PATH, **env}
    assignments = " ".join(shlex.quote(f"{k}={v}") for k, v in full_env.items())
    program = shlex.quote(argv[0])
    lookup = (
        f"PATH={shlex.quote(full_env['PATH'])} {BUSYBOX_IN_ROOT} which {program}"
        if "/" not in argv[0]
        else f"echo {program}"
    )
    return (
        f"cd -- {shlex.quote(cwd)} || exit 127\n"
        f"program=$({lookup}) || {{ echo {program}: not found >&2; exit 127; }}\n"
        f'exec {BUSYBOX_IN_ROOT} env -i {assignments} "$program" {shlex.join(argv[1:])}\n'
    )
