"""One partition definition (repart.d(5)'s `[Partition]` section), read and checked.

nixpkgs' `image.repart.partitions.<name>.repartConfig` is such a section as an attribute
set; the definitions are ordered by `<name>` as repart orders its `*.conf` files. Every
error names the option (`image.repart.partitions.<name>.repartConfig.<Key>`) and the fix.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from make_disk_image.repart import types
from make_disk_image.repart.format_table import FORMATS, RepartFormat
from make_disk_image.repart.types import PartitionType

Minimize = Literal["off", "guess", "best"]
# Keys this engine implements; SplitName and the flags are accepted as repart reads them.
SUPPORTED_KEYS = (
    "Type", "Label", "UUID", "Format", "CopyFiles", "MakeDirectories",
    "SizeMinBytes", "SizeMaxBytes", "Weight", "Minimize", "SplitName",
    "GrowFileSystem", "ReadOnly",
)
# Keys out of scope: refused by name rather than silently ignored.
REFUSED_KEYS = {
    "Verity": "dm-verity is not built by this engine; build the image with systemd-repart "
    "(makeDiskImage.repart.enable = false) or drop the key",
    "VerityMatchKey": "dm-verity is not built by this engine (see Verity)",
    "VerityDataBlockSizeBytes": "dm-verity is not built by this engine (see Verity)",
    "VerityHashBlockSizeBytes": "dm-verity is not built by this engine (see Verity)",
    "Encrypt": "encrypted partitions are not built by this engine; drop the key or set it "
    "to \"off\"",
}
GPT_LABEL_CHARACTERS = 36
DEFAULT_WEIGHT = 1000
MAX_WEIGHT = 1000 * 1000
_SIZE_SUFFIXES = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40,
                  "P": 1 << 50, "E": 1 << 60}
_TRUE = ("1", "yes", "y", "true", "t", "on")
_FALSE = ("0", "no", "n", "false", "f", "off")


class DefinitionError(ValueError):
    """A definition repart would refuse, or one this engine does not build."""


@dataclass(frozen=True)
class CopyFiles:
    """`CopyFiles=SOURCE[:TARGET]`: a host path copied to TARGET in the filesystem."""

    source: str
    target: str


@dataclass(frozen=True)
class Definition:
    name: str  # the attribute name: the order and repart's file name without `.conf`
    type: PartitionType
    label: str | None  # None: repart's default (the type's name, numbered when repeated)
    uuid: uuid.UUID | None  # None: derived from the seed
    format: str | None
    copy_files: tuple[CopyFiles, ...] = ()
    make_directories: tuple[str, ...] = ()
    size_min: int | None = None
    size_max: int | None = None
    weight: int = DEFAULT_WEIGHT
    minimize: Minimize = "off"
    split_name: str | None = None

    @property
    def filesystem(self) -> RepartFormat | None:
        """The format's row (format_table.FORMATS); None: no Format=."""
        return FORMATS[self.format] if self.format is not None else None

    @property
    def read_only_filesystem(self) -> bool:
        return self.filesystem is not None and self.filesystem.read_only

    @property
    def holds_files(self) -> bool:
        return self.filesystem is not None and self.filesystem.holds_files


def option(name: str, key: str) -> str:
    return f"image.repart.partitions.{name}.repartConfig.{key}"


def parse_size(text: str | int, where: str) -> int:
    """repart's sizes: bytes, or a number with K/M/G/T/P/E (powers of 1024)."""
    if isinstance(text, bool):
        raise DefinitionError(f"{where}: expected a size such as \"64M\", got {text!r}")
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGTPEB]?)\s*", text)
    if not match:
        raise DefinitionError(
            f"{where}: {text!r} is not a size; write bytes or a number with K, M, G or T "
            "(powers of 1024), e.g. \"64M\""
        )
    return int(float(match.group(1)) * _SIZE_SUFFIXES[match.group(2)])


def _boolean(value: str | int | bool, where: str) -> bool:
    text = str(value).lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise DefinitionError(f"{where}: {value!r} is not a boolean; use true or false")


def _minimize(value: str | int | bool, where: str) -> Minimize:
    text = str(value).lower()
    if text in ("guess", "best", "off"):
        return text  # type: ignore[return-value]
    if text in _TRUE:
        return "best"
    if text in _FALSE:
        return "off"
    raise DefinitionError(f"{where}: {value!r} is not one of off, guess, best")


def _copy_files(value: str, where: str) -> tuple[CopyFiles, ...]:
    found = []
    for item in str(value).split():
        source, _, target = item.partition(":")
        target = target or source
        if not source.startswith("/") or not target.startswith("/"):
            raise DefinitionError(
                f"{where}: {item!r} must be an absolute SOURCE[:TARGET], e.g. \"/etc/foo:/foo\""
            )
        found.append(CopyFiles(source, target))
    return tuple(found)


def _directories(value: str, where: str) -> tuple[str, ...]:
    found = tuple(str(value).split())
    for path in found:
        if not path.startswith("/"):
            raise DefinitionError(f"{where}: {path!r} must be an absolute path")
    return found


def _check_keys(name: str, config: Mapping[str, object]) -> None:
    for key, value in config.items():
        if key in REFUSED_KEYS:
            if key == "Encrypt" and str(value).lower() in ("off", "no", "false", "0"):
                continue
            raise DefinitionError(f"{option(name, key)}: {REFUSED_KEYS[key]}")
        if key not in SUPPORTED_KEYS:
            raise DefinitionError(
                f"{option(name, key)}: this engine does not implement {key}=; supported keys: "
                + ", ".join(SUPPORTED_KEYS)
            )
    if "Type" not in config:
        raise DefinitionError(f"{option(name, 'Type')}: every partition needs a Type")


def parse(name: str, config: Mapping[str, str | int | bool], architecture: str) -> Definition:
    """One `repartConfig` attribute set, for an image of `architecture` (x86-64, arm64)."""
    _check_keys(name, config)
    try:
        ptype = types.resolve(str(config["Type"]), architecture)
    except ValueError as exc:
        raise DefinitionError(f"{option(name, 'Type')}: {exc}") from None
    label = str(config["Label"]) if "Label" in config else None
    if label is not None and len(label.encode("utf-16-le")) // 2 > GPT_LABEL_CHARACTERS:
        raise DefinitionError(
            f"{option(name, 'Label')}: {label!r} is longer than GPT's "
            f"{GPT_LABEL_CHARACTERS} characters; shorten it"
        )
    fmt = str(config["Format"]) if "Format" in config else None
    if fmt is not None and fmt not in FORMATS:
        raise DefinitionError(
            f"{option(name, 'Format')}: {fmt!r} is not supported; use one of " + ", ".join(FORMATS)
        )
    fixed_uuid = None
    if "UUID" in config:
        try:
            fixed_uuid = uuid.UUID(str(config["UUID"]))
        except ValueError:
            raise DefinitionError(
                f"{option(name, 'UUID')}: {config['UUID']!r} is not a UUID"
            ) from None
    definition = Definition(
        name=name, type=ptype, label=label, uuid=fixed_uuid, format=fmt,
        copy_files=_copy_files(str(config.get("CopyFiles", "")), option(name, "CopyFiles")),
        make_directories=_directories(
            str(config.get("MakeDirectories", "")), option(name, "MakeDirectories")
        ),
        size_min=_size(config, name, "SizeMinBytes"),
        size_max=_size(config, name, "SizeMaxBytes"),
        weight=_weight(config, name),
        minimize=_minimize(config.get("Minimize", "off"), option(name, "Minimize")),
        split_name=str(config["SplitName"]) if "SplitName" in config else None,
    )
    for key in ("GrowFileSystem", "ReadOnly"):
        if key in config:
            _boolean(config[key], option(name, key))
    _check_consistency(definition)
    return definition


def _size(config: Mapping[str, str | int | bool], name: str, key: str) -> int | None:
    return parse_size(config[key], option(name, key)) if key in config else None


def _weight(config: Mapping[str, str | int | bool], name: str) -> int:
    value = config.get("Weight", DEFAULT_WEIGHT)
    try:
        weight = int(str(value))
    except ValueError:
        weight = -1
    if not 0 <= weight <= MAX_WEIGHT:
        raise DefinitionError(f"{option(name, 'Weight')}: {value!r} must be 0 to {MAX_WEIGHT}")
    return weight


def _check_consistency(d: Definition) -> None:
    if d.size_min is not None and d.size_max is not None and d.size_min > d.size_max:
        raise DefinitionError(
            f"{option(d.name, 'SizeMinBytes')}: larger than SizeMaxBytes; lower one of them"
        )
    if d.minimize != "off" and d.format is None:
        raise DefinitionError(f"{option(d.name, 'Minimize')}: needs Format= (repart refuses it)")
    if d.minimize == "best" and not d.read_only_filesystem:
        raise DefinitionError(
            f"{option(d.name, 'Minimize')}: \"best\" is for erofs and squashfs (repart 254 "
            "refuses it for writable filesystems); use \"guess\""
        )
    if (d.copy_files or d.make_directories) and not d.holds_files:
        raise DefinitionError(
            f"{option(d.name, 'CopyFiles')}: files need a filesystem; set Format= (not swap)"
        )


def parse_all(
    configs: Mapping[str, Mapping[str, str | int | bool]], architecture: str
) -> list[Definition]:
    """All definitions, in repart's order: by name."""
    return [parse(name, configs[name], architecture) for name in sorted(configs)]
