"""storeview: the store paths a directory-reading tool sees in place, and where a copy
stays (other owners, hard links, extended attributes, a refused namespace)."""

from __future__ import annotations

import logging
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from make_disk_image.filesystems.erofs import erofs_command
from make_disk_image.filesystems.storeview import (
    plan_view,
    run_viewed,
    store_roots,
    viewable,
)
from make_disk_image.models import Entry
from make_disk_image.process import StepError
from make_disk_image.staging import Tree

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a store owned by its user")


def store_path(store: Path, name: str, files: dict[str, bytes]) -> Path:
    top = store / name
    for rel, data in files.items():
        (top / rel).parent.mkdir(parents=True, exist_ok=True)
        (top / rel).write_bytes(data)
    (top / "bin").mkdir(exist_ok=True)
    (top / "bin" / "link").symlink_to("../" + next(iter(files)))
    for path in [top, *top.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o555 if path.is_dir() else 0o444)
        os.utime(path, (1, 1), follow_symlinks=False)  # the store's time
    return top


def staged(store: Path, names: list[str]) -> list[Entry]:
    tree = Tree()
    tree.add_file("etc/hostname", b"image\n")
    for name in names:
        tree.add_host(store / name, f"nix/store/{name}")
    return tree.ordered()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Path]:
    store = tmp_path / "store"
    store_path(store, "aaaa-plain", {"share/a b$\n": b"one\n", "lib/x": b"x" * 9000})
    store_path(store, "bbbb-other-owner", {"share/f": b"two\n"})
    os.lchown(store / "bbbb-other-owner/share/f", 1234, 100)
    store_path(store, "cccc-linked", {"share/f": b"three\n", "share/g": b"four\n"})
    (store / "cccc-linked/share").chmod(0o755)
    (store / "cccc-linked/share/g").unlink()
    os.link(store / "cccc-linked/share/f", store / "cccc-linked/share/g")
    os.utime(store / "cccc-linked/share", (1, 1))
    (store / "cccc-linked/share").chmod(0o555)
    store_path(store, "dddd-xattr", {"share/f": b"five\n"})
    try:
        os.setxattr(store / "dddd-xattr/share/f", "user.note", b"kept by btrfs")
    except OSError:  # the temporary directory takes no user xattrs
        for directory, _, _ in os.walk(store / "dddd-xattr"):
            os.chmod(directory, 0o755)
        shutil.rmtree(store / "dddd-xattr")
    yield store
    for directory, _, _ in os.walk(store):
        os.chmod(directory, 0o755)


def test_binds_what_the_tool_would_read_alike_and_says_why_not(
        store: Path, caplog: pytest.LogCaptureFixture) -> None:
    names = sorted(p.name for p in store.iterdir())
    with caplog.at_level(logging.INFO):
        plan = plan_view(staged(store, names), copies_owners=True, step="t")
    kept, pairs = plan.kept, plan.pairs
    assert plan.unbound == len(names) - 1
    assert pairs == [(store / "aaaa-plain", "nix/store/aaaa-plain")]
    # The bound store path is its mount point only; the others are copied whole.
    assert "nix/store/aaaa-plain" in {e.path for e in kept}
    assert not any(e.path.startswith("nix/store/aaaa-plain/") for e in kept)
    assert "nix/store/cccc-linked/share/g" in {e.path for e in kept}
    assert "store paths not bound" in caplog.text
    assert "belongs to 1234:100, not to the build user" in caplog.text
    if (store / "dddd-xattr").exists():
        top = "nix/store/dddd-xattr"
        _, why = viewable(top, store_roots(staged(store, ["dddd-xattr"]))[top],
                          copies_owners=True)
        assert why.endswith("dddd-xattr/share/f has extended attributes")
    # mkfs.erofs --all-root -x -1 reads neither owners nor extended attributes.
    pairs = plan_view(staged(store, names), copies_owners=False, step="t").pairs
    assert [rel for _, rel in pairs] == [f"nix/store/{n}" for n in names
                                         if n != "cccc-linked"]


def test_a_changed_entry_is_copied(store: Path) -> None:
    entries = staged(store, ["aaaa-plain"])
    changed = [Entry(e.path, e.kind, 0o644, source=e.source, size=e.size)
               if e.path.endswith("lib/x") else e for e in entries]
    assert plan_view(changed, copies_owners=True, step="t").pairs == []
    fewer = [e for e in entries if not e.path.endswith("lib/x")]
    assert plan_view(fewer, copies_owners=True, step="t").pairs == []


def erofs(entries: list[Entry], dest: Path, tmp: Path) -> bytes:
    args = erofs_command(dest, uuid="f222513b-ded1-49fa-b591-20ce86a2fe7f",
                         deterministic=True, compression=None)
    run_viewed(entries, tmp, copies_owners=False, step="t", fs_type="erofs",
               command=lambda tree: [*args, tree])
    return dest.read_bytes()


def test_erofs_of_the_view_is_the_copys_image(store: Path, tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    names = sorted(p.name for p in store.iterdir())
    entries = staged(store, names)
    with caplog.at_level(logging.INFO):
        viewed = erofs(entries, tmp_path / "viewed.img", tmp_path)
    assert f"{len(names) - 1} store paths checked and bound" in caplog.text
    # Every store path copied: a file with its bytes given is never bound.
    copied_entries = [Entry(e.path, e.kind, e.mode, e.uid, e.gid, None,
                            Path(e.source).read_bytes(), e.link, e.device, e.size, e.mtime)
                      if e.source else e for e in entries]
    caplog.clear()
    with caplog.at_level(logging.INFO):
        copied = erofs(copied_entries, tmp_path / "copied.img", tmp_path)
    assert "0 store paths checked and bound" in caplog.text
    assert viewed == copied


# How unshare fails where the namespace is refused: no unprivileged (or, in a Nix
# sandbox, nested) user namespaces, seccomp or an LSM; user.max_user_namespaces reached.
UNSHARE_FAILURES = ["Operation not permitted", "No space left on device"]


def fake_unshare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                 failure: str = UNSHARE_FAILURES[0]) -> None:
    """An unshare that fails as a kernel refusing the user namespace does."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "unshare"
    script.write_text(f"#!/bin/sh\necho 'unshare: unshare failed: {failure}' >&2\nexit 1\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


@pytest.mark.parametrize("failure", UNSHARE_FAILURES)
def test_a_refused_namespace_copies_instead(store: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture,
                                            failure: str) -> None:
    entries = staged(store, ["aaaa-plain"])
    expected = erofs(entries, tmp_path / "viewed.img", tmp_path)
    fake_unshare(tmp_path, monkeypatch, failure)
    with caplog.at_level(logging.INFO):
        again = erofs(entries, tmp_path / "fallback.img", tmp_path)
    assert f"the store view was refused (unshare: unshare failed: {failure})" in caplog.text
    assert "0 store paths checked and bound" in caplog.text
    assert again == expected


@pytest.mark.parametrize("failure", UNSHARE_FAILURES)
def test_btrfs_without_user_namespaces_says_so(store: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture,
                                               failure: str) -> None:
    """At once (no copy made first to run under the same refused unshare), and not
    mistaken for a full filesystem ("No space left")."""
    from make_disk_image.filesystems.btrfs import make_btrfs

    scratch = tmp_path / "root.btrfs"
    with scratch.open("wb") as fh:
        fh.truncate(256 << 20)
    fake_unshare(tmp_path, monkeypatch, failure)
    with caplog.at_level(logging.INFO), pytest.raises(
            StepError, match=rf"cannot make a user namespace \(unshare: unshare failed: "
                             rf"{failure}\), which fsType btrfs needs without root"):
        make_btrfs(scratch, staged(store, ["aaaa-plain"]), label="nixos", uuid=None, step="t")
    assert "copied instead" not in caplog.text


def test_a_store_images_store_paths_are_at_its_root(store: Path) -> None:
    tree = Tree()
    tree.add_host(store / "aaaa-plain", "aaaa-plain")
    tree.add_host(store / "cccc-linked", "cccc-linked")
    pairs = plan_view(tree.ordered(), copies_owners=False, step="t").pairs
    assert pairs == [(store / "aaaa-plain", "aaaa-plain")]


def test_deduplicated_links_keep_their_store_paths_copied(store: Path) -> None:
    entries = staged(store, ["aaaa-plain"])
    link = Entry("etc/same", "hardlink", 0o444, link="nix/store/aaaa-plain/lib/x")
    plan = plan_view([*entries, link], copies_owners=True, step="t")
    assert plan.pairs == [] and plan.unbound == 1
    assert len(plan.kept) == len(entries) + 1


def test_btrfs_of_the_view_too_large_for_the_root_names_disksize(store: Path,
                                                                   tmp_path: Path) -> None:
    """mkfs.btrfs grows its file instead of failing, btrfs_write plans its data before
    writing any: the tree ends in the "too small" error, and the disk is left as it was."""
    from make_disk_image.filesystems import FILESYSTEMS
    from make_disk_image.models import MIB, DiskPlan

    store_path(store, "eeee-big", {"share/big": b"\x5a" * (200 * MIB)})
    entries = staged(store, ["aaaa-plain", "eeee-big"])
    assert plan_view(entries, copies_owners=True, step="t").pairs  # bound, not copied
    target = tmp_path / "disk.raw"
    with target.open("wb") as fh:
        fh.truncate(170 * MIB)
    plan = DiskPlan("efi", "gpt", 170 * MIB, "diskSize", None, 0, None, None, (), 1, MIB,
                    160 * MIB, "btrfs", "nixos", None)
    with pytest.raises(StepError, match=r"root filesystem \(160 MiB\) is too small for the "
                       r"closure and contents \((mkfs.btrfs|btrfs_write) .*needed .*\d+ MiB"
                       r".*\); raise diskSize"):
        FILESYSTEMS["btrfs"].make(target, plan, entries, uuid=None, deterministic=True,
                                  checksums=False, step="t")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("disk")) == [
        "disk.raw"]
    assert target.stat().st_size == 170 * MIB and target.stat().st_blocks == 0


def test_btrfs_refuses_an_owner_other_than_root_before_any_work(store: Path,
                                                                 tmp_path: Path) -> None:
    """An entry the guest gave another owner cannot be made unprivileged: named, with
    the fix, before the tree is viewed or copied."""
    from make_disk_image.filesystems.btrfs import make_btrfs

    entries = [*staged(store, ["aaaa-plain"]),
               Entry("home/alice", "dir", 0o700, uid=1000, gid=100)]
    with pytest.raises(StepError, match=r"/home/alice is owned by 1000:100, but fsType btrfs "
                       r"is made in a user namespace .* or use fsType ext4 or xfs"):
        make_btrfs(tmp_path / "root.btrfs", entries, label="nixos", uuid=None, step="t")
    assert list(tmp_path.iterdir()) == [tmp_path / "store"]


def test_instead_of_a_copy_the_stream(store: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """With `instead` (mkfs.erofs >= 1.7's tar stream), no store path is ever copied:
    an unbound one, or a refused namespace, runs it rather than the tool on a copy."""
    calls: list[str] = []

    def run(names: list[str]) -> None:
        run_viewed(staged(store, names), tmp_path, copies_owners=True, step="t",
                   fs_type="erofs", command=lambda tree: ["true", tree],
                   instead=lambda: calls.append("stream"))

    run(["aaaa-plain"])
    assert calls == []  # bound: the tool read the view
    run(["aaaa-plain", "bbbb-other-owner"])
    assert calls == ["stream"]
    fake_unshare(tmp_path, monkeypatch)
    run(["aaaa-plain"])
    assert calls == ["stream", "stream"]


def test_erofs_of_the_view_is_the_tar_streams_image(store: Path, tmp_path: Path) -> None:
    """erofs-utils >= 1.7 reads both: the view and the engine's tar stream give the same
    bytes (with 1.8.6: 2.5x faster from the view on a 2 GB closure)."""
    from make_disk_image.filesystems.erofs import takes_tar
    from make_disk_image.tarstream import run_fed

    if not takes_tar():
        pytest.skip("this mkfs.erofs (erofs-utils < 1.7) reads no tar stream")
    entries = staged(store, sorted(p.name for p in store.iterdir()))
    viewed = erofs(entries, tmp_path / "viewed.img", tmp_path)
    streamed = tmp_path / "streamed.img"
    run_fed([*erofs_command(streamed, uuid="f222513b-ded1-49fa-b591-20ce86a2fe7f",
                            deterministic=True, compression=None), "--tar=f"],
            entries, step="t")
    assert streamed.read_bytes() == viewed
