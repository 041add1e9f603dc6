"""The root filesystem's tree, described once and written into the filesystem.

The reference copies the closure into a staging directory (nixos-install), measures it,
and copies it again into the image (cptofs). Here the tree is a list of entries that
point at their sources; the auto size is computed from the list and the same list is
written with explicit owners into the filesystem (ext4: filesystems/ext4_fill.py;
others: their tool, often through a tar stream). The closure is read once, written
once, and no step needs root.
"""

from __future__ import annotations

import glob
import hashlib
import os
import stat
from pathlib import Path

from make_disk_image.dedup import link_identical
from make_disk_image.filesystems import FILESYSTEMS
from make_disk_image.models import ROOT_MODE, Entry, Kind, Spec
from make_disk_image.process import StepError
from make_disk_image.sizing import TreeUsage

STEP = "staging"

# Nix's canonical store timestamp; everything in the image gets it (mke2fs also clamps
# to SOURCE_DATE_EPOCH when deterministic).
STORE_MTIME = 1
PROFILES = "nix/var/nix/profiles"
SYSTEM_FIX = (
    "the store and the Nix database are made from closureInfo, so choose a target "
    "outside /nix/store and /nix/var/nix"
)


class Tree:
    """An ordered map of image paths to entries; parents are created like `mkdir -p`."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {"": Entry("", "dir", ROOT_MODE)}
        # Which `contents` element placed a path ("contents[3]"), for messages, and what
        # is being added now: a contents element, or what the system needs (a store path,
        # the Nix database), which no contents element may take the place of.
        self.placed_by: dict[str, str] = {}
        self.adding: str | None = None
        self.adding_system = False

    def __contains__(self, path: str) -> bool:
        return path.strip("/") in self.entries

    def _claim(self, path: str, existing: Entry | None, new_kind: Kind) -> None:
        """Record who places `path`; refuse a system path that `contents` already took."""
        owner = self.placed_by.get(path)
        both_dirs = existing is not None and existing.kind == new_kind == "dir"
        if owner is not None and self.adding_system and existing is not None and not both_dirs:
            raise StepError(
                STEP,
                f"{owner}.target: /{path} is also where the image needs {self.adding}; "
                + SYSTEM_FIX,
            )
        if self.adding is not None and not self.adding_system:
            self.placed_by[path] = self.adding

    def mkdir_p(self, path: str, mode: int = 0o755) -> None:
        parts = [p for p in path.strip("/").split("/") if p]
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            existing = self.entries.get(sub)
            if existing is None:
                self._claim(sub, None, "dir")
                self.entries[sub] = Entry(sub, "dir", mode)
            elif existing.kind != "dir":
                owner = self.placed_by.get(sub)
                needed = f" for {self.adding}" if self.adding else ""
                raise StepError(
                    STEP,
                    f"{(owner + '.target: ') if owner else ''}/{sub} is a {existing.kind}, "
                    f"but /{path.strip('/')} needs it to be a directory{needed}; "
                    + (SYSTEM_FIX if self.adding_system else "change one of the targets"),
                )

    def add(self, entry: Entry) -> None:
        parent = entry.path.rsplit("/", 1)[0] if "/" in entry.path else ""
        known = self.entries.get(parent)
        # Most entries go into the directory added just before them: no walk up.
        if known is None or known.kind != "dir":
            self.mkdir_p(parent)
        self._claim(entry.path, self.entries.get(entry.path), entry.kind)
        self.entries[entry.path] = entry

    def add_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self.add(Entry(path.strip("/"), "file", mode, data=data, size=len(data)))

    def add_symlink(self, path: str, target: str) -> None:
        self.add(Entry(path.strip("/"), "symlink", 0o777, link=target, size=len(target.encode())))

    def add_host(
        self, source: str | os.PathLike[str], dest: str, chmod: int | None = None,
        owner: tuple[int, int] = (0, 0),
    ) -> None:
        """Copy a host file system object like `rsync -a --no-o --no-g [--chmod]`.

        Symlinks stay symlinks; owners become `owner` (root unless numeric ids were
        given; names are resolved by the guest against the image's own users).
        """
        source = os.fspath(source)
        dest = dest.strip("/")
        try:
            st = os.lstat(source)
        except OSError as exc:
            raise self._unreadable(source, exc) from exc
        uid, gid = owner
        mode = chmod if chmod is not None else stat.S_IMODE(st.st_mode)
        if stat.S_ISDIR(st.st_mode):
            self._merge_dir(source, dest, st, chmod, owner)
        elif stat.S_ISLNK(st.st_mode):
            link = os.readlink(source)
            self.add(Entry(dest, "symlink", 0o777, uid, gid, link=link, size=len(link.encode())))
        elif stat.S_ISREG(st.st_mode):
            # Checked now, not when mke2fs is half-way through the image (r--r--r--, as
            # the store's files have, lets any user read: no access call needed).
            if st.st_mode & 0o444 != 0o444 and not os.access(source, os.R_OK):
                raise self._unreadable(source, PermissionError(13, "Permission denied"))
            self.add(Entry(dest, "file", mode, uid, gid, source=source, size=st.st_size))
        elif stat.S_ISFIFO(st.st_mode):
            self.add(Entry(dest, "fifo", mode, uid, gid))
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            kind: Kind = "chardev" if stat.S_ISCHR(st.st_mode) else "blockdev"
            device = (os.major(st.st_rdev), os.minor(st.st_rdev))
            self.add(Entry(dest, kind, mode, uid, gid, device=device))
        else:
            raise StepError(
                STEP,
                f"{self._where()}{source} is a socket: a disk image cannot hold one (tar and "
                "mke2fs -d have no socket type); remove it from the source, the program "
                "that uses it creates it at run time",
            )

    def _where(self) -> str:
        return f"{self.adding}.source: " if self.adding and not self.adding_system else ""

    def _unreadable(self, source: str, exc: OSError) -> StepError:
        return StepError(
            STEP,
            f"{self._where()}cannot read {source}: {exc.strerror}; make it readable by the "
            "build user (or remove it from the image)",
        )

    def _merge_dir(
        self, source: str, dest: str, st: os.stat_result, chmod: int | None, owner: tuple[int, int]
    ) -> None:
        mode = chmod if chmod is not None else stat.S_IMODE(st.st_mode)
        entry = Entry(dest, "dir", mode, *owner)
        if dest in self.entries and self.entries[dest].kind == "dir":
            if dest:
                self.entries[dest] = entry
        else:
            self.add(entry)
        try:
            with os.scandir(source) as it:
                children = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise self._unreadable(source, exc) from exc
        for child in children:
            self.add_host(
                child.path, f"{dest}/{child.name}" if dest else child.name, chmod, owner
            )

    def usage(self) -> TreeUsage:
        # A hard link's bytes are its first name's: counted once (`deduplicate`).
        files = sum(TreeUsage.blocks_for(e.size) for e in self.entries.values()
                    if e.kind not in ("dir", "hardlink"))
        return TreeUsage(file_blocks=files, inodes=len(self.entries))

    def ordered(self) -> list[Entry]:
        # Parents before children, siblings by name: stable bytes for the same inputs.
        return [self.entries[k] for k in sorted(self.entries, key=lambda p: p.split("/"))]


def read_store_paths(closure_info: Path) -> list[str]:
    try:
        lines = (closure_info / "store-paths").read_text().split()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise StepError(
            STEP,
            f"closureInfo: {closure_info} has no readable store-paths "
            f"file ({reason}); pass the output of pkgs.closureInfo",
        ) from exc
    for line in lines:
        if not line.startswith("/") or ".." in line.split("/"):
            raise StepError(
                STEP,
                f"closureInfo: {closure_info}/store-paths lists {line!r}, which is not an "
                "absolute store path; pass the output of pkgs.closureInfo",
            )
    return sorted(set(lines))


def _missing(path: str) -> str:
    if os.path.islink(path):
        return f"{path} is a symlink that leads nowhere (dangling, or a loop)"
    return f"{path} does not exist"


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
        ("efiFirmware", spec.efiFirmware if spec.touchEFIVars else None),
        ("efiVariables", spec.efiVariables if spec.touchEFIVars else None),
    ):
        if value is not None and not os.path.exists(value):
            raise StepError(STEP, f"{key}: {_missing(value)}")
    if not os.path.isdir(spec.closureInfo):
        raise StepError(
            STEP, f"closureInfo: {_missing(spec.closureInfo)} as a directory; pass the "
            "output of pkgs.closureInfo"
        )
    for path in read_store_paths(Path(spec.closureInfo)):
        if not os.path.lexists(path):
            raise StepError(
                STEP,
                f"closureInfo: lists {path}, which is not in the store; build the closure "
                "(nix-store --realise) or pass the closureInfo of this system",
            )


def stage_contents(spec: Spec, tree: Tree) -> None:
    """`contents`, with the reference's rsync semantics."""
    for i, entry in enumerate(spec.contents):
        chmod = int(entry.mode, 8) if entry.mode else None
        owner = entry.numeric_owner or (0, 0)
        target = entry.image_path
        tree.adding = f"contents[{i}]"
        if entry.is_glob:
            # Globs land *inside* the target directory, each match under its own name.
            tree.mkdir_p(target)
            for match in sorted(glob.glob(entry.source)):
                name = os.path.basename(match.rstrip("/"))
                tree.add_host(match, f"{target}/{name}" if target else name, chmod, owner)
            continue
        if target in tree:
            raise StepError(
                STEP,
                f"contents[{i}].target: duplicate entry {entry.target} -> {entry.source}"
                + ("" if target else " (the image's root is there already)"),
            )
        # A directory source is copied *to* the target, not inside it (rsync's source/).
        tree.add_host(entry.source, target, chmod, owner)
    tree.adding = None


def tree_inputs(spec: Spec) -> str:
    """A digest of what build_tree reads from the spec: finish takes prepare's tree only
    when its own spec would make the same one."""
    inputs = (spec.closureInfo, spec.onlyNixStore, spec.contents, spec.deduplicate,
              spec.toplevel, spec.copyChannel, spec.channelSources, spec.configFile)
    return hashlib.sha256(repr(inputs).encode()).hexdigest()


def store_image_paths(spec: Spec) -> tuple[str, ...]:
    """The store paths a store image's tool reads itself, its row having
    `reads_store_paths`; () where the image is made from the staged tree.

    Only for an image that is exactly the store paths (onlyNixStore), without
    `deduplicate` (its links are the tree's), without "minimal" (it measures the tree),
    and with every store path a directory or a file (a tool follows a symlink given as a
    source). Then prepare does not walk the closure and finish reads no tree back.
    """
    if not spec.onlyNixStore or spec.deduplicate or spec.diskSizeMinimal:
        return ()
    if not FILESYSTEMS[spec.fsType].reads_store_paths:
        return ()
    paths = read_store_paths(Path(spec.closureInfo))
    for path in paths:
        mode = os.lstat(path).st_mode
        if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
            return ()
    return tuple(paths)


def build_tree(spec: Spec, db_files: dict[str, Path]) -> Tree:
    """The whole root filesystem as the reference's nixos-install + cptofs leave it."""
    tree = Tree()
    store_paths = read_store_paths(Path(spec.closureInfo))
    if spec.onlyNixStore:
        # The reference copies only the store's contents to the filesystem root.
        for path in store_paths:
            tree.add_host(path, os.path.basename(path))
        if spec.deduplicate:
            link_identical(tree.entries, [os.path.basename(p) for p in store_paths])
        return tree

    stage_contents(spec, tree)
    # What nixos-install makes after the reference copied `contents`: a contents element
    # in its place would be lost or break it, so that is an error naming the element.
    tree.adding_system = True
    for path in store_paths:
        tree.adding = f"the store path {path}"
        tree.add_host(path, path.lstrip("/"))
    if spec.deduplicate:
        link_identical(tree.entries, [p.lstrip("/") for p in store_paths])
    tree.adding = "the Nix database"
    for name, source in sorted(db_files.items()):
        tree.add_host(str(source), f"nix/var/nix/db/{name}")
    tree.adding = "the system profile"
    tree.mkdir_p("nix/var/nix/gcroots")
    tree.add_symlink(f"{PROFILES}/system-1-link", spec.toplevel)
    tree.add_symlink(f"{PROFILES}/system", "system-1-link")
    if spec.copyChannel and spec.channelSources:
        tree.adding = "the root user's channel"
        channels = f"{PROFILES}/per-user/root/channels"
        tree.add_symlink(f"{channels}-1-link", spec.channelSources)
        tree.add_symlink(channels, "channels-1-link")
        tree.mkdir_p("root")
        tree.mkdir_p("root/.nix-defexpr", mode=0o700)
        tree.add_symlink("root/.nix-defexpr/channels", "/" + channels)
    tree.adding, tree.adding_system = None, False
    # Marks a NixOS installation; switch-to-configuration refuses to run without it.
    tree.add_file("etc/NIXOS", b"")
    tree.mkdir_p("etc/nixos")
    if spec.configFile is not None:
        tree.add_file("etc/nixos/configuration.nix", Path(spec.configFile).read_bytes(), 0o444)
    return tree
