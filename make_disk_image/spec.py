"""Loading and validating SPEC.json: every reference `assert`, before any slow work."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from make_disk_image.filesystems import FILESYSTEMS, lookup
from make_disk_image.interface import (
    DISK_SIZE_WORDS,
    FS_TYPES,
    PARTITION_TABLE_TYPES,
    REFERENCE_MESSAGES,
)
from make_disk_image.layouts import LAYOUTS
from make_disk_image.models import MIB, ContentEntry, Format, Spec
from make_disk_image.platforms import PLATFORMS
from make_disk_image.utils import MAX_SIZE, parse_iec, round_up_one_unit


class SpecError(ValueError):
    """The spec is wrong; the message names the argument and the fix."""

    def __init__(self, argument: str, message: str) -> None:
        super().__init__(f"argument `{argument}`: {message}")
        self.argument = argument


GUID_RE = re.compile(
    r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$"
)
MODE_RE = re.compile(r"^[0-7]{3,4}$")
# What Nix accepts as a derivation name (the store path name): `name` becomes one.
NIX_NAME_RE = re.compile(r"^[A-Za-z0-9+\-_?=][A-Za-z0-9+\-._?=]{0,210}$")
EFI_VAR_LAYOUTS = tuple(name for name, p in PARTITION_TABLE_TYPES.items() if p.efi_variables)
IN_PARTITION_TABLE = tuple(name for name, f in FS_TYPES.items() if f.in_partition_table)

_Check = Callable[[Any], bool]


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_opt_str(v: Any) -> bool:
    return v is None or isinstance(v, str)


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _is_size(v: Any) -> bool:
    return isinstance(v, str) or _is_int(v)


# key -> (type check, human type name)
FIELDS: Mapping[str, tuple[_Check, str]] = {
    "diskSize": (
        lambda v: _is_int(v) or (isinstance(v, str) and (v in DISK_SIZE_WORDS or v.isdigit())),
        " or ".join(f'"{word}"' for word in DISK_SIZE_WORDS) + " or an integer number of MiB",
    ),
    "additionalSpace": (_is_size, 'a size string such as "512M"'),
    "bootSize": (_is_size, 'a size string such as "256M"'),
    "contents": (lambda v: isinstance(v, list), "a list of {source, target, mode?, user?, group?}"),
    "partitionTableType": (_is_str, "a string"),
    "installBootLoader": (_is_bool, "a boolean"),
    "touchEFIVars": (_is_bool, "a boolean"),
    "efiFirmware": (_is_opt_str, "a path or null"),
    "efiVariables": (_is_opt_str, "a path or null"),
    "ovmfSystemManagementModeRequired": (_is_bool, "a boolean"),
    "fsType": (_is_str, "a string"),
    "label": (_is_opt_str, "a string or null"),
    "configFile": (_is_opt_str, "a path or null"),
    "postVM": (_is_str, "a string of shell code"),
    "memSize": (_is_int, "an integer number of MiB"),
    "onlyNixStore": (_is_bool, "a boolean"),
    "name": (_is_str, "a string"),
    "format": (_is_str, "a string"),
    "baseName": (_is_str, "a string"),
    "deterministic": (_is_bool, "a boolean"),
    "deduplicate": (_is_bool, "a boolean"),
    "compression": (_is_opt_str, "a compression's name or null"),
    "rootGPUID": (_is_str, "a GUID string"),
    "rootFSUID": (_is_opt_str, "a UUID string or null"),
    "copyChannel": (_is_bool, "a boolean"),
    "additionalPaths": (_is_str_list, "a list of store paths"),
    "toplevel": (_is_str, "the store path of config.system.build.toplevel"),
    "closureInfo": (_is_str, "the store path of a closureInfo"),
    "channelSources": (_is_opt_str, "a store path or null"),
    "grubDevices": (_is_str_list, "a list of device paths"),
    "limineBiosDevice": (_is_opt_str, "a device path or null"),
    "system": (_is_opt_str, 'a Nix system name such as "aarch64-linux", or null'),
}
REQUIRED = ("toplevel", "closureInfo")
PATH_KEYS = ("toplevel", "closureInfo", "channelSources", "configFile", "efiFirmware",
             "efiVariables")
CONTENT_KEYS = ("source", "target", "mode", "user", "group")


def _check_compression(compression: str | None, fs_type: str) -> None:
    if compression is None or fs_type not in FS_TYPES:
        return
    choices = FS_TYPES[fs_type].compressions
    if not choices:
        raise SpecError(
            "compression",
            f'"{compression}": fsType {fs_type} is not compressed; only store images '
            "(fsType erofs or squashfs) take a compression, leave it null",
        )
    if compression not in choices:
        raise SpecError(
            "compression",
            f'"{compression}" is not a {fs_type} compression; use one of '
            + ", ".join(f'"{c}"' for c in choices),
        )


def load_spec(path: Path) -> Spec:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise SpecError("SPEC.json", f"{path} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise SpecError("SPEC.json", f"cannot read {path}: {reason}") from exc
    except json.JSONDecodeError as exc:
        raise SpecError("SPEC.json", f"{path} is not valid JSON: {exc}") from exc
    return parse_spec(raw)


def _parse_contents(value: list[Any]) -> tuple[ContentEntry, ...]:
    entries: list[ContentEntry] = []
    for i, item in enumerate(value):
        where = f"contents[{i}]"
        if not isinstance(item, dict):
            raise SpecError(
                where, "must be an attribute set {source, target, mode?, user?, group?}"
            )
        unknown = sorted(set(item) - set(CONTENT_KEYS))
        if unknown:
            raise SpecError(
                where,
                f"unknown attribute(s) {', '.join(unknown)}; allowed: {', '.join(CONTENT_KEYS)}",
            )
        for key in ("source", "target"):
            if not isinstance(item.get(key), str) or not item[key]:
                raise SpecError(f"{where}.{key}", "is required and must be a non-empty string")
        for key in ("mode", "user", "group"):
            if not _is_opt_str(item.get(key)):
                raise SpecError(f"{where}.{key}", "must be a string or null")
        mode = item.get("mode") or None
        if mode is not None and not MODE_RE.match(mode):
            raise SpecError(f"{where}.mode", f'"{mode}" is not an octal mode; write it like "755"')
        user, group = item.get("user") or None, item.get("group") or None
        if (user is None) != (group is None):
            raise SpecError(
                where,
                REFERENCE_MESSAGES["contents"]
                + f" (target {item['target']} sets only "
                f"{'user' if user else 'group'}).",
            )
        target = item["target"]
        if ".." in Path(target).parts:
            raise SpecError(
                f"{where}.target",
                f"{target} must not contain '..' (it would leave the image's root); "
                "write the path from the image's /",
            )
        entries.append(ContentEntry(item["source"], target, mode, user, group))
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        if entry.is_glob:
            continue  # the reference lets globs merge into a directory
        key = entry.image_path
        if key in seen:
            raise SpecError(
                f"contents[{i}].target",
                f"duplicate entry {entry.target} -> {entry.source} "
                f"(contents[{seen[key]}] already places a file there); remove one of them",
            )
        seen[key] = i
    return tuple(entries)


def _find_nul(value: Any, where: str) -> str | None:
    """The first place in `value` where a string holds NUL (no path or name can)."""
    if isinstance(value, str):
        return where if "\0" in value else None
    if isinstance(value, list):
        items: Any = enumerate(value)
    elif isinstance(value, dict):
        items = value.items()
    else:
        return None
    for key, item in items:
        found = _find_nul(item, f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}")
        if found:
            return found
    return None


def parse_spec(raw: Any) -> Spec:
    if not isinstance(raw, dict):
        raise SpecError("SPEC.json", "must be a JSON object of makeDiskImage arguments")
    nul = _find_nul(raw, "")
    if nul:
        raise SpecError(nul.lstrip("."), "contains a NUL character, which no path or name can hold")
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise SpecError(
            unknown[0],
            f"unknown argument(s) {', '.join(unknown)}; "
            "see docs/interface.md for the accepted keys",
        )
    for key, (check, type_name) in FIELDS.items():
        if key in raw and not check(raw[key]):
            raise SpecError(key, f"must be {type_name}, got {json.dumps(raw[key])}")
    for key in REQUIRED:
        if key not in raw:
            raise SpecError(key, "is required (the driver computes it from config)")

    for key in PATH_KEYS:
        if raw.get(key) == "":
            raise SpecError(key, "is an empty string; give a path (or null where allowed)")

    kw: dict[str, Any] = {k: v for k, v in raw.items() if k in FIELDS}

    # partitionTableType: lib.assertOneOf
    ptt = kw.get("partitionTableType", "legacy")
    if ptt not in PARTITION_TABLE_TYPES or ptt not in LAYOUTS:
        raise SpecError(
            "partitionTableType",
            f'"{ptt}" is not one of ' + ", ".join(f'"{name}"' for name in PARTITION_TABLE_TYPES),
        )

    fmt = kw.get("format", "raw")
    try:
        kw["format"] = Format(fmt)
    except ValueError:
        raise SpecError(
            "format", f'"{fmt}" is not one of ' + ", ".join(f'"{f.value}"' for f in Format)
        ) from None

    disk_size = kw.pop("diskSize", "auto")
    kw["diskSize"] = None if disk_size in DISK_SIZE_WORDS else int(disk_size)
    kw["diskSizeMinimal"] = disk_size == "minimal"
    if kw["diskSize"] is not None:
        if kw["diskSize"] <= 0:
            raise SpecError(
                "diskSize", f'{disk_size} MiB must be positive (or "auto", "minimal")'
            )
        if kw["diskSize"] * MIB > MAX_SIZE:
            raise SpecError(
                "diskSize",
                f"{disk_size} MiB is more than the 1E (2^60 bytes) an ext4 filesystem or a "
                'disk image can be; give a smaller number of MiB, "auto" or "minimal"',
            )

    for key in ("additionalSpace", "bootSize"):
        if key in kw:
            try:
                kw[key] = parse_iec(kw[key])
            except ValueError as exc:
                raise SpecError(key, str(exc)) from None

    if "contents" in kw:
        kw["contents"] = _parse_contents(kw["contents"])
    for key in ("additionalPaths", "grubDevices"):
        if key in kw:
            kw[key] = tuple(kw[key])

    only_nix_store = kw.get("onlyNixStore", False)
    if kw.get("label") is None:
        kw["label"] = "nix-store" if only_nix_store else "nixos"
    fs_type = kw.get("fsType", "ext4")
    deterministic = kw.get("deterministic", True)
    root_gpuid = kw.get("rootGPUID", Spec.rootGPUID)
    if not GUID_RE.match(root_gpuid):
        raise SpecError(
            "rootGPUID", f'"{root_gpuid}" is not a GUID (8-4-4-4-12 hexadecimal digits)'
        )
    fs = lookup(fs_type)
    uuid_is_root_gpuid = fs is not None and fs.uuid_is_root_gpuid
    if "rootFSUID" not in raw:
        kw["rootFSUID"] = root_gpuid if uuid_is_root_gpuid else None
    if uuid_is_root_gpuid and deterministic and kw["rootFSUID"] is None:
        raise SpecError("rootFSUID", REFERENCE_MESSAGES["rootFSUID"])
    if kw["rootFSUID"] is not None and not GUID_RE.match(kw["rootFSUID"]):
        raise SpecError("rootFSUID", f'"{kw["rootFSUID"]}" is not a UUID')

    _check_filesystem(kw, ptt, fs_type, only_nix_store)
    _check_compression(kw.get("compression"), fs_type)
    if kw.get("deduplicate", False) and fs_type in FS_TYPES and not FS_TYPES[fs_type].hard_links:
        raise SpecError(
            "deduplicate",
            f"fsType {fs_type} is made by {FILESYSTEMS[fs_type].tool}, which writes no hard "
            "links; set deduplicate = false, or use fsType ext4 or btrfs",
        )

    if kw.get("touchEFIVars", False):
        if ptt not in EFI_VAR_LAYOUTS:
            raise SpecError("touchEFIVars", REFERENCE_MESSAGES["touchEFIVars"])
        for key in ("efiFirmware", "efiVariables"):
            if not kw.get(key):
                raise SpecError(
                    key, "is required when touchEFIVars is true (OVMF.firmware / OVMF.variables)"
                )

    if only_nix_store and (
        kw.get("contents") or kw.get("configFile") is not None or kw.get("installBootLoader", True)
    ):
        raise SpecError("onlyNixStore", REFERENCE_MESSAGES["onlyNixStore"])

    if kw.get("copyChannel", True) and not kw.get("channelSources"):
        raise SpecError(
            "channelSources", "is required when copyChannel is true (or set copyChannel = false)"
        )

    base = kw.get("baseName", "nixos")
    if not base or "/" in base or any(ord(c) < 0x20 for c in base):
        raise SpecError(
            "baseName",
            f"{json.dumps(base)} must be a file name in $out: not empty, without \"/\" "
            "or control characters (e.g. \"nixos\")",
        )
    name = kw.get("name", Spec.name)
    if not NIX_NAME_RE.match(name):
        raise SpecError(
            "name",
            f"{json.dumps(name)} is not a derivation name Nix accepts: 1 to 211 of "
            "A-Z a-z 0-9 + - . _ ? =, not starting with \".\" (e.g. \"nixos-disk-image\")",
        )
    if kw.get("memSize", 1024) < 256:
        raise SpecError(
            "memSize", f"{kw['memSize']} MiB is too little for the build VM; use at least 256"
        )
    if kw.get("memSize", 1024) * MIB > MAX_SIZE:
        raise SpecError(
            "memSize", f"{kw['memSize']} MiB is more memory than qemu can give a VM; "
            "the default 1024 is enough for most images"
        )
    for key in ("grubDevices", "additionalPaths"):
        for i, item in enumerate(kw.get(key, ())):
            if not item:
                raise SpecError(f"{key}[{i}]", "is an empty string; remove it or name a path")
    if kw.get("limineBiosDevice") == "":
        raise SpecError("limineBiosDevice", "is an empty string; use null or a device path")

    _check_boot_size(ptt, kw.get("bootSize", Spec.bootSize))
    _check_platform(kw)
    return Spec(**kw)


def _check_platform(kw: Mapping[str, Any]) -> None:
    """A layout or boot loader the image's architecture has no firmware for fails here."""
    system = kw.get("system")
    if system is None:
        return
    if system not in PLATFORMS:
        raise SpecError(
            "system",
            f'"{system}" is not a system this engine builds images for; use one of '
            + ", ".join(f'"{name}"' for name in PLATFORMS),
        )
    plat = PLATFORMS[system]
    if kw.get("ovmfSystemManagementModeRequired", False) and not plat.smm:
        raise SpecError(
            "ovmfSystemManagementModeRequired",
            f"SMM is an x86 firmware feature; {system} firmware (AAVMF) does not use it",
        )
    if plat.bios or not kw.get("installBootLoader", True):
        return
    ptt = kw.get("partitionTableType", "legacy")
    if ptt not in plat.bootable_partition_table_types:
        raise SpecError(
            "partitionTableType",
            f'"{ptt}" boots only through BIOS, which {system} machines do not have; use '
            '"efi", "efixbootldr" or "hybrid" (its EFI part), or installBootLoader = false',
        )
    bios_devices = [d for d in kw.get("grubDevices", ()) if d != "nodev"]
    if bios_devices:
        raise SpecError(
            "grubDevices",
            f"BIOS GRUB on {', '.join(bios_devices)} has no meaning on {system}: set "
            'boot.loader.grub.devices = [ "nodev" ] with boot.loader.grub.efiSupport, '
            "use systemd-boot, or installBootLoader = false",
        )


def _check_boot_size(ptt: str, boot_size: int) -> None:
    """Partitions that end at bootSize must still have room after the reference's rounding."""
    rounded_mib = round_up_one_unit(boot_size, MIB) // MIB
    minimum = {"efi": 8, "hybrid": 8, "efixbootldr": 100, "legacy+boot": 1}.get(ptt)
    if minimum is not None and rounded_mib <= minimum:
        raise SpecError(
            "bootSize",
            f"{boot_size} bytes puts the end of the boot partition at {rounded_mib} MiB, but "
            f"for {ptt} it must end after {minimum} MiB; use a bootSize of at least "
            f"{minimum}M",
        )


def _check_filesystem(kw: dict[str, Any], ptt: str, fs_type: str, only_nix_store: bool) -> None:
    """fsType against filesystems.FILESYSTEMS: what each can hold and where it can sit."""
    fs = FILESYSTEMS.get(fs_type)
    if fs is None:
        raise SpecError(
            "fsType",
            f'"{fs_type}" is not one the engine makes; use one of '
            + ", ".join(f'"{name}"' for name in FILESYSTEMS),
        )
    if fs.read_only:
        if not only_nix_store:
            raise SpecError(
                "fsType",
                f'"{fs_type}" is read-only: it can hold only a store image '
                "(onlyNixStore = true, partitionTableType = \"none\"), not a root the "
                "system writes; use one of "
                + ", ".join(name for name, info in FS_TYPES.items() if not info.read_only),
            )
        if ptt != "none":
            raise SpecError(
                "partitionTableType",
                f'"{ptt}": a read-only {fs_type} store image is the whole image; '
                'use partitionTableType = "none"',
            )
        if "rootFSUID" in kw and kw["rootFSUID"] is not None and not fs.takes_uuid:
            raise SpecError("rootFSUID", f"{fs_type} has no filesystem UUID; leave it null")
    if ptt != "none" and not fs.interface.in_partition_table:
        raise SpecError(
            "fsType",
            f'"{fs_type}": ' + REFERENCE_MESSAGES["fsType"] + " (in a partition table: "
            + ", ".join(IN_PARTITION_TABLE) + ")",
        )
    if fs.label_bytes and len(kw["label"].encode()) > fs.label_bytes:
        raise SpecError(
            "label",
            f'"{kw["label"]}" is longer than the {fs.label_bytes} bytes a {fs_type} label holds',
        )
    for i, entry in enumerate(kw.get("contents", ())):
        problem = fs.owner_problem(entry)
        if problem is not None:
            raise SpecError(f"contents[{i}].user", problem)
