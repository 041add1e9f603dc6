"""The tree a directory-reading tool (mkfs.btrfs --rootdir, erofs-utils 1.5) reads, with
the store paths seen in place instead of copied.

Only the rest of the tree is materialized (small: /etc, the profile's links, the
database); each store path the builder's store holds exactly as the tree says is an
empty directory there, and the tool runs in a user namespace with its own mount
namespace (`unshare --map-root-user --mount`, what an unprivileged Nix build can make)
where this module's main binds the store path read-only over it (storebind, as the
guest does) and then becomes the tool. The bindings end with the tool's namespace.

"Exactly" is checked entry by entry against the host, since the tool records what it
reads: kind, permission bits, time, link target, one link per file (a hard-linked file,
from an optimised store, would become one inode with several names), and where the tool
copies owners and extended attributes (btrfs; mkfs.erofs runs with --all-root and -x -1)
the build user as owner (it is root in the namespace) and no extended attributes. A Nix
sandbox shows the store as the overflow uid, so there btrfs's store paths are copied as
before; the log says how many and why.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from make_disk_image import process
from make_disk_image.filesystems.scratch import FIXED_TIME, materialize, remove_tree
from make_disk_image.handoff import STORE_DIR, STORE_PREFIX
from make_disk_image.models import Entry
from make_disk_image.process import CommandError

logger = logging.getLogger("make_disk_image")

# The exit status of main when the namespace refuses a binding: the caller copies instead.
REFUSED = 75
_KIND = {"dir": stat.S_ISDIR, "file": stat.S_ISREG, "symlink": stat.S_ISLNK}


@dataclass(frozen=True)
class View:
    """A tree to hand the tool: `tree` (materialized) with `bindings` (host store path,
    its mount point in `tree`) laid over it by `prefix` (empty: no bindings)."""

    tree: Path
    bindings: tuple[tuple[Path, Path], ...]
    prefix: tuple[str, ...]


def store_roots(entries: Sequence[Entry]) -> dict[str, list[Entry]]:
    """The store paths that are directories, each with its entries (itself first): under
    /nix/store, or at the root of a store image (onlyNixStore), which has no /nix."""
    prefix = STORE_PREFIX if any(e.path == STORE_DIR for e in entries) else ""
    roots: dict[str, list[Entry]] = {}
    for entry in entries:
        if not entry.path or not entry.path.startswith(prefix):
            continue
        top = prefix + entry.path[len(prefix):].split("/", 1)[0]
        if entry.path == top:
            if entry.kind == "dir":
                roots[top] = [entry]
        elif top in roots:
            roots[top].append(entry)
    return roots


def _host_root(top: str, subtree: Sequence[Entry]) -> Path | None:
    """The host directory the store path was copied from, found from a file's source."""
    for entry in subtree:
        if entry.kind == "file" and entry.source is not None and entry.data is None:
            root = os.fspath(entry.source)
            for _ in range(entry.path.count("/") - top.count("/")):
                root = os.path.dirname(root)
            return Path(root) if root != "/" else None
    return None


def _differs(entry: Entry, host: str, st: os.stat_result,
             owner: tuple[int, int] | None) -> str | None:
    """Why `host` (`st`) is not what the tool would read for `entry` in a copy; None: it
    is. `owner`: the owner it must have, where the tool copies owners and xattrs."""
    is_kind = _KIND.get(entry.kind)
    if is_kind is None or not is_kind(st.st_mode):
        return f"{host} is not a {entry.kind}"
    mtime = FIXED_TIME if entry.mtime is None else entry.mtime
    if st.st_mtime_ns != mtime * 1_000_000_000:
        return f"{host} has another time"
    if entry.kind != "symlink" and stat.S_IMODE(st.st_mode) != entry.mode & 0o7777:
        return f"{host} has other permissions"
    if owner is not None and (st.st_uid, st.st_gid) != owner:
        return (f"{host} belongs to {st.st_uid}:{st.st_gid}, not to the build user "
                f"{owner[0]}:{owner[1]} (a Nix sandbox's overflow uid)")
    if entry.kind == "file" and (entry.data is not None or entry.source is None
                                 or os.fspath(entry.source) != host):
        return f"{host} is not the file's source"
    if entry.kind == "file" and st.st_nlink != 1:
        return f"{host} has {st.st_nlink} links (an optimised store)"
    if entry.kind == "symlink" and os.readlink(host) != entry.link:
        return f"{host} links elsewhere"
    if owner is not None and os.listxattr(host, follow_symlinks=False):
        return f"{host} has extended attributes"
    return None


def viewable(top: str, subtree: Sequence[Entry], *,
             copies_owners: bool) -> tuple[Path | None, str]:
    """The host directory the tool may read for the store path `top`, or None and why."""
    root = _host_root(top, subtree)
    if root is None:
        return None, "no file of it names its source"
    expected = {e.path[len(top):].lstrip("/"): e for e in subtree}
    owner = (os.geteuid(), os.getegid()) if copies_owners else None
    # Strings and scandir's entries, not Paths: this visits every file of the closure.
    top_dir = os.fspath(root)
    try:
        why = _differs(expected[""], top_dir, os.lstat(top_dir), owner)
        if why:
            return None, why
        found = 1
        pending = [(top_dir, "")]
        while pending:
            directory, rel_dir = pending.pop()
            with os.scandir(directory) as listing:
                for item in listing:
                    rel = f"{rel_dir}/{item.name}" if rel_dir else item.name
                    entry = expected.get(rel)
                    if entry is None:
                        return None, f"{item.path} is not in the tree"
                    why = _differs(entry, item.path, item.stat(follow_symlinks=False), owner)
                    if why:
                        return None, why
                    if entry.kind == "dir":
                        pending.append((item.path, rel))
                    found += 1
    except OSError as exc:
        return None, f"{exc.filename}: {exc.strerror}"
    if found != len(expected):
        return None, f"{root} lacks {len(expected) - found} of the tree's entries"
    return root, ""


@dataclass(frozen=True)
class ViewPlan:
    """The entries to materialize, the (host store path, tree path) pairs to bind, and
    how many store paths stay copied."""

    kept: list[Entry]
    pairs: list[tuple[Path, str]]
    unbound: int


def plan_view(entries: Sequence[Entry], *, copies_owners: bool, step: str) -> ViewPlan:
    """Which store paths of `entries` the tool may read in place."""
    roots = store_roots(entries)
    linked = {top for e in entries if e.kind == "hardlink"
              for top in _tops(roots, e.path, e.link or "")}
    skipped: set[str] = set()
    pairs: list[tuple[Path, str]] = []
    refused: list[str] = []
    for top, subtree in roots.items():
        if top in linked:
            refused.append(f"/{top}: `deduplicate` links into it")
            continue
        root, why = viewable(top, subtree, copies_owners=copies_owners)
        if root is None:
            refused.append(f"/{top}: {why}")
            continue
        pairs.append((root, top))
        skipped.update(e.path for e in subtree[1:])
    if refused:
        logger.info("[%s] %d store paths not bound (the first: %s)", step, len(refused),
                    refused[0])
    return ViewPlan([e for e in entries if e.path not in skipped], pairs, len(refused))


def _tops(roots: dict[str, list[Entry]], *paths: str) -> list[str]:
    """The store paths in `roots` that hold any of `paths` (at the root, or under
    /nix/store)."""
    found = ("/".join(p.split("/")[:depth]) for p in paths for depth in (1, 3))
    return [top for top in found if top in roots]


@contextlib.contextmanager
def viewed(plan: ViewPlan, parent: Path, *, step: str, fs_type: str) -> Iterator[View]:
    """The View `plan` gives, in a temporary directory in `parent`."""
    with tempfile.TemporaryDirectory(prefix=f"{fs_type}-root-", dir=parent) as tmp:
        tree = Path(tmp) / "root"
        try:
            materialize(plan.kept, tree, step=step, fs_type=fs_type)
            bindings = tuple((source, tree / rel) for source, rel in plan.pairs)
            listing = Path(tmp) / "bindings"
            listing.write_bytes(b"".join(bytes(s) + b"\0" + bytes(t) + b"\0"
                                         for s, t in bindings))
            prefix = ("unshare", "--map-root-user", "--mount", sys.executable, "-m",
                      __name__, str(listing), "--") if bindings else ()
            yield View(tree, bindings, prefix)
        finally:
            remove_tree(tree)


def run_viewed(entries: Sequence[Entry], parent: Path, *, copies_owners: bool, step: str,
               fs_type: str, command: Callable[[Path], Sequence[str | Path]],
               unbound_prefix: Sequence[str] = (),
               instead: Callable[[], None] | None = None) -> None:
    """Run `command(tree)` on the View of `entries` (`unbound_prefix` first when nothing
    is bound); where the namespace refuses the bindings, once more on a full copy.
    `instead`: what runs rather than copying any store path (mkfs.erofs >= 1.7's tar
    stream), where one cannot be bound or the namespace is refused."""
    started = time.monotonic()
    plan = plan_view(entries, copies_owners=copies_owners, step=step)
    if instead is not None and plan.unbound:
        logger.info("[%s] %s: not every store path can be bound; no copy", step, fs_type)
        instead()
        return
    full_copy = ViewPlan([*entries], [], len(store_roots(entries)))
    for attempt in (plan, full_copy):
        with viewed(attempt, parent, step=step, fs_type=fs_type) as view:
            logger.info("[%s] the tree for %s: %d store paths checked and bound, the rest "
                        "copied, in %.1f s", step, fs_type, len(view.bindings),
                        time.monotonic() - started)
            env = None
            if view.prefix:
                found = os.environ.get("PYTHONPATH")
                env = {"PYTHONPATH": package_path() + (os.pathsep + found if found else "")}
            try:
                process.run([*(view.prefix or unbound_prefix), *command(view.tree)],
                            step=step, env=env)
                return
            except CommandError as exc:
                # Where unshare itself failed, a copy run under unshare would fail alike.
                if (not view.bindings or not refused(exc)
                        or (unshare_failure(exc.stderr) and unbound_prefix[:1] == ("unshare",))):
                    raise
                reason = (exc.stderr.strip().splitlines() or ["no message"])[-1]
                if instead is not None:
                    logger.info("[%s] the store view was refused (%s): no copy", step, reason)
                    instead()
                    return
                logger.info("[%s] the store view was refused (%s): the store paths are "
                            "copied instead", step, reason)
                started = time.monotonic()


def refused(exc: CommandError) -> bool:
    """The namespace or its bindings were refused, not the tool's work."""
    return ((exc.returncode == REFUSED and "store view refused" in exc.stderr.lower())
            or unshare_failure(exc.stderr) is not None)


def unshare_failure(stderr: str) -> str | None:
    """util-linux unshare's own complaint, made before it runs the tool, or None. Its
    errno varies with what refuses the namespace: EPERM (seccomp, an LSM, a sandbox
    without nested user namespaces), ENOSPC (user.max_user_namespaces reached or 0),
    EINVAL; the tool never writes an "unshare: " line."""
    return next((line for line in stderr.splitlines() if line.startswith("unshare: ")), None)


def package_path() -> str:
    """PYTHONPATH for `python -m` of this module, wherever the engine runs from."""
    return str(Path(__file__).resolve().parents[2])


def main(argv: Sequence[str]) -> int:
    """In the tool's namespace: bind the listed pairs, then exec the tool."""
    from make_disk_image.process import StepError
    from make_disk_image.storebind import bind_read_only

    listing, command = argv[0], list(argv[2:])
    fields = Path(listing).read_bytes().split(b"\0")[:-1]
    pairs = [(Path(os.fsdecode(s)), Path(os.fsdecode(t)))
             for s, t in zip(fields[::2], fields[1::2], strict=True)]
    try:
        bind_read_only(pairs, step="store view")
    except StepError as exc:
        print(f"store view refused: {exc}", file=sys.stderr)
        return REFUSED
    os.execvp(command[0], command)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
