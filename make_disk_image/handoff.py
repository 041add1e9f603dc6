"""The contract between the phases: what each writes into xchg/ and the next one reads.

    prepare (preVM, host)  --Handoff-->      guest (VM)  --GuestRecord-->  finish (postVM, host)
            \\------------------------------Handoff-------------------------------/

xchg/ is the directory the build VM shares with the host (nixpkgs' runInLinuxVM mounts
it at /tmp/xchg); paths inside these files are relative to it, so that both sides can
resolve them.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any, cast

from make_disk_image.models import DiskPlan, Entry, GuestRecord, Handoff, Kind, Origin
from make_disk_image.process import StepError

XCHG = "xchg"
HANDOFF = "make-disk-image.json"
RECORD = "guest-record.json"
# prepare's whole tree, so that finish need not describe it again (a stat of every entry).
TREE = "tree.json"
# prepare's Nix database files: in the image tree, and read again by finish.
NIX_DB_DIR = "nix-db"
# Bytes the guest wrote on the root filesystem, named in the record.
GUEST_FILES = "guest-files"
VERSION = 5
# The disk the build VM sees (runInLinuxVM's $diskImage), in the build directory:
# prepare writes it, the guest changes it, finish keeps what lies outside its filesystems.
VM_DISK = "nixos.raw"
# $out/efi-vars.fd: the EFI variables prepare copies and the VM's firmware writes.
EFI_VARS = "efi-vars.fd"
# The store in the image tree (paths relative to the root filesystem's root).
STORE_DIR = "nix/store"
STORE_PREFIX = STORE_DIR + "/"


def xchg_dir(build_dir: Path) -> Path:
    return build_dir / XCHG


def entry_to_json(entry: Entry) -> dict[str, Any]:
    data: dict[str, Any] = {"path": entry.path, "kind": entry.kind, "mode": entry.mode}
    if entry.uid or entry.gid:
        data["uid"], data["gid"] = entry.uid, entry.gid
    if entry.source is not None:
        data["source"] = entry.source
    if entry.data is not None:
        data["data"] = base64.b64encode(entry.data).decode()
    if entry.link is not None:
        data["link"] = entry.link
    if entry.device is not None:
        data["device"] = list(entry.device)
    if entry.size:
        data["size"] = entry.size
    if entry.mtime is not None:
        data["mtime"] = entry.mtime
    return data


def entry_from_json(data: dict[str, Any], base: Path | None = None) -> Entry:
    """`base`: relative sources are resolved against it (the record's xchg/)."""
    source = data.get("source")
    source_path = source
    if source is not None and base is not None and not source.startswith("/"):
        source_path = f"{base}/{source}"
    device = data.get("device")
    return Entry(
        path=data["path"],
        kind=cast(Kind, data["kind"]),
        mode=data["mode"],
        uid=data.get("uid", 0),
        gid=data.get("gid", 0),
        source=source_path,
        data=base64.b64decode(data["data"]) if "data" in data else None,
        link=data.get("link"),
        device=(device[0], device[1]) if device is not None else None,
        size=data.get("size", 0),
        mtime=data.get("mtime"),
    )


def _tree_row(entry: Entry, xchg_prefix: str) -> list[Any]:
    """An entry as a compact row; sources in xchg/ relative to it."""
    source = entry.source
    if source is not None and source.startswith(xchg_prefix):
        source = source[len(xchg_prefix):]
    return [entry.path, entry.kind, entry.mode, entry.uid, entry.gid, entry.size, source,
            entry.link, None if entry.data is None else base64.b64encode(entry.data).decode(),
            None if entry.device is None else list(entry.device), entry.mtime]


def _tree_entry(row: list[Any], base: Path) -> Entry:
    path, kind, mode, uid, gid, size, source, link, data, device, mtime = row
    return Entry(
        path=path, kind=kind, mode=mode, uid=uid, gid=gid,
        source=None if source is None else source if source[:1] == "/" else f"{base}/{source}",
        data=None if data is None else base64.b64decode(data),
        link=link, device=None if device is None else (device[0], device[1]),
        size=size, mtime=mtime,
    )


def write_tree(xchg: Path, entries: list[Entry], inputs: str) -> Path:
    """prepare's tree in order; `inputs` names what it was made from (staging.tree_inputs)."""
    prefix = str(xchg) + "/"
    path = xchg / TREE
    partial = path.with_name(path.name + ".partial")
    # dumps, not dump: only the one-shot encoder is the C one.
    partial.write_text(json.dumps({"version": VERSION, "inputs": inputs,
                                   "entries": [_tree_row(e, prefix) for e in entries]},
                                  separators=(",", ":")))
    partial.replace(path)
    return path


def read_tree(path: Path, inputs: str, *, step: str) -> list[Entry]:
    """prepare's tree, if it was made from the same `inputs` as finish's spec would."""
    data = _read(path, step, "prepare")
    if data["inputs"] != inputs:
        raise StepError(
            step,
            f"{path} was staged from another spec (its closureInfo, contents or another "
            "argument that makes the tree differs); run prepare and finish with the same spec",
        )
    base = path.parent
    return [_tree_entry(row, base) for row in data["entries"]]


def _read(path: Path, what: str, writer: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise StepError(
            what, f"{path} does not exist; run `make-disk-image {writer}` first"
        ) from exc
    except (OSError, ValueError) as exc:
        raise StepError(
            what, f"{path} cannot be read ({exc}); run `make-disk-image {writer}` again"
        ) from exc
    if not isinstance(data, dict) or data.get("version") != VERSION:
        raise StepError(
            what,
            f"{path} was written by another version of make-disk-image; run this version's "
            f"`make-disk-image {writer}`",
        )
    return data


def _write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps({"version": VERSION, **data}, indent=1) + "\n")
    partial.replace(path)


def write_handoff(xchg: Path, handoff: Handoff) -> Path:
    path = xchg / HANDOFF
    _write(
        path,
        {
            "plan": handoff.plan.to_json(),
            "root_uuid": handoff.root_uuid,
            "fat_volume_ids": {str(k): v for k, v in handoff.fat_volume_ids.items()},
            "guest_mounts": handoff.guest_mounts,
            "nix_db_files": handoff.nix_db_files,
            "outside_store": [entry_to_json(e) for e in handoff.outside_store],
            "store_names": list(handoff.store_names),
            "store_image_paths": list(handoff.store_image_paths),
            "prepared_until_ns": handoff.prepared_until_ns,
        },
    )
    return path


def read_handoff(path: Path, *, step: str) -> Handoff:
    data = _read(path, step, "prepare")
    base = path.parent
    return Handoff(
        plan=DiskPlan.from_json(data["plan"]),
        root_uuid=data["root_uuid"],
        fat_volume_ids={int(k): v for k, v in data["fat_volume_ids"].items()},
        guest_mounts=data["guest_mounts"],
        nix_db_files=dict(data["nix_db_files"]),
        outside_store=tuple(entry_from_json(e, base) for e in data["outside_store"]),
        store_names=tuple(data["store_names"]),
        store_image_paths=tuple(data["store_image_paths"]),
        prepared_until_ns=data["prepared_until_ns"],
    )


def write_record(xchg: Path, record: GuestRecord) -> Path:
    path = xchg / RECORD
    _write(
        path,
        {
            "mounted": record.mounted,
            "entries": [{**entry_to_json(e), "origin": o} for e, o in record.entries],
            "store_walked": list(record.store_walked),
            "seconds": record.seconds,
        },
    )
    return path


def read_record(path: Path, *, step: str) -> GuestRecord:
    data = _read(path, step, "guest")
    base = path.parent
    entries = []
    for item in data["entries"]:
        origin = cast(Origin, item["origin"])
        entries.append((entry_from_json(item, base if origin == "guest" else None), origin))
    return GuestRecord(
        mounted=data["mounted"],
        entries=tuple(entries),
        store_walked=tuple(data["store_walked"]),
        seconds=dict(data["seconds"]),
    )
