"""Loading and validating SPEC.json: every reference `assert`, before any slow work."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from make_disk_image.arguments import ROWS, SpecError, check_rules, check_types, with_defaults
from make_disk_image.filesystems import FILESYSTEMS
from make_disk_image.interface import DISK_SIZE_WORDS
from make_disk_image.models import ContentEntry, Format, Spec
from make_disk_image.utils import parse_iec

__all__ = ["SpecError", "load_spec", "parse_spec"]


MODE_RE = re.compile(r"^[0-7]{3,4}$")
CONTENT_KEYS = ("source", "target", "mode", "user", "group")


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


def _parse_contents(value: list[dict[str, Any]]) -> tuple[ContentEntry, ...]:
    """What the argument table's `contents` type and rules leave: keys, modes, targets."""
    entries: list[ContentEntry] = []
    for i, item in enumerate(value):
        where = f"contents[{i}]"
        unknown = sorted(set(item) - set(CONTENT_KEYS))
        if unknown:
            raise SpecError(
                where,
                f"unknown attribute(s) {', '.join(unknown)}; allowed: {', '.join(CONTENT_KEYS)}",
            )
        mode = item.get("mode") or None
        if mode is not None and not MODE_RE.match(mode):
            raise SpecError(f"{where}.mode", f'"{mode}" is not an octal mode; write it like "755"')
        user, group = item.get("user") or None, item.get("group") or None
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
    """The spec's values checked by the argument table (types, then every rule), then
    what only the engine checks, as a Spec."""
    if not isinstance(raw, dict):
        raise SpecError("SPEC.json", "must be a JSON object of makeDiskImage arguments")
    nul = _find_nul(raw, "")
    if nul:
        raise SpecError(nul.lstrip("."), "contains a NUL character, which no path or name can hold")
    unknown = sorted(set(raw) - set(ROWS))
    if unknown:
        raise SpecError(
            unknown[0],
            f"unknown argument(s) {', '.join(unknown)}; "
            "see docs/interface.md for the accepted keys",
        )
    check_types(raw)
    values = with_defaults(raw)
    check_rules(values)
    contents = _parse_contents(values["contents"])
    _check_filesystem(values["fsType"], contents)
    disk_size = values["diskSize"]
    return Spec(**{
        **values,
        "diskSize": None if disk_size in DISK_SIZE_WORDS else int(disk_size),
        "diskSizeMinimal": disk_size == "minimal",
        "additionalSpace": parse_iec(values["additionalSpace"]),
        "bootSize": parse_iec(values["bootSize"]),
        "format": Format(values["format"]),
        "contents": contents,
        "additionalPaths": tuple(values["additionalPaths"]),
        "grubDevices": tuple(values["grubDevices"]),
    })  # fmt: skip


def _check_filesystem(fs_type: str, contents: tuple[ContentEntry, ...]) -> None:
    """What the filesystem cannot hold: owners (its module says)."""
    fs = FILESYSTEMS[fs_type]
    for i, entry in enumerate(contents):
        problem = fs.owner_problem(entry)
        if problem is not None:
            raise SpecError(f"contents[{i}].user", problem)
