"""The engine's input for `image.repart`: what the NixOS module writes as JSON.

Keys are the module's options (`image.repart.*`), plus what Nix computes: each partition's
closureInfo (from `storePaths`), the system's architecture, and the engine's `format`.
Errors name the option.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from make_disk_image.repart.types import ARCHITECTURES

COMPRESSIONS = {"zstd": ".zst", "xz": ".xz"}
FORMATS = ("raw", "qcow2", "qcow2-compressed", "qcow2-zstd", "vdi", "vpc", "vmdk", "vhdx")


class SpecError(ValueError):
    pass


@dataclass(frozen=True)
class PartitionInput:
    repart_config: Mapping[str, str | int | bool]
    contents: Mapping[str, str]  # target -> source
    closure_info: str | None  # the closure of `storePaths`
    nix_store_prefix: str = "/nix/store"


@dataclass(frozen=True)
class BootLoader:
    """installBootLoader: the system whose switch-to-configuration installs its boot
    loader into the built image (in a VM), and where its partitions are mounted."""

    toplevel: str
    mount_points: Mapping[str, str]  # definition name -> mount point ("/" is the root)
    grub_devices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Compression:
    enable: bool = False
    algorithm: str = "zstd"
    level: int = 3


@dataclass(frozen=True)
class RepartSpec:
    name: str
    image_file_basename: str
    architecture: str  # systemd's: x86-64, arm64
    partitions: Mapping[str, PartitionInput]
    seed: uuid.UUID | None = None
    split: bool = False
    sector_size: int = 512
    image_size: int | None = None
    compression: Compression = field(default_factory=Compression)
    mkfs_options: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    format: str = "raw"
    nix_database: bool = True
    boot_loader: BootLoader | None = None

    @property
    def root_partition(self) -> str | None:
        """The definition mounted at / when a boot loader is installed."""
        if self.boot_loader is None:
            return None
        return next((n for n, m in self.boot_loader.mount_points.items() if m == "/"), None)


def _partition(name: str, raw: Mapping[str, Any]) -> PartitionInput:
    where = f"image.repart.partitions.{name}"
    config = raw.get("repartConfig")
    if not isinstance(config, dict):
        raise SpecError(f"{where}.repartConfig: an attribute set of repart.d keys is needed")
    contents = {}
    for target, entry in (raw.get("contents") or {}).items():
        source = entry.get("source") if isinstance(entry, dict) else None
        if not isinstance(source, str):
            raise SpecError(f"{where}.contents.\"{target}\".source: a path is needed")
        if not target.startswith("/"):
            raise SpecError(f"{where}.contents.\"{target}\": targets are absolute paths")
        contents[target] = source
    prefix = raw.get("nixStorePrefix", "/nix/store")
    if raw.get("stripNixStorePrefix"):
        prefix = "/"
    if not isinstance(prefix, str) or not prefix.startswith("/"):
        raise SpecError(f"{where}.nixStorePrefix: an absolute path is needed, got {prefix!r}")
    return PartitionInput(config, contents, raw.get("closureInfo"), prefix)


def _boot_loader(raw: Mapping[str, Any] | None, partitions: Mapping[str, Any]) -> BootLoader | None:
    if not raw:
        return None
    where = "makeDiskImage.repart.installBootLoader"
    mounts = dict(raw.get("mountPoints") or {})
    for name, mount in mounts.items():
        if name not in partitions:
            raise SpecError(f"{where}.mountPoints.{name}: no such partition in "
                            "image.repart.partitions")
        if not str(mount).startswith("/"):
            raise SpecError(f"{where}.mountPoints.{name}: {mount!r} is not an absolute path")
    if "/" not in mounts.values():
        raise SpecError(f"{where}.mountPoints: name the partition mounted at /")
    if not isinstance(raw.get("toplevel"), str):
        raise SpecError(f"{where}.toplevel: the system's toplevel is needed")
    return BootLoader(raw["toplevel"], mounts, tuple(raw.get("grubDevices") or ()))


def from_json(data: Mapping[str, Any]) -> RepartSpec:
    arch = data.get("architecture", "x86-64")
    if arch not in ARCHITECTURES.values():
        raise SpecError(f"architecture: {arch!r}; images are built for "
                        + ", ".join(ARCHITECTURES.values()))
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise SpecError("image.repart.name: the image needs a name")
    seed = data.get("seed")
    try:
        seed_uuid = uuid.UUID(seed) if seed is not None else None
    except ValueError:
        raise SpecError(f"image.repart.seed: {seed!r} is not a UUID (or null)") from None
    comp = Compression(**(data.get("compression") or {}))
    if comp.enable and comp.algorithm not in COMPRESSIONS:
        raise SpecError(f"image.repart.compression.algorithm: {comp.algorithm!r}; use "
                        + " or ".join(COMPRESSIONS))
    fmt = data.get("format", "raw")
    if fmt not in FORMATS:
        raise SpecError(f"makeDiskImage.repart.format: {fmt!r}; use one of " + ", ".join(FORMATS))
    if comp.enable and fmt != "raw":
        raise SpecError("image.repart.compression.enable: compresses raw images only; "
                        "use a compressed format (qcow2-compressed) or format = \"raw\"")
    partitions = data.get("partitions") or {}
    if not partitions:
        raise SpecError("image.repart.partitions: define at least one partition")
    version = data.get("version")
    return RepartSpec(
        name=name,
        image_file_basename=data.get("imageFileBasename")
        or (f"{name}_{version}" if version else name),
        architecture=arch,
        partitions={n: _partition(n, p) for n, p in partitions.items()},
        seed=seed_uuid,
        split=bool(data.get("split", False)),
        sector_size=int(data.get("sectorSize") or 512),
        image_size=data.get("imageSize"),
        compression=comp,
        mkfs_options={k: tuple(" ".join(v).split()) for k, v in
                      (data.get("mkfsOptions") or {}).items()},
        format=fmt,
        nix_database=bool(data.get("nixDatabase", True)),
        boot_loader=_boot_loader(data.get("installBootLoader"), partitions),
    )


def load(path: Path) -> RepartSpec:
    return from_json(json.loads(path.read_text()))
