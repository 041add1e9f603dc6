"""What goes into each partition's filesystem, as the entry list the makers stream.

nixpkgs turns `storePaths` (their closure) and `contents` into `CopyFiles=` lines
(amend-repart-definitions.py); here they are read directly: the closure's store paths
under `nixStorePrefix`, each `contents` source at its target, then the definition's own
`CopyFiles=` and `MakeDirectories=`. A directory's contents go to the target (repart's
CopyFiles copies a directory's children). Owners are root's. The root partition that
holds the store at /nix/store also gets the Nix database (nixpkgs #508743).
"""

from __future__ import annotations

import os
from pathlib import Path

from make_disk_image.models import Entry
from make_disk_image.repart.definitions import Definition
from make_disk_image.repart.spec import PartitionInput
from make_disk_image.staging import PROFILES, Tree, read_store_paths

STEP = "repart contents"


def takes_nix_database(definition: Definition, partition: PartitionInput) -> bool:
    return (partition.closure_info is not None and definition.type.family == "root"
            and partition.nix_store_prefix.rstrip("/") == "/nix/store")


def entries(definition: Definition, partition: PartitionInput,
            db_files: dict[str, Path] | None, system: str | None = None) -> list[Entry]:
    """`system`: the toplevel whose boot loader will be installed, for the root
    partition: the system profile and /etc/NIXOS, which switch-to-configuration needs."""
    tree = Tree()
    if partition.closure_info is not None:
        prefix = partition.nix_store_prefix.strip("/")
        for path in read_store_paths(Path(partition.closure_info)):
            tree.adding = f"image.repart.partitions.{definition.name}.storePaths ({path})"
            name = os.path.basename(path)
            tree.add_host(str(path), f"{prefix}/{name}" if prefix else name)
    for target, source in sorted(partition.contents.items()):
        tree.adding = f"image.repart.partitions.{definition.name}.contents.\"{target}\""
        # A contents source is often a store symlink: its target is what is meant.
        tree.add_host(os.path.realpath(source), target)
    for copy in definition.copy_files:
        tree.adding = f"image.repart.partitions.{definition.name}.repartConfig.CopyFiles"
        tree.add_host(str(copy.source), copy.target)
    tree.adding = None
    for directory in definition.make_directories:
        tree.mkdir_p(directory)
    if db_files:
        for name, db_file in sorted(db_files.items()):
            tree.add_host(str(db_file), f"nix/var/nix/db/{name}")
    if system is not None:
        tree.add_symlink(f"{PROFILES}/system-1-link", system)
        tree.add_symlink(f"{PROFILES}/system", "system-1-link")
        tree.add_file("etc/NIXOS", b"")
        tree.mkdir_p("etc/nixos")
    return tree.ordered()
