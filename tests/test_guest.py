"""Guest-phase pieces that need no VM: device links and the plan hand-off.

The guest phase as a whole runs in a TCG VM in test_build.py and test_boot.py.
"""

from __future__ import annotations

import json
from pathlib import Path

from make_disk_image.guest import link_boot_devices, load_handoff
from make_disk_image.layouts import plan_disk
from make_disk_image.models import MIB
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


def test_guest_reads_the_plan_prepare_left(tmp_path: Path) -> None:
    spec = parse_spec({**BASE, "partitionTableType": "hybrid"})
    plan = plan_disk(spec, 1000 * MIB, None)
    handoff = tmp_path / "make-disk-image.json"
    handoff.write_text(
        json.dumps({**plan.to_json(), "nix_db_files": {"db.sqlite": "nix-db/db.sqlite"}})
    )
    loaded = load_handoff(spec, handoff)
    assert loaded.plan == plan and loaded.from_prepare
    assert loaded.nix_db_files == {"db.sqlite": tmp_path / "nix-db/db.sqlite"}


def test_without_a_handoff_the_layout_still_gives_numbers_and_labels(tmp_path: Path) -> None:
    spec = parse_spec({**BASE, "partitionTableType": "efixbootldr", "label": "root"})
    loaded = load_handoff(spec, tmp_path / "missing.json")
    assert not loaded.from_prepare
    plan = loaded.plan
    assert plan.root_number == 3
    assert [(p.number, p.label, p.mountpoint) for p in plan.partitions] == [
        (1, "ESP", "/efi"),
        (2, "BOOT", "/boot"),
        (3, "root", "/"),
    ]
