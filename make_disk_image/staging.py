"""The root filesystem's tree, described once and streamed into mke2fs as tar.

The reference copies the closure into a staging directory (nixos-install), measures it,
and copies it again into the image (cptofs). Here the tree is a list of entries that
point at their sources; the auto size is computed from the list and the same list is
streamed as a tar archive with explicit owners into `mke2fs -d -`. The closure is read
once, written once, and no step needs root.
"""

from __future__ import annotations

import glob
import os
import stat
from pathlib import Path

from make_disk_image.models import Entry, Spec
from make_disk_image.process import StepError
from make_disk_image.sizing import TreeUsage

STEP = "staging"

# Nix's canonical store timestamp; everything in the image gets it (mke2fs also clamps
# to SOURCE_DATE_EPOCH when deterministic).
STORE_MTIME = 1
PROFILES = "nix/var/nix/profiles"


class Tree:
    """An ordered map of image paths to entries; parents are created like `mkdir -p`."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {"": Entry("", "dir", 0o755)}

    def __contains__(self, path: str) -> bool:
        return path.strip("/") in self.entries

    def mkdir_p(self, path: str, mode: int = 0o755) -> None:
        parts = [p for p in path.strip("/").split("/") if p]
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            existing = self.entries.get(sub)
            if existing is None:
                self.entries[sub] = Entry(sub, "dir", mode)
            elif existing.kind != "dir":
                raise StepError(
                    STEP, f"/{sub} is a {existing.kind} but /{path} needs it to be a directory"
                )

    def add(self, entry: Entry) -> None:
        parent = entry.path.rsplit("/", 1)[0] if "/" in entry.path else ""
        self.mkdir_p(parent)
        self.entries[entry.path] = entry

    def add_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self.add(Entry(path.strip("/"), "file", mode, data=data, size=len(data)))

    def add_symlink(self, path: str, target: str) -> None:
        self.add(Entry(path.strip("/"), "symlink", 0o777, link=target, size=len(target.encode())))

    def add_host(
        self, source: Path, dest: str, chmod: int | None = None, owner: tuple[int, int] = (0, 0)
    ) -> None:
        """Copy a host file system object like `rsync -a --no-o --no-g [--chmod]`.

        Symlinks stay symlinks; owners become `owner` (root unless numeric ids were
        given; names are resolved by the guest against the image's own users).
        """
        dest = dest.strip("/")
        st = os.lstat(source)
        uid, gid = owner
        if stat.S_ISDIR(st.st_mode):
            self._merge_dir(source, dest, st, chmod, owner)
        elif stat.S_ISLNK(st.st_mode):
            link = os.readlink(source)
            self.add(Entry(dest, "symlink", 0o777, uid, gid, link=link, size=len(link.encode())))
        elif stat.S_ISREG(st.st_mode):
            mode = chmod if chmod is not None else stat.S_IMODE(st.st_mode)
            self.add(Entry(dest, "file", mode, uid, gid, source=source, size=st.st_size))
        else:
            raise StepError(STEP, f"{source} is neither a file, a directory nor a symlink")

    def _merge_dir(
        self, source: Path, dest: str, st: os.stat_result, chmod: int | None, owner: tuple[int, int]
    ) -> None:
        mode = chmod if chmod is not None else stat.S_IMODE(st.st_mode)
        entry = Entry(dest, "dir", mode, *owner)
        if dest in self.entries and self.entries[dest].kind == "dir":
            if dest:
                self.entries[dest] = entry
        else:
            self.add(entry)
        with os.scandir(source) as it:
            children = sorted(it, key=lambda e: e.name)
        for child in children:
            self.add_host(
                Path(child.path), f"{dest}/{child.name}" if dest else child.name, chmod, owner
            )

    def usage(self) -> TreeUsage:
        files = sum(TreeUsage.blocks_for(e.size) for e in self.entries.values() if e.kind != "dir")
        return TreeUsage(file_blocks=files, inodes=len(self.entries))

    def ordered(self) -> list[Entry]:
        # Parents before children, siblings by name: stable bytes for the same inputs.
        return [self.entries[k] for k in sorted(self.entries, key=lambda p: p.split("/"))]


def read_store_paths(closure_info: Path) -> list[str]:
    try:
        lines = (closure_info / "store-paths").read_text().split()
    except OSError as exc:
        raise StepError(
            STEP,
            f"closureInfo {closure_info} has no readable store-paths "
            f"file ({exc}); pass the output of pkgs.closureInfo",
        ) from exc
    return sorted(set(lines))


def check_sources(spec: Spec) -> None:
    """Every contents source and store path must exist: checked before any slow work."""
    for i, entry in enumerate(spec.contents):
        if entry.is_glob:
            if not glob.glob(entry.source):
                raise StepError(STEP, f"contents[{i}].source: no file matches {entry.source}")
        elif not os.path.lexists(entry.source):
            raise StepError(STEP, f"contents[{i}].source: {entry.source} does not exist")
    for key, value in (
        ("configFile", spec.configFile),
        ("toplevel", spec.toplevel),
        ("channelSources", spec.channelSources if spec.copyChannel else None),
    ):
        if value is not None and not os.path.exists(value):
            raise StepError(STEP, f"{key}: {value} does not exist")
    for path in read_store_paths(Path(spec.closureInfo)):
        if not os.path.lexists(path):
            raise StepError(STEP, f"closureInfo lists {path}, which is not in the store")


def stage_contents(spec: Spec, tree: Tree) -> None:
    """`contents`, with the reference's rsync semantics."""
    for i, entry in enumerate(spec.contents):
        chmod = int(entry.mode, 8) if entry.mode else None
        owner = entry.numeric_owner or (0, 0)
        target = entry.target.strip("/")
        if entry.is_glob:
            # Globs land *inside* the target directory, each match under its own name.
            tree.mkdir_p(target)
            for match in sorted(glob.glob(entry.source)):
                name = os.path.basename(match.rstrip("/"))
                tree.add_host(Path(match), f"{target}/{name}" if target else name, chmod, owner)
            continue
        if target in tree:
            raise StepError(
                STEP, f"contents[{i}]: duplicate entry {entry.target} -> {entry.source}"
            )
        # A directory source is copied *to* the target, not inside it (rsync's source/).
        tree.add_host(Path(entry.source), target, chmod, owner)


def build_tree(spec: Spec, db_files: dict[str, Path]) -> Tree:
    """The whole root filesystem as the reference's nixos-install + cptofs leave it."""
    tree = Tree()
    store_paths = read_store_paths(Path(spec.closureInfo))
    if spec.onlyNixStore:
        # The reference copies only the store's contents to the filesystem root.
        for path in store_paths:
            tree.add_host(Path(path), os.path.basename(path))
        return tree

    stage_contents(spec, tree)
    for path in store_paths:
        tree.add_host(Path(path), path.lstrip("/"))
    for name, source in sorted(db_files.items()):
        tree.add_host(source, f"nix/var/nix/db/{name}")
    tree.mkdir_p("nix/var/nix/gcroots")
    tree.add_symlink(f"{PROFILES}/system-1-link", spec.toplevel)
    tree.add_symlink(f"{PROFILES}/system", "system-1-link")
    if spec.copyChannel and spec.channelSources:
        channels = f"{PROFILES}/per-user/root/channels"
        tree.add_symlink(f"{channels}-1-link", spec.channelSources)
        tree.add_symlink(channels, "channels-1-link")
        tree.mkdir_p("root")
        tree.mkdir_p("root/.nix-defexpr", mode=0o700)
        tree.add_symlink("root/.nix-defexpr/channels", "/" + channels)
    # Marks a NixOS installation; switch-to-configuration refuses to run without it.
    tree.add_file("etc/NIXOS", b"")
    tree.mkdir_p("etc/nixos")
    if spec.configFile is not None:
        tree.add_file("etc/nixos/configuration.nix", Path(spec.configFile).read_bytes(), 0o444)
    return tree
