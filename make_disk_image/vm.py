"""Run one command inside a throw-away qemu TCG guest that sees a disk image as /dev/vda.

The guest boots the host's own kernel with a small busybox initramfs, mounts the host's
`/` read-only over 9p, puts fresh devtmpfs/proc/sysfs/tmpfs mounts inside it, chroots
there and runs the command. So every host program (mkfs.vfat, tune2fs, python3, ...)
is available in the guest without building a guest root file system, and the only
writable things are the disk image, the tmpfs mounts and the shares asked for.

The command line, environment and exit status travel through a private read-write 9p
share (the "control" share), not the kernel command line (2 KiB limit, quoting) or the
serial console (where the command's own output could be mistaken for a status).
"""

from __future__ import annotations

import argparse
import codecs
import ctypes
import gzip
import hashlib
import io
import logging
import lzma
import os
import re
import select
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from . import process
from .platforms import Platform, host_platform, platform_for
from .process import StepError

logger = logging.getLogger("make_disk_image")

STEP = "vm"

# What a guest needs to reach a disk, the host's root and the shares, and to format and
# mount ESPs and ext4 roots. Anything else can be modprobed from inside the guest: the
# host's /lib/modules for this very kernel is visible there.
DEFAULT_MODULES: tuple[str, ...] = (
    "virtio_pci",
    "virtio_blk",
    "virtio_rng",
    "9pnet_virtio",
    "9p",
    "crc32c_generic",
    "crc32c",
    "ext4",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_utf8",
    "nls_iso8859-1",
    "efivarfs",
    "loop",
)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Where the guest mounts the host's root before chrooting into it.
GUEST_ROOT = "/host"
# Where the control share sits in the initramfs (outside the chroot).
GUEST_CONTROL = "/control"
CONTROL_TAG = "mdi-control"
HOST_ROOT_TAG = "host"

# Bump when the initramfs layout changes, so cached images are rebuilt.
_INITRAMFS_FORMAT = "1"

# Larger 9p messages make big reads (python's stdlib, mkfs binaries) much faster; the
# kernel caps it at what the virtio transport allows.
_9P_OPTIONS = "trans=virtio,version=9p2000.L,msize=512000"


@dataclass(frozen=True)
class Share:
    """A host directory made visible in the guest at `guest` (read-only unless writable)."""

    host: Path
    guest: str
    writable: bool = False


# ---------------------------------------------------------------------------
# Host kernel


def _version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Order kernel versions numerically where they are numbers ("6.10" > "6.9")."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"[.\-+~_]", version)
    )


def host_kernel(
    boot: Path = Path("/boot"), modules_root: Path = Path("/lib/modules")
) -> tuple[Path, str]:
    """Return (kernel image, version) of the newest host kernel that has its modules."""
    candidates: list[tuple[Path, str]] = []
    for image in boot.glob("vmlinuz-*"):
        version = image.name.removeprefix("vmlinuz-")
        if (modules_root / version / "modules.dep").is_file():
            candidates.append((image, version))
    if not candidates:
        raise StepError(
            STEP,
            f"no kernel found: need {boot}/vmlinuz-VERSION with modules in "
            f"{modules_root}/VERSION; install the Debian package linux-image-amd64",
        )
    image, version = max(candidates, key=lambda c: _version_key(c[1]))
    if not os.access(image, os.R_OK):
        raise StepError(STEP, f"kernel image {image} is not readable by this user")
    return image, version


# The compressed payload inside a bzImage starts with one of these.
_XZ_MAGIC = b"\xfd7zXZ\x00"
_GZIP_MAGIC = b"\x1f\x8b\x08\x00"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def pvh_kernel(image: Path, version: str) -> Path | None:
    """The uncompressed ELF kernel inside `image`, for qemu's PVH direct boot.

    Under TCG the bzImage's own decompressor takes ~3 s of every boot; qemu boots the
    plain vmlinux (with its PVH entry note) directly. The result is cached. None when the
    kernel has no PVH entry or its payload is in a format this cannot unpack.
    """
    config = image.parent / f"config-{version}"
    if not config.is_file() or "CONFIG_PVH=y\n" not in config.read_text(errors="replace"):
        return None
    data = image.read_bytes()
    target = _cache_dir() / f"vmlinux-{version}-{hashlib.sha256(data).hexdigest()[:32]}"
    if target.is_file():
        return target
    elf: bytes | None = None
    unpackers: tuple[tuple[bytes, Callable[[bytes], bytes] | None], ...] = (
        (_XZ_MAGIC, _unxz),
        (_GZIP_MAGIC, _gunzip),
        (_ZSTD_MAGIC, None),
    )
    for magic, unpack in unpackers:
        offset = data.find(magic)
        if offset < 0:
            continue
        if unpack is None:
            if shutil.which("zstd") is None:
                return None
            # zstd exits 1 on the bzImage's tail after the frame; what it wrote before
            # is still the whole kernel (the ELF check below says whether it is).
            elf = process.run(["zstd", "-dc"], input=data[offset:], step=STEP,
                              ok_returncodes=(0, 1)).stdout
        else:
            try:
                elf = unpack(data[offset:])
            except (lzma.LZMAError, zlib.error):
                continue
        if elf.startswith(b"\x7fELF"):
            break
        elf = None
    if elf is None:
        logger.debug("no ELF kernel found inside %s; booting it as a bzImage", image)
        return None
    _write_atomically(target, elf)
    return target


def _unxz(data: bytes) -> bytes:
    # A decompressor object stops at the end of the stream; the bzImage's tail follows.
    return lzma.LZMADecompressor().decompress(data)


def _gunzip(data: bytes) -> bytes:
    return zlib.decompressobj(wbits=31).decompress(data)


def _write_atomically(target: Path, data: bytes) -> None:
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _uses_firmware(qemu_opts: Sequence[str]) -> bool:
    """Whether the extra options bring their own firmware (OVMF pflash, -bios).

    OVMF boots only an EFI-stub bzImage (and makes the guest a UEFI one); the PVH
    shortcut would bypass it.
    """
    return any(opt in ("-bios", "-pflash") or "if=pflash" in opt for opt in qemu_opts)


# ---------------------------------------------------------------------------
# Initramfs


def _module_paths(
    kernel_version: str, modules: Sequence[str], root: Path = Path("/")
) -> list[Path]:
    """The .ko files for `modules` and their dependencies, in load order, each once.

    `root`: the tree whose /lib/modules holds the kernel's (a guest root's, when the
    kernel is of another architecture: modprobe only reads its modules.dep).
    """
    ordered: list[Path] = []
    seen: set[Path] = set()
    for module in modules:
        proc = process.run(
            [_system_tool("modprobe"), *(["-d", str(root)] if root != Path("/") else []),
             "-S", kernel_version, "--show-depends", module],
            step=STEP,
        )  # fmt: skip
        for line in proc.stdout.decode().splitlines():
            words = line.split()
            # "builtin NAME" lines need nothing loaded; "insmod PATH [params]" do.
            if len(words) >= 2 and words[0] == "insmod":
                path = Path(words[1])
                if path not in seen:
                    seen.add(path)
                    ordered.append(path)
    return ordered


def _module_bytes(path: Path) -> bytes:
    """A module's plain ELF bytes; busybox insmod cannot read compressed modules."""
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(path.read_bytes())
    if path.name.endswith(".ko.zst"):
        return process.run(["zstd", "-dc", path], step=STEP).stdout
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(path.read_bytes())
    return path.read_bytes()


def _plain_module_name(path: Path) -> str:
    name = path.name
    for suffix in (".xz", ".zst", ".gz"):
        name = name.removesuffix(suffix)
    return name


class _NewcArchive:
    """A minimal writer of the "newc" cpio format the kernel unpacks as initramfs."""

    def __init__(self) -> None:
        self._out = io.BytesIO()
        self._ino = 0

    def _entry(self, name: str, mode: int, data: bytes = b"") -> None:
        self._ino += 1
        encoded = name.encode() + b"\0"
        fields = [self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0]
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._out.write(header + encoded)
        self._pad()
        self._out.write(data)
        self._pad()

    def _pad(self) -> None:
        self._out.write(b"\0" * (-self._out.tell() % 4))

    def directory(self, name: str) -> None:
        self._entry(name, 0o040755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, 0o100000 | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self._out.getvalue()


def _cache_dir() -> Path:
    home = Path(os.path.expanduser("~"))
    base = os.environ.get("XDG_CACHE_HOME") or str(home / ".cache")
    wanted = Path(base) / "make-disk-image"
    try:
        # Never create a missing HOME: a Nix builder's /homeless-shelter must stay
        # absent, or every later build on the machine fails.
        if not os.environ.get("XDG_CACHE_HOME") and not home.is_dir():
            raise OSError(f"HOME {home} does not exist")
        wanted.mkdir(parents=True, exist_ok=True)
        if os.access(wanted, os.W_OK):
            return wanted
    except OSError:
        pass
    # Nix builders have HOME=/homeless-shelter; keep the cache per user in TMPDIR then.
    fallback = Path(tempfile.gettempdir()) / f"make-disk-image-cache-{os.getuid()}"
    fallback.mkdir(mode=0o700, exist_ok=True)
    logger.debug("cache directory %s is not writable, using %s", wanted, fallback)
    return fallback


def _system_tool(name: str) -> str:
    """`name` from PATH, else from the system directories a Nix builder's PATH lacks."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    return found or name


def _is_static_elf(path: Path) -> bool:
    """Whether `path` is a 64-bit ELF without a program interpreter (PT_INTERP)."""
    with path.open("rb") as f:
        header = f.read(64)
        if len(header) < 64 or header[:5] != b"\x7fELF\x02":
            return False
        (phoff,) = struct.unpack_from("<Q", header, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    PT_INTERP = 3
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != PT_INTERP for i in range(phnum))


def _busybox(root: Path = Path("/")) -> Path:
    # The initramfs has no C library: Debian's dynamically linked `busybox` package
    # installs the same path, so check rather than trust it.
    for candidate in ("bin/busybox", "usr/bin/busybox"):
        path = root / candidate
        if path.is_file() and _is_static_elf(path):
            return path
    raise StepError(
        STEP, f"no static busybox found in {root}; install the Debian package busybox-static"
    )


def build_initramfs(
    init_script: str,
    *,
    kernel_version: str,
    modules: Sequence[str],
    extra_files: Mapping[str, Path] = {},
    root: Path = Path("/"),
) -> Path:
    """Return a gzip'd newc cpio with static busybox, `modules` (+ deps) and `init_script`.

    Modules sit under /lib/modules/KVER/ in load order, listed in /lib/modules/load-order
    (one file name a line), so an init script can `insmod` them in sequence. `extra_files`
    maps a path inside the archive to a host file to copy there (mode 0755 if executable).
    The archive is cached by a hash of all its inputs. `root`: where busybox and the
    kernel's modules come from (a guest root for a kernel of another architecture).
    """
    busybox = _busybox(root)
    module_paths = _module_paths(kernel_version, modules, root)

    digest = hashlib.sha256()

    def feed(label: str, data: bytes) -> None:
        digest.update(b"%d:%s:%d:" % (len(label), label.encode(), len(data)))
        digest.update(data)

    feed("format", _INITRAMFS_FORMAT.encode())
    feed("init", init_script.encode())
    feed("kernel", kernel_version.encode())
    busybox_bytes = busybox.read_bytes()
    feed("busybox", busybox_bytes)
    for path in module_paths:
        feed(f"module {path.relative_to(root)}", path.read_bytes())
    extra_data: list[tuple[str, bytes, int]] = []
    for name, host_path in sorted(extra_files.items()):
        data = host_path.read_bytes()
        mode = 0o755 if os.access(host_path, os.X_OK) else 0o644
        feed(f"extra {name} {mode:o}", data)
        extra_data.append((name.strip("/"), data, mode))

    target = _cache_dir() / f"initramfs-{kernel_version}-{digest.hexdigest()[:32]}.cpio.gz"
    if target.is_file():
        logger.debug("initramfs cached at %s", target)
        return target

    logger.info("[%s] building initramfs %s", STEP, target)
    applets = busybox_applets(busybox_bytes)
    archive = _NewcArchive()
    made_dirs = [
        "bin",
        "dev",
        "proc",
        "sys",
        "lib",
        "lib/modules",
        f"lib/modules/{kernel_version}",
        GUEST_ROOT[1:],
        GUEST_CONTROL[1:],
    ]
    for directory in made_dirs:
        archive.directory(directory)
    archive.file("bin/busybox", busybox_bytes, 0o755)
    for applet in applets:
        if applet != "busybox" and "/" not in applet:
            archive.symlink(f"bin/{applet}", "busybox")
    order: list[str] = []
    for path in module_paths:
        name = _plain_module_name(path)
        archive.file(f"lib/modules/{kernel_version}/{name}", _module_bytes(path))
        order.append(name)
    archive.file("lib/modules/load-order", "".join(f"{n}\n" for n in order).encode())
    for name, data, mode in extra_data:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            if parent not in made_dirs:
                made_dirs.append(parent)
                archive.directory(parent)
        archive.file(name, data, mode)
    archive.file("init", init_script.encode(), 0o755)
    # mtime=0: the same inputs give the same bytes.
    compressed = gzip.compress(archive.finish(), compresslevel=6, mtime=0)

    _write_atomically(target, compressed)
    return target


def busybox_applets(busybox_bytes: bytes) -> list[str]:
    """The applet names a busybox binary holds, read from the binary itself.

    `busybox --list` would need the binary to run here, which one of another
    architecture does not. The names are stored as one NUL-separated, sorted block
    that starts with "[\0[[\0" (the test applets sort first).
    """
    start = busybox_bytes.find(b"[\0[[\0")
    if start < 0:
        raise StepError(STEP, "cannot find the applet list in the busybox binary")
    names: list[str] = []
    for raw in busybox_bytes[start:].split(b"\0"):
        if not raw or not re.fullmatch(rb"[\x21-\x7e]+", raw):
            break
        names.append(raw.decode())
    return names


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
if [ -f $C/host-paths ]; then
    # An empty root, as nixpkgs' runInLinuxVM gives (a tmpfs with the store and xchg
    # shared in), plus only the host paths listed (read-only).
    mkdir -p /host-root
    mount -t 9p -o ro,__9P__,cache=loose __ROOT_TAG__ /host-root ||
        fail "cannot mount the host root over 9p"
    mount -t tmpfs -o mode=0755 tmpfs $R || fail "cannot mount the guest's root tmpfs"
    while read -r p; do
        if [ -L /host-root$p ]; then
            mkdir -p "$R${p%/*}"
            ln -s "$(readlink /host-root$p)" "$R$p" || fail "cannot link $p"
        elif [ -d /host-root$p ]; then
            mkdir -p "$R$p" && mount -o bind /host-root$p "$R$p" || fail "cannot bind $p"
        elif [ -e /host-root$p ]; then
            mkdir -p "$R${p%/*}" && touch "$R$p" && mount -o bind /host-root$p "$R$p" ||
                fail "cannot bind $p"
        fi
    done <$C/host-paths
    mkdir -p $R/dev $R/proc $R/sys $R/tmp $R/run $R/mnt
else
    mount -t 9p -o ro,__9P__,cache=loose __ROOT_TAG__ $R ||
        fail "cannot mount the host root over 9p"
fi

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
            fail "share mount point $guest is missing from the read-only host root" \
                "(use an existing directory or one under /tmp, /run or /mnt)"
        mount -t 9p -o $mode,__9P__ "$tag" "$R$guest" || fail "cannot mount share $tag on $guest"
    done <$C/shares
fi

# The command runs under the initramfs' busybox sh (copied into the chroot's tmpfs) so
# it does not depend on a shell in the host root.
mkdir -p $R/run/make-disk-image
cp /bin/busybox $R/run/make-disk-image/busybox
chroot $R /run/make-disk-image/busybox sh -c "$(cat $C/command)"
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
        "__ROOT_TAG__": HOST_ROOT_TAG,
        "__KVER__": kernel_version,
        "__9P__": _9P_OPTIONS,
    }
    script = _RUN_INIT
    for key, value in replacements.items():
        script = script.replace(key, value)
    return script


# ---------------------------------------------------------------------------
# Running


def _command_snippet(argv: Sequence[str], env: Mapping[str, str], cwd: str) -> str:
    # The host's env, by path: busybox (built to prefer its applets) would run its own
    # `sh`, `ls`, ... instead of the host programs the command names.
    full_env = {"PATH": DEFAULT_PATH, **env}
    assignments = " ".join(shlex.quote(f"{k}={v}") for k, v in full_env.items())
    return (
        f"cd -- {shlex.quote(cwd)} || exit 127\n"
        f"exec /usr/bin/env -i {assignments} {shlex.join(argv)}\n"
    )


_VALID_TAG = re.compile(r"^[A-Za-z0-9_.-]{1,31}$")


def qemu_command(
    *,
    kernel: Path,
    initramfs: Path,
    control_dir: Path,
    disk: Path | None,
    shares: Sequence[Share],
    mem_mib: int,
    qemu_opts: Sequence[str],
    accel: str = "tcg",
    platform: Platform | None = None,
    root: Path = Path("/"),
) -> list[str]:
    """qemu's argv for run_in_vm. `platform`: the guest's (the host's by default);
    `root`: the directory the guest sees as its root filesystem."""
    plat = platform or host_platform()
    # x86_64 keeps qemu's default machine (pc), so that QEMU_OPTS may pick q35.
    machine = [] if plat.bios else ["-machine", plat.qemu_machine]
    argv = [
        _system_tool(plat.qemu_binary),
        *machine,
        # nixpkgs starts `qemu-kvm -machine accel=kvm:tcg -cpu max`: KVM where the
        # builder has it, else TCG. As -accel options (tried in order), so that TCG's
        # translation cache can be bounded: its default of 1 GiB, filled as the guest
        # runs, would be most of the VM's memory use.
        *_accel_options(accel),
        "-cpu",
        "max",
        "-m",
        str(mem_mib),
        "-nographic",
        "-no-reboot",
        "-nodefaults",
        "-serial",
        "stdio",
        "-monitor",
        "none",
        "-kernel",
        str(kernel),
        "-initrd",
        str(initramfs),
        "-append",
        # Kernel messages only at debug level; panics and warnings show regardless.
        f"console={plat.console} panic=-1 random.trust_cpu=on"
        + ("" if logger.isEnabledFor(logging.DEBUG) else " quiet"),
        "-device",
        "virtio-rng-pci",
        "-virtfs",
        f"local,path={_drive_path(root)},mount_tag={HOST_ROOT_TAG},security_model=none,"
        "readonly=on,multidevs=remap",
        "-virtfs",
        f"local,path={control_dir},mount_tag={CONTROL_TAG},security_model=none,multidevs=remap",
    ]
    if disk is not None:
        argv += [
            "-drive",
            f"file={_drive_path(disk)},if=virtio,format=raw,cache=unsafe,werror=report",
        ]
    for index, share in enumerate(shares):
        readonly = "" if share.writable else ",readonly=on"
        argv += [
            "-virtfs",
            f"local,path={_drive_path(share.host)},mount_tag=share{index},"
            f"security_model=none,multidevs=remap{readonly}",
        ]
    argv += list(qemu_opts)
    return argv


# MiB of TCG's translated code cache.
TCG_TB_SIZE = 64


def _accel_options(accel: str) -> list[str]:
    """`kvm:tcg` (qemu's -machine accel= syntax) as -accel options, TCG's cache bounded."""
    options: list[str] = []
    for name in accel.split(":"):
        options += ["-accel", f"tcg,tb-size={TCG_TB_SIZE}" if name == "tcg" else name]
    return options


def _drive_path(path: Path) -> str:
    # qemu splits -drive/-virtfs values at commas; doubling one escapes it.
    return str(path.resolve()).replace(",", ",,")


def _die_with_parent() -> None:
    """In the qemu child: get SIGKILL when this process dies (even by SIGKILL itself).

    `finally` covers exceptions; this covers a driver that is killed outright (a Nix
    build timeout), which would otherwise leave a guest running for up to `timeout`.
    """
    PR_SET_PDEATHSIG = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        logger.warning("qemu (pid %d) did not exit after SIGKILL", proc.pid)


def run_in_vm(
    argv: Sequence[str],
    *,
    disk: Path | None,
    shares: Sequence[Share] = (),
    env: Mapping[str, str] = {},
    cwd: str = "/",
    mem_mib: int = 1024,
    qemu_opts: Sequence[str] = (),
    timeout: float = 900,
    log: IO[str] | None = None,
    accel: str = "tcg",
    host_paths: Sequence[str] | None = None,
    system: str | None = None,
    guest_root: Path | None = None,
) -> int:
    """Run `argv` as root in a TCG guest and return its exit status.

    The guest sees `disk` as /dev/vda (partitions as /dev/vdaN), the host's / read-only
    as its root, fresh tmpfs on /tmp, /run and /mnt, and each share over its guest path.
    The command gets exactly `env` (PATH defaults to the usual system one), runs in
    `cwd`, reads /dev/null; its output and the guest kernel's messages stream to `log`
    (stderr by default). Raises StepError on timeout or when the guest ends without
    having run the command to completion.

    `host_paths`: the guest's root is an empty tmpfs instead, holding only these host
    paths (read-only) besides the shares: what nixpkgs' runInLinuxVM gives, where the
    store is a share. `accel`: qemu's accelerators, "kvm:tcg" as nixpkgs' qemu-kvm.

    `system` ("aarch64-linux"): the guest's architecture, the host's by default. A guest
    of another architecture cannot run the host's programs: `guest_root` is then a
    directory of that architecture's programs (testsys/guestroot.py makes one from
    Debian packages) with its kernel in boot/ and modules in lib/modules/; the guest
    boots that kernel and sees that directory in place of the host's / (as `host_paths`
    of it, so that shares may be mounted anywhere).
    """
    if not argv:
        raise StepError(STEP, "no command given to run in the VM")
    for share in shares:
        if not share.guest.startswith("/") or any(c.isspace() for c in share.guest):
            raise StepError(
                STEP, f"share guest path must be absolute without spaces: {share.guest!r}"
            )
        if not share.host.is_dir():
            raise StepError(STEP, f"share {share.host} is not a directory")
    if disk is not None and not disk.is_file():
        raise StepError(STEP, f"disk image {disk} does not exist")
    out = log if log is not None else sys.stderr
    plat = platform_for(system) if system else host_platform()
    root = Path("/")
    if guest_root is not None:
        root = guest_root.resolve()
        if not (root / "boot").is_dir():
            raise StepError(STEP, f"guest root {guest_root} has no boot/ with a kernel")
        kernel, version = host_kernel(root / "boot", root / "lib/modules")
        if host_paths is None:
            host_paths = [f"/{entry.name}" for entry in sorted(root.iterdir())]
    elif plat != host_platform():
        raise StepError(
            STEP,
            f"a {plat.system} guest on a {host_platform().system} host cannot run the "
            f"host's programs: give a guest root of {plat.system} programs (--guest-root)",
        )
    else:
        kernel, version = host_kernel()
    if plat.bios and not _uses_firmware(qemu_opts):
        kernel = pvh_kernel(kernel, version) or kernel
    initramfs = build_initramfs(
        run_init_script(version), kernel_version=version, modules=DEFAULT_MODULES, root=root
    )

    with tempfile.TemporaryDirectory(prefix="make-disk-image-vm-") as control:
        control_dir = Path(control)
        (control_dir / "command").write_text(_command_snippet(argv, env, cwd))
        (control_dir / "shares").write_text(
            "".join(
                f"share{i} {s.guest} {'rw' if s.writable else 'ro'}\n" for i, s in enumerate(shares)
            )
        )
        if host_paths is not None:
            (control_dir / "host-paths").write_text("".join(f"{p}\n" for p in host_paths))
        qemu = qemu_command(
            kernel=kernel,
            initramfs=initramfs,
            control_dir=control_dir,
            disk=disk,
            shares=shares,
            mem_mib=mem_mib,
            qemu_opts=qemu_opts,
            accel=accel,
            platform=plat,
            root=root,
        )
        logger.info("[%s] $ %s", STEP, shlex.join(qemu))
        logger.info("[%s] guest command: %s (cwd %s)", STEP, shlex.join(argv), cwd)
        tail = _stream_qemu(qemu, out, timeout, plat)
        status_file = control_dir / "status"
        if not status_file.is_file():
            raise StepError(
                STEP,
                "the guest stopped without reporting the command's exit status; "
                f"last console output:\n{tail}",
            )
        status = status_file.read_text().strip()
    kind, _, value = status.partition(" ")
    if kind == "exit" and value.isdigit():
        logger.info("[%s] guest command exited with status %s", STEP, value)
        return int(value)
    raise StepError(STEP, f"guest setup failed: {value or status}")


class _ConsoleText:
    """Turns serial console bytes into log text: plain newlines, no terminal controls.

    SeaBIOS and OVMF clear the screen and switch video modes with escape sequences;
    in a log they are noise. A sequence split across reads is held back until complete.
    """

    _CONTROL = re.compile(r"\x1b(\[[0-9;=?]*[A-Za-z]|[A-Za-z])|\r(?=\n)")
    _INCOMPLETE = re.compile(r"\x1b(\[[0-9;=?]*)?$|\r$")

    def __init__(self) -> None:
        self._held = ""

    def feed(self, text: str) -> str:
        text = self._held + text
        incomplete = self._INCOMPLETE.search(text)
        if incomplete:
            self._held = text[incomplete.start() :]
            text = text[: incomplete.start()]
        else:
            self._held = ""
        return self._CONTROL.sub("", text)


def _stream_qemu(
    qemu: Sequence[str], out: IO[str], timeout: float, plat: Platform | None = None
) -> str:
    """Run qemu, copying its console to `out` until it exits; return the console's tail."""
    started = time.monotonic()
    deadline = started + timeout
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    tail = ""
    try:
        proc = subprocess.Popen(
            list(qemu),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
    except FileNotFoundError as exc:
        plat = plat or host_platform()
        raise StepError(
            STEP,
            f"{plat.qemu_binary} not found; install the Debian package {plat.qemu_package}",
        ) from exc
    try:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        console = _ConsoleText()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StepError(
                    STEP,
                    f"the guest did not finish within {timeout:g} s; last console output:\n{tail}",
                )
            ready, _, _ = select.select([fd], [], [], min(remaining, 1.0))
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            text = console.feed(decoder.decode(chunk))
            out.write(text)
            out.flush()
            tail = (tail + text)[-4000:]
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        logger.info("[%s] guest ran for %.1f s", STEP, time.monotonic() - started)
        if proc.returncode != 0:
            raise StepError(
                STEP, f"qemu exited with status {proc.returncode}; last output:\n{tail}"
            )
        return "\n".join(tail.splitlines()[-30:])
    finally:
        _kill(proc)
        if proc.stdout is not None:
            proc.stdout.close()


# ---------------------------------------------------------------------------
# Command line


def _parse_share(value: str) -> Share:
    host, sep, rest = value.partition(":")
    if not sep or not host or not rest:
        raise argparse.ArgumentTypeError(f"expected HOST:GUEST[:rw], got {value!r}")
    guest, _, mode = rest.partition(":")
    if mode not in ("", "rw", "ro"):
        raise argparse.ArgumentTypeError(f"share mode must be rw or ro, got {mode!r}")
    return Share(host=Path(host), guest=guest, writable=mode == "rw")


def _parse_env(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {value!r}")
    return key, val


def main(args: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m make_disk_image.vm",
        description="Run a command as root in a qemu TCG guest that sees DISK as /dev/vda "
        "and the host's / read-only; exit with the command's status.",
    )
    parser.add_argument("--disk", type=Path, help="raw disk image, /dev/vda in the guest")
    parser.add_argument(
        "--share",
        type=_parse_share,
        action="append",
        default=[],
        metavar="HOST:GUEST[:rw]",
        help="host directory to mount at GUEST (read-only unless :rw); repeatable",
    )
    parser.add_argument("--mem", type=int, default=1024, metavar="MIB")
    parser.add_argument(
        "--qemu-opts", default="", metavar="STRING", help="extra qemu arguments (shell words)"
    )
    parser.add_argument("--timeout", type=float, default=900, metavar="S")
    parser.add_argument("--cwd", default="/", metavar="DIR")
    parser.add_argument(
        "--env", type=_parse_env, action="append", default=[], metavar="K=V", help="repeatable"
    )
    parser.add_argument(
        "--accel", default="tcg", metavar="ACCELS", help='qemu accelerators, e.g. "kvm:tcg"'
    )
    parser.add_argument(
        "--host-path",
        action="append",
        metavar="PATH",
        help="with this, the guest's root is an empty tmpfs holding only the shares and "
        "these host paths (read-only); repeatable",
    )
    parser.add_argument(
        "--like-qemu",
        action="store_true",
        help="exit 0 once the guest ran the command, whatever its status, as qemu does "
        "when its guest powers off (runInLinuxVM reads the status from xchg/ instead)",
    )
    parser.add_argument(
        "--system", metavar="SYSTEM", help='the guest\'s architecture, e.g. "aarch64-linux"'
    )
    parser.add_argument(
        "--guest-root",
        type=Path,
        metavar="DIR",
        help="programs, kernel and modules of the guest's architecture, seen as its root",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log qemu's command line")
    parser.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- ARGV")
    ns = parser.parse_args(list(args) if args is not None else None)
    command = list(ns.argv)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        parser.error("no command given (put it after --)")
    logging.basicConfig(level=logging.INFO if ns.verbose else logging.WARNING, format="%(message)s")
    try:
        status = run_in_vm(
            command,
            disk=ns.disk,
            shares=ns.share,
            env=dict(ns.env),
            cwd=ns.cwd,
            mem_mib=ns.mem,
            qemu_opts=shlex.split(ns.qemu_opts),
            timeout=ns.timeout,
            accel=ns.accel,
            host_paths=ns.host_path,
            system=ns.system,
            guest_root=ns.guest_root,
        )
        return 0 if ns.like_qemu else status
    except StepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
