"""makeDiskImage's arguments as the engine checks them: interface.json's argument table
(each argument's type, default, rules and their messages) applied to a spec.

nix/arguments.nix implements the same named types and rules for evaluation, and renders
the same messages from the same templates: tests/test_interface.py sends the same wrong
sets through both and compares the two messages. Here the values are what default.nix's
`builtins.toJSON` wrote (paths and derivations are store path strings). A table row
names its type and rules; adding an argument of an existing type is a row there.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from make_disk_image.filesystems import lookup
from make_disk_image.interface import (
    ARGUMENT_TYPES,
    ARGUMENTS,
    COMPUTED,
    DISK_SIZE_WORDS,
    FORMATS,
    FS_TYPES,
    PARTITION_TABLE_TYPES,
    REFERENCE_MESSAGES,
    Argument,
    Rule,
    render,
)
from make_disk_image.platforms import PLATFORMS, Platform, host_system
from make_disk_image.utils import MAX_SIZE, iec_bytes, round_up_one_unit

MIB = 1024 * 1024
# The rows of the spec, in the order they are checked: the arguments, then what
# default.nix computes.
ROWS: dict[str, Argument] = {
    name: row for name, row in {**ARGUMENTS, **COMPUTED}.items() if row.in_spec
}
TABLES: Mapping[str, Mapping[str, Any]] = {
    "partitionTableTypes": PARTITION_TABLE_TYPES,
    "fsTypes": FS_TYPES,
    "formats": FORMATS,
}


class SpecError(ValueError):
    """The spec is wrong; the message names the argument and the fix."""

    def __init__(self, argument: str, message: str) -> None:
        super().__init__(f"argument `{argument}`: {message}")
        self.argument = argument


def shown(value: Any) -> str:
    """A value in a message, as nix/arguments.nix's `shown` writes it."""
    if value is None or isinstance(value, (str, bool, int)):
        return json.dumps(value, ensure_ascii=False)
    return "a list" if isinstance(value, list) else f"a {type(value).__name__}".replace(
        "dict", "set"
    )


def quoted(names: Any) -> str:
    return ", ".join(f'"{name}"' for name in names)


COMMON = {"diskSizeWords": quoted(DISK_SIZE_WORDS)}


def _matches(type_name: str, value: str) -> bool:
    pattern = ARGUMENT_TYPES[type_name].pattern
    return pattern is None or re.fullmatch(pattern, value) is not None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _text(v: Any) -> bool:
    return isinstance(v, str) and v != ""


def _optional(v: Any, key: str) -> bool:
    return v.get(key) is None or isinstance(v[key], str)


def _contents_entry(v: Any) -> bool:
    return (
        isinstance(v, dict)
        and _text(v.get("source"))
        and _text(v.get("target"))
        and all(_optional(v, key) for key in ("mode", "user", "group"))
    )


# An argument type -> what its value in the spec may be (default.nix writes a path it
# does not use, the firmware without touchEFIVars, as null).
TYPES: Mapping[str, Callable[[Any], bool]] = {
    "diskSize": lambda v: _is_int(v)
    or (isinstance(v, str) and (v in DISK_SIZE_WORDS or _matches("diskSize", v))),
    "size": lambda v: (_is_int(v) and v >= 0) or (isinstance(v, str) and _matches("size", v)),
    "contents": lambda v: isinstance(v, list),
    "contentsEntry": _contents_entry,
    "choice": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
    "path": lambda v: v is None or _text(v),
    "str": lambda v: isinstance(v, str),
    "lines": lambda v: isinstance(v, str),
    "nullOrPath": lambda v: v is None or _text(v),
    "positiveInt": lambda v: _is_int(v) and v > 0,
    "guid": lambda v: isinstance(v, str) and _matches("guid", v),
    "nullOrGuid": lambda v: v is None or (isinstance(v, str) and _matches("nullOrGuid", v)),
    "compression": lambda v: v is None or isinstance(v, str),
    "storePaths": lambda v: isinstance(v, list),
    "storePath": _text,
    "strList": lambda v: isinstance(v, list),
    "text": _text,
    "nullOrStr": lambda v: v is None or _text(v),
}

# A default computed from other arguments (interface.json's defaultRule). The engine has
# no OVMF: a spec without the firmware has none.
DEFAULTS: Mapping[str, Callable[[Mapping[str, Any]], Any]] = {
    "labelOfOnlyNixStore": lambda a: "nix-store" if a["onlyNixStore"] else "nixos",
    "rootGPUIDForExt4": lambda a: a["rootGPUID"] if _uuid_is_root_gpuid(a) else None,
    "firmwareOfOVMF": lambda a: None,
    "variablesOfOVMF": lambda a: None,
}

def _uuid_is_root_gpuid(a: Mapping[str, Any]) -> bool:
    """The reference's ext4 rule: the filesystem's UUID is rootGPUID (its module says)."""
    fs = lookup(a["fsType"])
    return fs is not None and fs.uuid_is_root_gpuid


# A rule's outcome: None when it holds, else the values its message names.
Found = dict[str, str] | None


def _mib(value: Any) -> int | None:
    """diskSize's number of MiB (None for a word)."""
    return value if _is_int(value) else int(value) if value not in DISK_SIZE_WORDS else None


def _positive_mib(a: Mapping[str, Any], name: str, rule: Rule) -> Found:
    mib = _mib(a[name])
    return {} if mib is not None and mib <= 0 else None


def _mib_at_most_1e(a: Mapping[str, Any], name: str, rule: Rule) -> Found:
    mib = _mib(a[name])
    return {} if mib is not None and mib * MIB > MAX_SIZE else None


def _size_at_most_1e(a: Mapping[str, Any], name: str, rule: Rule) -> Found:
    size = iec_bytes(a[name])
    return {} if size is not None and size > MAX_SIZE else None


def _boot_partition_fits(a: Mapping[str, Any], name: str, rule: Rule) -> Found:
    layout = PARTITION_TABLE_TYPES.get(a["partitionTableType"])
    start = layout.boot_start_mib if layout else None
    end = round_up_one_unit(iec_bytes(a[name]) or 0, MIB) // MIB
    if start is None or end > start:
        return None
    return {"endMiB": str(end), "minimumMiB": str(start),
            "partitionTableType": shown(a["partitionTableType"])}  # fmt: skip


def _owner_whole(a: Mapping[str, Any], name: str, rule: Rule) -> Found:
    for i, entry in enumerate(a[name]):
        user, group = entry.get("user"), entry.get("group")
        if (user is None) != (group is None):
            half = "user" if user is not None else "group"
            return {"argument": f"{name}[{i}]", "target": entry["target"], "half": half}
    return None


def _one_of(a: Mapping[str, Any], name: str, rule: Rule) -> Found:
    choices = TABLES[rule.table or ""]
    return None if a[name] in choices else {"choices": quoted(choices)}


def _efi_variables_layout(a: Mapping[str, Any], name: str, rule: Rule) -> Found:
    layout = PARTITION_TABLE_TYPES.get(a["partitionTableType"])
    return {} if a[name] and layout and not layout.efi_variables else None


def _fs_found(a: Mapping[str, Any], holds: Callable[[Any], bool], **found: str) -> Found:
    fs = FS_TYPES.get(a["fsType"])
    return {"fsType": a["fsType"], **found} if fs and not holds(fs) else None


def _read_only_holds_only_the_store(a: Mapping[str, Any], name: str, rule: Rule) -> Found:
    writable = quoted(n for n, f in FS_TYPES.items() if not f.read_only)
    return _fs_found(a, lambda fs: not fs.read_only or a["onlyNixStore"], writable=writable)


def _read_only_is_the_whole_disk(a: Mapping[str, Any], name: str, rule: Rule) -> Found:
    ptt = a["partitionTableType"]
    return _fs_found(a, lambda fs: not fs.read_only or ptt == "none",
                     partitionTableType=shown(ptt))  # fmt: skip


def _in_partition_table(a: Mapping[str, Any], name: str, rule: Rule) -> Found:
    allowed = quoted(n for n, f in FS_TYPES.items() if f.in_partition_table)
    ptt = a["partitionTableType"]
    return _fs_found(a, lambda fs: fs.in_partition_table or ptt == "none",
                     inPartitionTable=allowed)  # fmt: skip


def _label_fits(a: Mapping[str, Any], name: str, rule: Rule) -> Found:
    fs = FS_TYPES.get(a["fsType"])
    size = fs.label_bytes if fs else 0
    fits = not size or len(a[name].encode()) <= size
    return _fs_found(a, lambda _: fits, labelBytes=str(size))


def _hard_links_in_fs(a: Mapping[str, Any], name: str, rule: Rule) -> Found:
    with_links = quoted(n for n, f in FS_TYPES.items() if f.hard_links)
    return _fs_found(a, lambda fs: fs.hard_links or not a[name], hardLinks=with_links)


def _compressed_fs(a: Mapping[str, Any], name: str, rule: Rule) -> Found:
    compressed = quoted(n for n, f in FS_TYPES.items() if f.compressions)
    return _fs_found(a, lambda fs: a[name] is None or bool(fs.compressions),
                     compressedFsTypes=compressed)  # fmt: skip


def _compression_of_fs(a: Mapping[str, Any], name: str, rule: Rule) -> Found:
    fs = FS_TYPES.get(a["fsType"])
    choices = quoted(fs.compressions) if fs else ""
    return _fs_found(a, lambda fs: a[name] is None or not fs.compressions
                     or a[name] in fs.compressions, compressions=choices)  # fmt: skip


def _null_without_uuid(a: Mapping[str, Any], name: str, rule: Rule) -> Found:
    return _fs_found(a, lambda fs: fs.takes_uuid or a[name] is None)


def _known_system(a: Mapping[str, Any], name: str, rule: Rule) -> Found:
    # No `system`: the image is the builder's (default.nix names only another one).
    system = a[name] or host_system()
    return None if system in PLATFORMS else {"system": shown(system), "systems": quoted(PLATFORMS)}


def _without_bios(a: Mapping[str, Any], holds: Callable[[Platform], bool], **found: str) -> Found:
    """A platform rule: it holds where the image's system has BIOS or no boot loader is
    installed."""
    system = a["system"] or host_system()
    platform = PLATFORMS.get(system)
    if platform is None or platform.bios or not a["installBootLoader"] or holds(platform):
        return None
    return {"system": system, **found}


def _bootable_on_platform(a: Mapping[str, Any], name: str, rule: Rule) -> Found:
    ptt = a["partitionTableType"]
    return _without_bios(a, lambda p: ptt in p.bootable_partition_table_types,
                         partitionTableType=shown(ptt))  # fmt: skip


def _bios_grub_on_platform(a: Mapping[str, Any], name: str, rule: Rule) -> Found:
    devices = [device for device in a["grubDevices"] if device != "nodev"]
    return _without_bios(a, lambda p: not devices, devices=", ".join(devices))


def _smm_on_platform(a: Mapping[str, Any], name: str, rule: Rule) -> Found:
    """SMM where the platform's firmware has none, boot loader or not."""
    system = a["system"] or host_system()
    platform = PLATFORMS.get(system)
    if platform is None or platform.smm or not a["ovmfSystemManagementModeRequired"]:
        return None
    return {"system": system}


RULES: Mapping[str, Callable[[Mapping[str, Any], str, Rule], Found]] = {
    "positiveMiB": _positive_mib,
    "mibAtMost1E": _mib_at_most_1e,
    "sizeAtMost1E": _size_at_most_1e,
    "bootPartitionFits": _boot_partition_fits,
    "ownerWhole": _owner_whole,
    "oneOf": _one_of,
    "efiVariablesLayout": _efi_variables_layout,
    "givenWithTouchEFIVars": lambda a, n, r: {} if a["touchEFIVars"] and not a[n] else None,
    "readOnlyHoldsOnlyTheStore": _read_only_holds_only_the_store,
    "readOnlyIsTheWholeDisk": _read_only_is_the_whole_disk,
    "inPartitionTable": _in_partition_table,
    "labelFits": _label_fits,
    "atLeast256": lambda a, n, r: {} if a[n] < 256 else None,
    "onlyTheStore": lambda a, n, r: {} if a[n] and (
        a["contents"] or a["configFile"] is not None or a["installBootLoader"]
    ) else None,
    "matches": lambda a, n, r: None if re.fullmatch(r.pattern or "", a[n]) else {},
    "givenWhenDeterministicExt4": lambda a, n, r: {} if (
        _uuid_is_root_gpuid(a) and a["deterministic"] and a[n] is None
    ) else None,
    "nullWithoutUUID": _null_without_uuid,
    "hardLinksInFs": _hard_links_in_fs,
    "compressedFs": _compressed_fs,
    "compressionOfFs": _compression_of_fs,
    "channelSourcesGiven": lambda a, n, r: {} if a[n] and not a["channelSources"] else None,
    "knownSystem": _known_system,
    "bootableOnPlatform": _bootable_on_platform,
    "biosGrubOnPlatform": _bios_grub_on_platform,
    "smmOnPlatform": _smm_on_platform,
}


def _check_type(name: str, type_name: str, value: Any) -> None:
    if not TYPES[type_name](value):
        expected = render(ARGUMENT_TYPES[type_name].expected, COMMON)
        raise SpecError(name, f"must be {expected}, but is: {shown(value)}")
    elements = ARGUMENT_TYPES[type_name].elements
    for i, element in enumerate(value if elements else ()):
        _check_type(f"{name}[{i}]", elements or "", element)


def check_types(raw: Mapping[str, Any]) -> None:
    """Each given value has its row's type; a row without a default is given."""
    for name, row in ROWS.items():
        if raw.get(name) is None and not row.has_default and row.default_rule is None:
            raise SpecError(name, "is required (the driver computes it from config)")
        if name in raw:
            _check_type(name, row.type, raw[name])


def with_defaults(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The spec's values, every row's default applied: constants first, then the rules."""
    values = {name: raw.get(name, row.default) for name, row in ROWS.items()}
    for name, row in ROWS.items():
        if name not in raw and row.default_rule is not None:
            values[name] = DEFAULTS[row.default_rule](values)
    return values


def check_rules(values: Mapping[str, Any]) -> None:
    """Every row's rules, in the table's order: the first that fails is raised."""
    for name, row in ROWS.items():
        for rule in row.rules:
            found = RULES[rule.name](values, name, rule)
            if found is None:
                continue
            message = render(rule.message, {
                **COMMON, "value": shown(values[name]),
                "reference": REFERENCE_MESSAGES.get(name, ""), **found,
            })  # fmt: skip
            raise SpecError(found.get("argument", rule.argument or name), message)


if set(TYPES) | {"context", "package"} != set(ARGUMENT_TYPES):
    raise ImportError("interface.json's argumentTypes and arguments.TYPES differ")
if {rule.name for row in ROWS.values() for rule in row.rules} - set(RULES):
    raise ImportError("interface.json names a rule make_disk_image/arguments.py lacks")
