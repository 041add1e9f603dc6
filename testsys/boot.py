"""Boot a built image under qemu (TCG) with SeaBIOS or OVMF and check what it reports.

The image's boot loader loads the test system's kernel and initramfs; the initramfs
(scripts/stage-1-init.sh) mounts the root by label and prints "MDI-REPORT ..." lines on
the serial console, then switches to the system's stage 2, which prints its version
and powers off. `boot_image` runs that boot bounded by a timeout and parses the report;
`check_report` compares a report with the SPEC.json the image was built from.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import struct
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from make_disk_image.platforms import Platform, host_platform, platform_for
from make_disk_image.spec import parse_spec

Firmware = Literal["bios", "uefi"]

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
# Debian's qemu-efi-aarch64: edk2 for qemu's virt board, both padded to its 64 MiB banks.
AAVMF_CODE = Path("/usr/share/AAVMF/AAVMF_CODE.fd")
AAVMF_VARS = Path("/usr/share/AAVMF/AAVMF_VARS.fd")
# (code, empty variable store) of each system's UEFI firmware.
UEFI_FIRMWARE: dict[str, tuple[Path, Path]] = {
    "x86_64-linux": (OVMF_CODE, OVMF_VARS),
    "aarch64-linux": (AAVMF_CODE, AAVMF_VARS),
}
EFI_GLOBAL_VARIABLE = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
REPORT_PREFIX = "MDI-REPORT "

# Firmware messages that mean nothing will boot: stop waiting for the timeout.
NO_BOOT_MARKERS = (
    "No bootable device",  # SeaBIOS (on its debug console)
    "No bootable option or device was found",  # OVMF's BDS
    "UEFI Interactive Shell",  # OVMF's last boot option, after the disk's failed
    "Kernel panic",
)
# The kernel's first console line: a boot loader that works gets here within seconds.
KERNEL_STARTED = "Linux version"

# The partition make-disk-image puts the root file system on, per layout.
ROOT_PARTITION = {
    "legacy": 1,
    "legacy+boot": 2,
    "legacy+gpt": 2,
    "efi": 2,
    "efixbootldr": 3,
    "hybrid": 3,
}
ESP_PARTITION_GUID = "1C06F03B-704E-4657-B9CD-681A087A2FDC"
LINUX_FS_TYPE_GUID = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
QEMU_FORMATS = {
    ".img": "raw",
    ".raw": "raw",
    ".qcow2": "qcow2",
    ".vhd": "vpc",
    ".vdi": "vdi",
    ".vmdk": "vmdk",
    ".vhdx": "vhdx",
}


class BootError(Exception):
    """The image did not boot to a complete report; `serial` holds the console log."""

    def __init__(self, message: str, serial: str) -> None:
        tail = "\n".join(serial.splitlines()[-40:])
        super().__init__(f"{message}\n--- last serial console lines ---\n{tail}")
        self.serial = serial


@dataclass(frozen=True)
class FileStat:
    uid: int
    gid: int
    mode: int  # st_mode, type bits included

    @property
    def permissions(self) -> int:
        return self.mode & 0o7777

    @property
    def is_dir(self) -> bool:
        return self.mode & 0o170000 == 0o040000


@dataclass(frozen=True)
class GuestReport:
    """What the booted initramfs found, as parsed from its MDI-REPORT lines."""

    firmware: str
    cmdline: str
    root_device: str
    partition_table: str  # gpt, dos or none
    root_partition_number: int | None
    disk_guid: str | None
    root_partition_guid: str | None
    root_partition_type_guid: str | None
    disk_signature: str | None
    root_partition_type: str | None  # MBR partition type byte, hex
    fs_type: str
    fs_uuid: str
    fs_label: str
    etc_nixos: bool
    profile_links: Mapping[str, str]
    store_entries: frozenset[str]
    files: Mapping[str, FileStat]
    users: Mapping[str, int]
    groups: Mapping[str, int]
    efi_variables: Mapping[str, bytes] = field(default_factory=dict)
    stage2_version: str | None = None
    root_sectors: int | None = None  # the root device's size in 512-byte sectors
    fs_blocks: int | None = None  # the superblock's block count (low 32 bits)
    machine: str | None = None  # uname -m of the booted kernel

    def system_profile_target(self) -> str | None:
        """Where /nix/var/nix/profiles/system leads, following the profile's links."""
        path = "/nix/var/nix/profiles/system"
        for _ in range(10):
            target = self.profile_links.get(path)
            if target is None:
                return path
            path = target if target.startswith("/") else f"/nix/var/nix/profiles/{target}"
        return None

    @property
    def boot_current(self) -> int | None:
        data = self.efi_variables.get("BootCurrent")
        return struct.unpack("<H", data[:2])[0] if data and len(data) >= 2 else None

    @property
    def loader_entry_selected(self) -> str | None:
        data = self.efi_variables.get("LoaderEntrySelected")
        return data.decode("utf-16-le").rstrip("\0") if data else None


@dataclass(frozen=True)
class BootResult:
    report: GuestReport
    serial: str
    seconds: float


def _guid_le(hex_text: str) -> str:
    """A GUID as stored on disk (GPT, EFI: mixed endian) -> canonical upper-case text."""
    return str(uuid.UUID(bytes_le=bytes.fromhex(hex_text))).upper()


def parse_report(serial: str) -> GuestReport:
    """Parse the MDI-REPORT lines of a serial console log; raise BootError if incomplete."""
    values: dict[str, str] = {}
    profile_links: dict[str, str] = {}
    store: set[str] = set()
    files: dict[str, FileStat] = {}
    users: dict[str, int] = {}
    groups: dict[str, int] = {}
    efi_variables: dict[str, bytes] = {}
    began = ended = False
    for raw_line in serial.splitlines():
        at = raw_line.find(REPORT_PREFIX)
        if at < 0:
            continue
        key, _, rest = raw_line[at + len(REPORT_PREFIX) :].rstrip("\r").partition(" ")
        match key:
            case "begin":
                began = True
            case "end":
                ended = True
            case "error":
                raise BootError(f"the guest's initramfs failed: {rest}", serial)
            case "profile-link":
                link, _, target = rest.partition(" ")
                profile_links[link] = target
            case "store":
                store.add(rest)
            case "stat":
                uid, gid, mode, *path = rest.split(" ", 3)
                files[path[0] if path and path[0] else "/"] = FileStat(
                    int(uid), int(gid), int(mode, 16)
                )
            case "passwd" | "group":
                fields = rest.split(":")
                if len(fields) >= 3 and fields[2].isdigit():
                    (users if key == "passwd" else groups)[fields[0]] = int(fields[2])
            case "efivar":
                name, _, data = rest.partition(" ")
                efi_variables[name] = bytes.fromhex(data)
            case _:
                values[key] = rest
    if not (began and ended):
        raise BootError("the guest printed no complete report", serial)

    def optional(key: str) -> str | None:
        return values.get(key) or None

    partition_number = optional("root-partition-number")
    part_guid = optional("root-partition-guid")
    part_type = optional("root-partition-type-guid")
    disk_guid = optional("disk-guid")
    return GuestReport(
        firmware=values.get("firmware", ""),
        cmdline=values.get("cmdline", ""),
        root_device=values.get("root-device", ""),
        partition_table=values.get("partition-table", ""),
        root_partition_number=int(partition_number) if partition_number else None,
        disk_guid=_guid_le(disk_guid) if disk_guid else None,
        root_partition_guid=_guid_le(part_guid) if part_guid else None,
        root_partition_type_guid=_guid_le(part_type) if part_type else None,
        disk_signature=optional("disk-signature"),
        root_partition_type=optional("root-partition-type"),
        fs_type=values.get("fs-type", ""),
        fs_uuid=str(uuid.UUID(hex=values["fs-uuid"])).upper() if values.get("fs-uuid") else "",
        fs_label=values.get("fs-label", ""),
        etc_nixos=values.get("etc-nixos") == "yes",
        profile_links=profile_links,
        store_entries=frozenset(store),
        files=files,
        users=users,
        groups=groups,
        efi_variables=efi_variables,
        stage2_version=optional("stage2"),
        root_sectors=int(values["root-sectors"]) if values.get("root-sectors") else None,
        fs_blocks=int(values["fs-blocks"]) if values.get("fs-blocks") else None,
        machine=optional("machine"),
    )


ESP_TYPE_GUID = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
# PE/COFF machine types of UEFI binaries.
PE_MACHINES = {0x8664: "x86_64", 0xAA64: "aarch64", 0x014C: "i386"}


def efi_loaders(raw: Path) -> dict[str, str]:
    """Every .EFI file under EFI/ on the raw image's ESP, with its PE machine type.

    The ESP is found by its GPT type; its files are read with mtools (no mount).
    """
    proc = subprocess.run(["sfdisk", "--json", str(raw)], capture_output=True, check=False)
    if proc.returncode != 0:
        return {}
    table = json.loads(proc.stdout)["partitiontable"]
    esp = next((p for p in table.get("partitions", []) if p["type"] == ESP_TYPE_GUID), None)
    if esp is None:
        return {}
    image = f"{raw}@@{int(esp['start']) * 512}"
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    listing = subprocess.run(
        ["mdir", "-/", "-b", "-i", image, "::/EFI"], capture_output=True, env=env, check=False
    ).stdout.decode(errors="replace")
    found: dict[str, str] = {}
    for path in sorted(listing.split()):
        if not path.upper().endswith(".EFI"):
            continue
        data = subprocess.run(
            ["mtype", "-i", image, path], capture_output=True, env=env, check=True
        ).stdout
        pe = struct.unpack_from("<I", data, 0x3C)[0] if data[:2] == b"MZ" else None
        machine = struct.unpack_from("<H", data, pe + 4)[0] if pe is not None else None
        name = path.removeprefix("::")
        found[name] = (
            "not a PE binary" if machine is None else PE_MACHINES.get(machine, hex(machine))
        )
    return found


def qemu_format(image: Path) -> str:
    """The qemu block driver for an image file, by make-disk-image's file extensions."""
    try:
        return QEMU_FORMATS[image.suffix]
    except KeyError:
        raise ValueError(f"unknown image format of {image} (extension {image.suffix!r})") from None


def qemu_command(
    image: Path,
    *,
    firmware: Firmware,
    image_format: str,
    efi_vars: Path | None,
    debug_log: Path,
    memory_mib: int,
    platform: Platform | None = None,
) -> list[str]:
    plat = platform or host_platform()
    argv = [
        plat.qemu_binary,
        "-accel",
        "tcg",
        # The build VM's cpu (interface.json's platforms say why aarch64's is not plain max).
        "-cpu",
        plat.qemu_cpu,
        "-m",
        str(memory_mib),
        "-nodefaults",
        "-no-reboot",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-monitor",
        "none",
        # snapshot=on: the boot never writes to the image under test.
        "-drive",
        f"file={str(image).replace(',', ',,')},if=virtio,format={image_format},snapshot=on",
    ]
    if not plat.bios:
        # No ISA bus for the firmware's debug port: the firmware writes to the serial
        # console, where the markers are found too.
        if firmware != "uefi":
            raise ValueError(f"{plat.system} machines boot only through UEFI")
        code, _ = UEFI_FIRMWARE[plat.system]
        if efi_vars is None:
            raise ValueError("UEFI boot needs a writable EFI variable store")
        return argv + [
            "-machine",
            plat.qemu_machine,
            "-drive",
            f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
            "-drive",
            f"if=pflash,format=raw,unit=1,file={efi_vars}",
        ]
    argv += [
        "-chardev",
        f"file,id=firmware-debug,path={debug_log}",
        "-device",
        "isa-debugcon,iobase=0x402,chardev=firmware-debug",
    ]
    if firmware == "uefi":
        if efi_vars is None:
            raise ValueError("UEFI boot needs a writable EFI variable store")
        argv += [
            "-machine",
            "q35",
            "-drive",
            f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive",
            f"if=pflash,format=raw,unit=1,file={efi_vars}",
        ]
    else:
        argv += ["-machine", "pc"]
    return argv


def boot_image(
    image: Path,
    *,
    firmware: Firmware,
    efi_vars: Path | None = None,
    image_format: str | None = None,
    timeout: float = 180,
    kernel_timeout: float = 60,
    memory_mib: int = 512,
    serial_log: Path | None = None,
    system: str | None = None,
) -> BootResult:
    """Boot `image` until the guest powers off, at most `timeout` seconds; parse its report.

    The kernel must have started within `kernel_timeout` seconds: a disk whose boot
    sector holds no loader can hang the firmware without any message.

    UEFI boots use a copy of `efi_vars` (the image's efi-vars.fd when it was built with
    touchEFIVars), or of OVMF's empty variable store. The serial console is also written
    to `serial_log` when given. Raises BootError when the guest does not report.
    `system`: the image's architecture (the host's by default): its qemu and firmware.
    """
    plat = platform_for(system) if system else host_platform()
    fmt = image_format or qemu_format(image)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="testsys-boot-") as scratch:
        vars_copy: Path | None = None
        if firmware == "uefi":
            vars_copy = Path(scratch) / "efi-vars.fd"
            shutil.copyfile(efi_vars or UEFI_FIRMWARE[plat.system][1], vars_copy)
            vars_copy.chmod(0o644)
        debug_log = Path(scratch) / "firmware-debug.log"
        argv = qemu_command(
            image,
            firmware=firmware,
            image_format=fmt,
            efi_vars=vars_copy,
            debug_log=debug_log,
            memory_mib=memory_mib,
            platform=plat,
        )
        serial, failure = _run_qemu(
            argv, timeout=timeout, kernel_timeout=kernel_timeout, debug_log=debug_log
        )
    if serial_log is not None:
        serial_log.write_text(serial)
    if failure:
        raise BootError(failure, serial)
    report = parse_report(serial)
    return BootResult(report=report, serial=serial, seconds=time.monotonic() - started)


def _run_qemu(
    argv: Sequence[str], *, timeout: float, kernel_timeout: float, debug_log: Path
) -> tuple[str, str | None]:
    """Run qemu until it exits; return (serial output, failure message or None)."""
    proc = subprocess.Popen(
        list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert proc.stdout is not None
    chunks: list[bytes] = []
    started = time.monotonic()
    deadline = started + timeout
    kernel_started = False
    failure: str | None = None
    try:
        fd = proc.stdout.fileno()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                failure = f"no power-off within {timeout:g} s"
                break
            ready, _, _ = select.select([fd], [], [], min(remaining, 0.5))
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
            # The whole console so far: firmware menus redraw the screen after a message.
            seen = b"".join(chunks).decode(errors="replace")
            kernel_started = kernel_started or KERNEL_STARTED in seen
            if not kernel_started and time.monotonic() - started > kernel_timeout:
                failure = f"no kernel started within {kernel_timeout:g} s"
                break
            debug = debug_log.read_text(errors="replace") if debug_log.exists() else ""
            marker = next((m for m in NO_BOOT_MARKERS if m in seen or m in debug), None)
            if marker is not None:
                failure = f"the firmware or kernel gave up: {marker!r}"
                break
        if failure is None:
            proc.wait(timeout=30)
            if proc.returncode != 0:
                failure = f"qemu exited with status {proc.returncode}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    serial = b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")
    return serial, failure


# ---------------------------------------------------------------------------
# EFI variable store (the OVMF pflash image that touchEFIVars images carry)

_AUTHENTICATED_STORE = uuid.UUID("aaf32c78-947b-439a-a180-2e144ec37792")
_PLAIN_STORE = uuid.UUID("ddcf3616-3275-4164-98b6-fe85707ffe7d")
_VAR_ADDED = 0x3F
_VAR_IN_DELETED_TRANSITION = 0xFE


def read_efi_variables(store: Path) -> dict[tuple[str, str], bytes]:
    """The live variables of an OVMF variable store file: {(name, vendor guid): data}."""
    blob = store.read_bytes()
    if not blob.strip(b"\0"):
        return {}  # AAVMF's empty store: the firmware formats it on first boot
    header_length = struct.unpack_from("<H", blob, 48)[0]
    store_guid = uuid.UUID(bytes_le=blob[header_length : header_length + 16])
    if store_guid not in (_AUTHENTICATED_STORE, _PLAIN_STORE):
        raise ValueError(f"{store}: no EFI variable store after the volume header")
    authenticated = store_guid == _AUTHENTICATED_STORE
    store_size = struct.unpack_from("<I", blob, header_length + 16)[0]
    end = min(len(blob), header_length + store_size)
    offset = header_length + 28
    variables: dict[tuple[str, str], bytes] = {}
    while offset + 4 <= end:
        offset = (offset + 3) & ~3
        start_id, state = struct.unpack_from("<HB", blob, offset)
        if start_id != 0x55AA:
            break
        if authenticated:
            name_size, data_size = struct.unpack_from("<II", blob, offset + 36)
            vendor = blob[offset + 44 : offset + 60]
            body = offset + 60
        else:
            name_size, data_size = struct.unpack_from("<II", blob, offset + 8)
            vendor = blob[offset + 16 : offset + 32]
            body = offset + 32
        name = blob[body : body + name_size].decode("utf-16-le").rstrip("\0")
        data = blob[body + name_size : body + name_size + data_size]
        if state in (_VAR_ADDED, _VAR_ADDED & _VAR_IN_DELETED_TRANSITION):
            variables[(name, str(uuid.UUID(bytes_le=vendor)))] = data
        offset = body + name_size + data_size
    return variables


@dataclass(frozen=True)
class EfiLoadOption:
    """A Boot#### variable: description and its hard drive + file path device path."""

    number: int
    active: bool
    description: str
    partition_number: int | None
    partition_start: int | None
    partition_size: int | None
    partition_guid: str | None
    file_path: str | None


def parse_load_option(number: int, data: bytes) -> EfiLoadOption:
    attributes, path_length = struct.unpack_from("<IH", data, 0)
    end_of_description = 6
    while data[end_of_description : end_of_description + 2] != b"\0\0":
        end_of_description += 2
    description = data[6:end_of_description].decode("utf-16-le")
    offset = end_of_description + 2
    path_end = offset + path_length
    partition: tuple[int, int, int, str] | None = None
    file_path: str | None = None
    while offset + 4 <= path_end:
        node_type, sub_type, length = struct.unpack_from("<BBH", data, offset)
        if length < 4 or node_type == 0x7F:
            break
        node = data[offset + 4 : offset + length]
        if (node_type, sub_type) == (4, 1) and len(node) >= 38:
            number_, start, size = struct.unpack_from("<IQQ", node, 0)
            partition = (number_, start, size, _guid_le(node[20:36].hex()))
        elif (node_type, sub_type) == (4, 4):
            file_path = node.decode("utf-16-le").rstrip("\0")
        offset += length
    return EfiLoadOption(
        number=number,
        active=bool(attributes & 1),
        description=description,
        partition_number=partition[0] if partition else None,
        partition_start=partition[1] if partition else None,
        partition_size=partition[2] if partition else None,
        partition_guid=partition[3] if partition else None,
        file_path=file_path,
    )


def efi_boot_entries(store: Path) -> tuple[list[EfiLoadOption], list[int]]:
    """The Boot#### load options of a variable store and its BootOrder."""
    variables = read_efi_variables(store)
    options: list[EfiLoadOption] = []
    order: list[int] = []
    for (name, vendor), data in sorted(variables.items()):
        if vendor != EFI_GLOBAL_VARIABLE:
            continue
        if name == "BootOrder":
            order = list(struct.unpack(f"<{len(data) // 2}H", data))
        elif len(name) == 8 and name.startswith("Boot"):
            try:
                number = int(name[4:], 16)
            except ValueError:
                continue
            options.append(parse_load_option(number, data))
    return options, order


# ---------------------------------------------------------------------------
# Checking a report against the spec


def check_report(
    report: GuestReport,
    raw_spec: Mapping[str, Any],
    *,
    firmware: Firmware,
    store_paths: Sequence[Path],
    loader: Literal["grub", "systemd-boot"] | None = None,
) -> list[str]:
    """Every way the booted guest differs from what the spec asks for; [] when none.

    `loader`: the boot loader that booted it; by default GRUB for BIOS, systemd-boot
    for UEFI."""
    spec = parse_spec(dict(raw_spec))
    problems: list[str] = []

    def expect(what: str, got: object, wanted: object) -> None:
        if got != wanted:
            problems.append(f"{what}: got {got!r}, expected {wanted!r}")

    layout = spec.partitionTableType
    expect("firmware", report.firmware, "efi" if firmware == "uefi" else "bios")
    expect("root file system label", report.fs_label, spec.label)
    expect("root file system type", report.fs_type, spec.fsType)
    expect("root found by label", f"root=LABEL={spec.label}" in report.cmdline.split(), True)
    if spec.deterministic:
        expect("root file system UUID", report.fs_uuid, (spec.rootFSUID or spec.rootGPUID).upper())
    if layout in ROOT_PARTITION:
        expect("root partition number", report.root_partition_number, ROOT_PARTITION[layout])
        table = "dos" if layout in ("legacy", "legacy+boot") else "gpt"
        expect("partition table", report.partition_table, table)
        if table == "gpt":
            expect("root partition type", report.root_partition_type_guid, LINUX_FS_TYPE_GUID)
            if spec.deterministic:
                expect("root partition GUID", report.root_partition_guid, spec.rootGPUID.upper())
        else:
            expect("root partition type", report.root_partition_type, "83")
    expect("/etc/NIXOS exists", report.etc_nixos, True)
    expect("system profile", report.system_profile_target(), spec.toplevel)
    expect(
        "stage 2 of the system ran",
        report.stage2_version,
        (Path(spec.toplevel) / "nixos-version").read_text(),
    )
    expect("kernel's init", f"init={spec.toplevel}/init" in report.cmdline.split(), True)
    loader = loader or ("grub" if firmware == "bios" else "systemd-boot")
    if loader == "grub":
        # GRUB's `linux` command puts BOOT_IMAGE first; SeaBIOS alone cannot load a kernel.
        expect("booted by GRUB", report.cmdline.startswith("BOOT_IMAGE="), True)
    else:
        expect("systemd-boot's entry", report.loader_entry_selected, "nixos-generation-1.conf")
    missing = sorted(p.name for p in store_paths if p.name not in report.store_entries)
    expect("closure store paths missing from the image", missing, [])

    for entry in spec.contents:
        target = "/" + entry.target.strip("/")
        under = {
            path: stat
            for path, stat in report.files.items()
            if path == target or path.startswith(target + "/")
        }
        if target not in under:
            problems.append(f"contents target {target} is missing")
            continue
        if entry.user is not None and entry.group is not None:
            uid, gid = report.users.get(entry.user), report.groups.get(entry.group)
            if uid is None or gid is None:
                problems.append(f"{target}: {entry.user}:{entry.group} unknown in the image")
            for path, stat in sorted(under.items()):
                expect(f"owner of {path}", (stat.uid, stat.gid), (uid, gid))
        if entry.mode is not None and entry.mode.isdigit():
            expect(f"mode of {target}", oct(under[target].permissions), oct(int(entry.mode, 8)))
    return problems
