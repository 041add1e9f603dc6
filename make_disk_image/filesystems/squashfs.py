"""squashfs, read-only: a store image (onlyNixStore), every file owned by root, every
time fixed when deterministic. mksquashfs reads the store paths themselves when the
tree is only them; otherwise the engine's tar stream (`-tar`). Neither copies the tree."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from make_disk_image import process
from make_disk_image.filesystems import Filesystem
from make_disk_image.filesystems.scratch import FIXED_TIME, store_image
from make_disk_image.models import FS_BLOCK, MIB, ROOT_MODE, DiskPlan, Entry
from make_disk_image.tarstream import run_fed

# mksquashfs' caches and queues: by default a quarter of the host's memory, which they
# fill (912 MiB peak on a 2 GB closure on a 24 GiB host). 128M gave the same bytes at
# 162 MiB, no slower (squashfs-tools 4.5.1, 2 processors, lz4).
SQUASHFS_MEMORY = "128M"


def compression_args(compression: str | None) -> list[str]:
    """mksquashfs' options: `-comp NAME`, or every table left uncompressed for "none"."""
    if compression is None:
        return []
    if compression == "none":
        return ["-noI", "-noD", "-noF", "-noX"]
    return ["-comp", compression]


def make_squashfs(dest: Path, sources: Sequence[str | Path], *, root_mode: int, deterministic: bool,
                  step: str, keep_as_directory: bool = False, links: bool = True,
                  compression: str | None = None,
                  streamed: Sequence[Entry] | None = None) -> None:
    """mksquashfs of `sources`, each placed at the image's root under its own name.

    `links` false: files the sources hard-link are stored as separate files (the store
    itself is read: its links are the builder's, e.g. `nix-store --optimise`'s).
    `streamed`: the tree as the engine's tar stream on stdin instead (`-tar`, with its
    hard links: `deduplicate`'s), no copy of it; `sources` is then empty.
    """
    inputs: list[str | Path] = ["-"] if streamed is not None else [*sources]
    args: list[str | Path] = ["mksquashfs", *inputs, dest, "-noappend", "-all-root",
                              "-no-xattrs", "-no-progress", "-quiet",
                              "-root-mode", f"{root_mode:o}",
                              "-processors", str(os.cpu_count() or 1),
                              "-mem", SQUASHFS_MEMORY, *compression_args(compression)]
    if keep_as_directory:
        # One source directory would otherwise become the root itself.
        args.append("-keep-as-directory")
    if not links:
        args.append("-no-hardlinks")
    # SOURCE_DATE_EPOCH, not -mkfs-time/-all-time: a Nix build sets it already, and
    # mksquashfs refuses both at once. It is the creation time, and every later file
    # time is clamped to it.
    env = {"SOURCE_DATE_EPOCH": str(FIXED_TIME)} if deterministic else {}
    if streamed is not None:
        run_fed([*args, "-tar"], streamed, step=step, env=env)
        return
    process.run(args, step=step, env=env)


def top_sources(entries: Sequence[Entry]) -> list[str] | None:
    """The host paths the root's children were copied from whole (a store image:
    onlyNixStore), found from their files' sources; None when the tree needs
    materializing (a child with no file whose source names it, or a file whose source
    does not end in its own path below the child). String operations: 60k entries
    through pathlib took half a second."""
    found: dict[str, str] = {}
    if any(e.kind == "hardlink" for e in entries):
        return None  # `deduplicate`'s links are the tree's, not the store's
    for entry in entries:
        if entry.kind != "file" or entry.source is None or not entry.path:
            continue
        top, _, rest = entry.path.partition("/")
        origin = entry.source
        if rest:
            if not origin.endswith("/" + rest):
                return None
            origin = origin[:-len(rest) - 1]
        if os.path.basename(origin) != top or found.setdefault(top, origin) != origin:
            return None
    tops = [e.path for e in entries if e.path and "/" not in e.path]
    if any(top not in found for top in tops):
        return None
    return [found[top] for top in tops]


def write_squashfs(target: Path, entries: Sequence[Entry], *, deterministic: bool, step: str,
                   compression: str | None) -> None:
    """squashfs of `entries` as `target`, for the main path and repart: straight from the
    store paths when the tree is only those (their hard links, the builder's, not kept),
    anything else (`deduplicate`'s hard links, other files) through the tar stream; never
    a copy."""
    direct = top_sources(entries)
    root_mode = entries[0].mode
    if direct is not None:
        make_squashfs(target, direct, root_mode=root_mode, deterministic=deterministic,
                      step=step, keep_as_directory=len(direct) == 1, links=False,
                      compression=compression)
        return
    make_squashfs(target, [], root_mode=root_mode, deterministic=deterministic, step=step,
                  compression=compression, streamed=entries)


@dataclass(frozen=True)
class Squashfs(Filesystem):
    def make(self, target: Path, plan: DiskPlan, entries: Sequence[Entry], *,
             uuid: str | None, deterministic: bool, checksums: bool, step: str) -> None:
        store_image(target, plan, fs_type=self.name, step=step,
                    write=lambda: write_squashfs(target, entries, deterministic=deterministic,
                                                 step=step, compression=plan.compression))

    def make_from_store(self, target: Path, plan: DiskPlan, store_paths: Sequence[str], *,
                        uuid: str | None, deterministic: bool, step: str) -> None:
        # The same mksquashfs run write_squashfs makes when top_sources finds the tree
        # is only these store paths, so the same bytes.
        store_image(target, plan, fs_type=self.name, step=step,
                    write=lambda: make_squashfs(
                        target, store_paths, root_mode=ROOT_MODE, deterministic=deterministic,
                        step=step, keep_as_directory=len(store_paths) == 1, links=False,
                        compression=plan.compression))


FILESYSTEMS = (
    Squashfs("squashfs", "mksquashfs", "bit-identical", bytes_per_entry=2 * FS_BLOCK,
             data_per_mille=1052, fixed=MIB, reads_store_paths=True,
             compressor_help=(("mksquashfs", "-help"), "compressors available")),
)
