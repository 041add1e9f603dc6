"""What goes into a partition: store paths under nixStorePrefix, contents, CopyFiles,
MakeDirectories, the Nix database and the system profile."""

from __future__ import annotations

from pathlib import Path

from make_disk_image.repart import definitions, trees
from make_disk_image.repart.spec import PartitionInput


def test_entries(tmp_path: Path) -> None:
    store = tmp_path / "store"
    (store / "aaaa-pkg/bin").mkdir(parents=True)
    (store / "aaaa-pkg/bin/x").write_text("x")
    closure = tmp_path / "closure"
    closure.mkdir()
    (closure / "store-paths").write_text(f"{store}/aaaa-pkg\n")
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "motd").write_text("hi")
    link = tmp_path / "link"
    link.symlink_to(extra / "motd")
    d = definitions.parse("root", {"Type": "root", "Format": "ext4",
                                   "CopyFiles": f"{extra}:/etc/extra",
                                   "MakeDirectories": "/var/lib"}, "x86-64")
    partition = PartitionInput({"Type": "root"}, {"/etc/motd": str(link)}, str(closure))
    db = tmp_path / "db.sqlite"
    db.write_text("db")
    paths = {e.path: e for e in trees.entries(d, partition, {"db.sqlite": db},
                                                system="/nix/store/zzzz-system")}
    assert paths["nix/store/aaaa-pkg/bin/x"].source == str(store / "aaaa-pkg/bin/x")
    assert paths["etc/motd"].kind == "file"  # a symlink source is followed
    assert paths["etc/extra/motd"].kind == "file"
    assert paths["var/lib"].kind == "dir"
    assert paths["nix/var/nix/db/db.sqlite"].source == str(db)
    assert paths["nix/var/nix/profiles/system-1-link"].link == "/nix/store/zzzz-system"
    assert "etc/NIXOS" in paths
    assert trees.takes_nix_database(d, partition)
    strip = PartitionInput({"Type": "root"}, {}, str(closure), "/")
    assert "aaaa-pkg/bin/x" in {e.path for e in trees.entries(d, strip, None)}
    assert not trees.takes_nix_database(d, strip)
