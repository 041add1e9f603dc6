"""Guest-phase pieces that need no VM: device links, chown, and the handoff contract.

The guest phase as a whole runs in a TCG VM in test_build.py and test_boot.py.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from make_disk_image.guest import chown_command, link_boot_devices
from make_disk_image.handoff import HANDOFF, read_handoff, write_handoff
from make_disk_image.layouts import plan_disk
from make_disk_image.models import MIB, Entry, Handoff
from make_disk_image.process import StepError
from make_disk_image.spec import parse_spec

BASE = {"toplevel": "/t", "closureInfo": "/c", "copyChannel": False}


def test_boot_device_links_point_at_the_build_disk(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    dev.mkdir()
    by_id = tmp_path / "dev/disk/by-id/virtio-root"
    limine = tmp_path / "dev/sdb"
    spec = parse_spec(
        {
            **BASE,
            "grubDevices": [str(by_id), "nodev", str(dev / "vda")],
            "limineBiosDevice": str(limine),
        }
    )
    link_boot_devices(spec, dev)
    assert by_id.is_symlink() and by_id.readlink() == dev / "vda"
    assert limine.is_symlink() and limine.readlink() == dev / "vda"
    assert not (dev / "vda").exists()  # the disk itself is not linked to itself
    assert not Path("nodev").exists()  # GRUB's "nodev" is no device


def test_the_handoff_round_trips(tmp_path: Path) -> None:
    spec = parse_spec({**BASE, "partitionTableType": "hybrid"})
    plan = plan_disk(spec, 1000 * MIB, None)
    handoff = Handoff(
        plan=plan, root_uuid="F222513B-DED1-49FA-B591-20CE86A2FE7F",
        fat_volume_ids={1: "1C06F03B"}, guest_mounts=True,
        nix_db_files={"db.sqlite": "nix-db/db.sqlite"},
        outside_store=(Entry("etc/NIXOS", "file", 0o644, data=b""),
                       Entry("nix/var/nix/db/db.sqlite", "file", 0o644,
                             source="nix-db/db.sqlite", size=3)),
        store_names=("aaaa-lib",),
    )  # fmt: skip
    loaded = read_handoff(write_handoff(tmp_path, handoff), step="test")
    # Sources prepare made in xchg/ resolve against the directory the reader sees.
    expected = replace(handoff, outside_store=(
        handoff.outside_store[0],
        replace(handoff.outside_store[1], source=f"{tmp_path}/nix-db/db.sqlite")))
    assert loaded == expected


def test_a_handoff_of_another_version_is_refused(tmp_path: Path) -> None:
    (tmp_path / HANDOFF).write_text(json.dumps({"version": 1}))
    with pytest.raises(StepError, match="another version of make-disk-image"):
        read_handoff(tmp_path / HANDOFF, step="guest")
    with pytest.raises(StepError, match="run `make-disk-image prepare` first"):
        read_handoff(tmp_path / "missing.json", step="guest")


def test_chown_is_the_image_systems_own(tmp_path: Path) -> None:
    """nixos-enter keeps the caller's PATH: the guest names the profile's chown."""
    sw = tmp_path / "nix/var/nix/profiles/system/sw/bin"
    assert chown_command("alice", "users", "/home/alice", tmp_path)[0] == "chown"
    sw.mkdir(parents=True)
    (sw / "chown").write_text("")
    argv = chown_command("alice", "users", "/home/alice", tmp_path)
    assert argv == ["/nix/var/nix/profiles/system/sw/bin/chown", "-R", "alice:users",
                    "/home/alice"]
