"""makeDiskImage's interface, read from interface.json: the one table of formats,
partition table types, filesystem types, diskSize words and arguments that default.nix,
nix/module.nix and this engine share.

Nix reads the same file (`builtins.fromJSON`), so what Nix checks at evaluation and what
the engine checks in its spec cannot drift apart. The file is package data: it is
installed next to this module.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

PATH = Path(__file__).with_name("interface.json")

Origin = Literal["reference", "extension"]
T = TypeVar("T")


@dataclass(frozen=True)
class FormatInfo:
    """A `format`: the file's extension and its nix-support/hydra-build-products type."""

    name: str
    origin: Origin
    extension: str
    product_type: str
    description: str


@dataclass(frozen=True)
class PartitionTableInfo:
    """A `partitionTableType` (its geometry is make_disk_image/layouts.py)."""

    name: str
    origin: Origin
    efi_variables: bool  # touchEFIVars is allowed with it
    boot_start_mib: int | None  # where the partition that ends at bootSize starts
    description: str


@dataclass(frozen=True)
class FsTypeInfo:
    """An `fsType` the engine can make: what Nix checks too. How the engine makes and
    sizes it: the make_disk_image/filesystems/ module the row names."""

    name: str
    origin: Origin
    in_partition_table: bool  # may be the root of a partitioned disk (else only "none")
    read_only: bool  # holds only a store image (onlyNixStore, partitionTableType "none")
    label_bytes: int  # the longest label the tool stores (0: it stores none)
    takes_uuid: bool  # the tool takes a fixed filesystem UUID (rootFSUID)
    kernel_module: str  # the Linux module the build VM mounts it with
    module: str  # the engine's make_disk_image/filesystems/ module that makes it
    # The engine can write hard links into it (`deduplicate`). Every fsType can now;
    # the rule hardLinksInFs stays for one that cannot.
    hard_links: bool
    # A store image's compressions, as the tool names them ("none": uncompressed), and
    # the one taken when `compression` is null; empty and None for the others.
    compressions: tuple[str, ...]
    default_compression: str | None
    description: str


@dataclass(frozen=True)
class ArgumentType:
    """What a value of an argument type must be: the end of its message, the pattern
    (POSIX ERE that Python reads alike) a string of it matches whole, or the type of
    its elements."""

    name: str
    expected: str
    pattern: str | None = None
    elements: str | None = None  # a list of values of this type


@dataclass(frozen=True)
class Rule:
    """A named check of an argument, implemented by nix/arguments.nix and
    make_disk_image/arguments.py alike; `message` is a template (interface.json)."""

    name: str
    message: str
    argument: str | None = None  # the argument the message names, if not the row's
    table: str | None = None  # oneOf: the table of choices
    pattern: str | None = None  # matches: the pattern
    checked_by: str | None = None  # "engine": about what default.nix computes itself


@dataclass(frozen=True)
class Argument:
    """A makeDiskImage argument, or (origin "computed") a value default.nix computes
    for the spec. `type` names one of ARGUMENT_TYPES; "context" marks pkgs, lib and
    config, which have no option."""

    name: str
    origin: str  # "reference", "extension" or "computed"
    type: str
    description: str
    has_default: bool  # a constant default, in `default`
    default: Any
    default_rule: str | None  # a default computed from other arguments, by this rule
    default_text: str | None  # what that default is, for people
    rules: tuple[Rule, ...]
    in_spec: bool  # the engine's spec carries it


@dataclass(frozen=True)
class Interface:
    """The tables by name, in the file's order (the order messages list choices in)."""

    formats: dict[str, FormatInfo]
    partition_table_types: dict[str, PartitionTableInfo]
    fs_types: dict[str, FsTypeInfo]
    disk_size_words: dict[str, str]  # word -> description
    argument_types: dict[str, ArgumentType]
    arguments: dict[str, Argument]  # the caller's, in the order they are checked
    computed: dict[str, Argument]  # what default.nix adds to the spec
    reference_messages: dict[str, str]  # argument -> the reference's assert message


# interface.json's keys (as Nix spells them) -> the dataclasses' field names.
_FIELDS = {
    "productType": "product_type",
    "efiVariables": "efi_variables",
    "inPartitionTable": "in_partition_table",
    "readOnly": "read_only",
    "labelBytes": "label_bytes",
    "takesUUID": "takes_uuid",
    "kernelModule": "kernel_module",
    "hardLinks": "hard_links",
    "defaultCompression": "default_compression",
    "bootStartMiB": "boot_start_mib",
    "checkedBy": "checked_by",
}


def _table(entries: list[dict[str, Any]], kind: Callable[..., T]) -> dict[str, T]:
    return {e["name"]: kind(**{_FIELDS.get(k, k): tuple(v) if isinstance(v, list) else v
                               for k, v in e.items()}) for e in entries}


def _rows(table: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(name, row) for name, row in table.items() if name != "_about"]


def _argument(row: dict[str, Any]) -> Argument:
    return Argument(
        name=row["name"],
        origin=row["origin"],
        type=row["type"],
        description=row["description"],
        has_default="default" in row,
        default=row.get("default"),
        default_rule=row.get("defaultRule"),
        default_text=row.get("defaultText"),
        rules=tuple(
            Rule(**{_FIELDS.get(k, k): v for k, v in {"name": r["rule"], **r}.items()
                    if k != "rule"})
            for r in row.get("rules", ())
        ),
        in_spec=row.get("spec", True) and row["type"] != "context",
    )


def render(template: str, values: dict[str, str]) -> str:
    """A message template with its @name@ placeholders filled in (as nix/arguments.nix
    does with builtins.replaceStrings)."""
    for name, value in values.items():
        template = template.replace(f"@{name}@", value)
    return template


def parse(data: dict[str, Any]) -> Interface:
    return Interface(
        formats=_table(data["formats"], FormatInfo),
        partition_table_types=_table(data["partitionTableTypes"], PartitionTableInfo),
        fs_types=_table(data["fsTypes"], FsTypeInfo),
        disk_size_words={w["name"]: w["description"] for w in data["diskSizeWords"]},
        argument_types={
            name: ArgumentType(name=name, **t) for name, t in _rows(data["argumentTypes"])
        },
        arguments={a["name"]: _argument(a) for a in data["arguments"]},
        computed={a["name"]: _argument({"origin": "computed", **a}) for a in data["computed"]},
        reference_messages={
            name: text for name, text in data["referenceMessages"].items() if name != "_about"
        },
    )


def load(path: Path = PATH) -> Interface:
    return parse(json.loads(path.read_text()))


INTERFACE = load()
FORMATS = INTERFACE.formats
PARTITION_TABLE_TYPES = INTERFACE.partition_table_types
FS_TYPES = INTERFACE.fs_types
DISK_SIZE_WORDS = INTERFACE.disk_size_words
ARGUMENT_TYPES = INTERFACE.argument_types
ARGUMENTS = INTERFACE.arguments
COMPUTED = INTERFACE.computed
REFERENCE_MESSAGES = INTERFACE.reference_messages
