"""`make-disk-image build`: all phases, the guest phase in a TCG VM, checked with real tools.

The system is testsys' NixOS-shaped test system (real store paths, an activation that
writes /etc/passwd, busybox inside the image) so that the guest's nixos-enter + chown
resolve user names against the image as on NixOS. That images with an installed
bootloader boot is covered by test_boot.py; here, that deterministic builds which mount
the root filesystem (bootloader, owners by name) are bit-identical, and that the guest
only installs, chowns and records: finish makes every filesystem on the host.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from imagecheck import cat, dumpe2fs, e2fsck_clean, run, sfdisk_json, stat

from testsys.build import BuildError, BuiltImage, build_image
from testsys.system import BootLoader, TestSystem, boot_loader_for, build_test_system

pytestmark = pytest.mark.vm

ROOT_GUID = "F222513B-DED1-49FA-B591-20CE86A2FE7F"


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("build")


@pytest.fixture(scope="module")
def system(work: Path) -> TestSystem:
    return build_test_system(work / "system", BootLoader())


@pytest.fixture(scope="module")
def payload(work: Path) -> Path:
    src = work / "payload"
    (src / "data").mkdir(parents=True)
    (src / "data/notes.txt").write_text("notes\n")
    (src / "key").write_text("k\n")
    return src


def spec_for(system: TestSystem, payload: Path, **kw: Any) -> dict[str, Any]:
    return system.spec(
        installBootLoader=False, additionalSpace="16M",
        contents=[
            {"source": str(payload / "data"), "target": "/home/alice/data", "mode": "750",
             "user": "alice", "group": "users"},
            {"source": str(payload / "key"), "target": "/etc/bob.key", "mode": "0400",
             "user": "bob", "group": "bob"},
            {"source": str(payload / "key"), "target": "/etc/plain.key"},
        ],
        **kw,
    )


def guest_lines(log: str) -> list[str]:
    """The commands the guest ran (its steps are named "guest: ...")."""
    return [line for line in log.splitlines() if "[guest" in line and "] $ " in line]


def assert_guest_made_no_filesystem(log: str) -> None:
    commands = guest_lines(log)
    assert commands, "no guest commands in the log"
    for line in commands:
        for tool in ("mke2fs", "mkfs", "mcopy", "mmd", "tune2fs", "blkdiscard"):
            assert tool not in line, line
    # The record covers what lies outside the store, not the closure: no store path
    # was entered (prepare's ctime 0 and mtime 1 s mark every store path's top untouched).
    assert "guest: record changes:" in log
    assert "0 store paths entered" in log
    assert any("[finish: root filesystem] $ " in line and " mke2fs " in line
               for line in log.splitlines())


def assert_sparse(image: Path, table: dict[str, Any]) -> None:
    """The image allocates what its root filesystem uses, plus at most its FAT partitions
    and 2 MiB of tables and boot code: not its whole size (the guest zeroes nothing)."""
    root = table["partitions"][-1]
    sb = dumpe2fs(image, root["start"] * 512)
    used = (int(sb["Block count"]) - int(sb["Free blocks"])) * 4096
    fat_sizes = sum(p["size"] * 512 for p in table["partitions"][:-1]
                    if p["type"] in ("c", "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
                                     "BC13C2FF-59E6-4262-A352-B275FD6F7172"))
    allocated = image.stat().st_blocks * 512
    assert allocated <= used + fat_sizes + 2 * 1024 * 1024, (allocated, used, fat_sizes)


def extract(image: Path, start_sector: int, sectors: int, dest: Path) -> Path:
    with image.open("rb") as src, dest.open("wb") as out:
        src.seek(start_sector * 512)
        remaining = sectors * 512
        while remaining:
            chunk = src.read(min(remaining, 1 << 20))
            out.write(chunk)
            remaining -= len(chunk)
    return dest


@pytest.fixture(scope="module")
def efixbootldr(system: TestSystem, payload: Path, work: Path) -> Iterator[BuiltImage]:
    yield build_image(spec_for(system, payload, partitionTableType="efixbootldr",
                               postVM='echo "post $diskImage" > "$out/post-vm.txt"'),
                      work, name="efixbootldr")


def test_fat_partitions_are_made_in_the_guest(efixbootldr: BuiltImage, tmp_path: Path) -> None:
    table = sfdisk_json(efixbootldr.image)
    for number, label, volume_id in ((1, "ESP", "1C06-F03B"), (2, "BOOT", "970C-694F")):
        part = table["partitions"][number - 1]
        fat = extract(efixbootldr.image, part["start"], part["size"], tmp_path / f"{label}.fat")
        fsck = subprocess.run(["fsck.vfat", "-n", str(fat)], capture_output=True, text=True)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        listing = subprocess.run(["mdir", "-i", str(fat), "::"], capture_output=True,
                                 text=True, env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin"})
        assert f"Volume in drive : is {label}" in listing.stdout, listing.stderr
        blkid = run("blkid", "-o", "export", str(fat))
        assert f"LABEL={label}" in blkid and f"UUID={volume_id}" in blkid


def test_guest_chowns_contents_by_the_images_user_names(efixbootldr: BuiltImage) -> None:
    table = sfdisk_json(efixbootldr.image)
    offset = table["partitions"][2]["start"] * 512
    data = stat(efixbootldr.image, offset, "/home/alice/data")
    notes = stat(efixbootldr.image, offset, "/home/alice/data/notes.txt")
    key = stat(efixbootldr.image, offset, "/etc/bob.key")
    plain = stat(efixbootldr.image, offset, "/etc/plain.key")
    assert data and notes and key and plain
    assert (data.uid, data.gid, data.mode & 0o7777) == (1000, 100, 0o750)
    assert (notes.uid, notes.gid, notes.mode & 0o7777) == (1000, 100, 0o750)
    assert (key.uid, key.gid, key.mode & 0o7777) == (1001, 1001, 0o400)
    assert (plain.uid, plain.gid) == (0, 0)


def test_root_filesystem_is_tuned_like_the_reference(efixbootldr: BuiltImage) -> None:
    table = sfdisk_json(efixbootldr.image)
    offset = table["partitions"][2]["start"] * 512
    assert e2fsck_clean(efixbootldr.image, offset).returncode == 0
    sb = dumpe2fs(efixbootldr.image, offset)
    assert sb["Filesystem UUID"] == ROOT_GUID.lower()
    assert sb["Maximum mount count"] == "-1"
    assert sb["Check interval"].startswith("0")
    assert sb["Last checked"] == "Thu Jan  1 00:00:00 1970"
    assert sb["Filesystem state"] == "clean"


def test_block_links_come_from_the_guests_sysfs(efixbootldr: BuiltImage) -> None:
    import re

    links = dict(re.findall(r"linked /dev/block/(\d+:\d+) -> /dev/(vda\d*)", efixbootldr.log))
    assert sorted(links.values()) == ["vda", "vda1", "vda2", "vda3"]
    majors = {key.split(":")[0] for key in links}
    assert len(majors) == 1  # one disk, its partitions numbered after it
    assert sorted(int(key.split(":")[1]) for key in links) == [0, 1, 2, 3]


def test_post_vm_runs_with_disk_image(efixbootldr: BuiltImage) -> None:
    assert (efixbootldr.out / "post-vm.txt").read_text() == f"post {efixbootldr.image}\n"
    products = (efixbootldr.out / "nix-support/hydra-build-products").read_text()
    assert products == f"file raw-image {efixbootldr.image}\n"


def test_deterministic_builds_with_a_guest_phase_are_identical(
        system: TestSystem, payload: Path, work: Path) -> None:
    # FAT partitions made in the guest, numeric owners set while staging: the guest
    # never mounts the root filesystem, and the images match bit for bit.
    spec = system.spec(installBootLoader=False, additionalSpace="8M",
                       partitionTableType="legacy+boot", contents=[
                           {"source": str(payload / "data"), "target": "/srv/data",
                            "mode": "750", "user": "1000", "group": "100"}])
    first = build_image(spec, work, name="det-1")
    second = build_image(spec, work, name="det-2")
    assert first.image.read_bytes() == second.image.read_bytes()
    offset = sfdisk_json(first.image)["partitions"][1]["start"] * 512
    notes = stat(first.image, offset, "/srv/data/notes.txt")
    assert notes is not None and (notes.uid, notes.gid, notes.mode & 0o777) == (1000, 100, 0o750)


def test_guest_mounting_root_still_gives_identical_images(
        system: TestSystem, payload: Path, work: Path, efixbootldr: BuiltImage) -> None:
    # A chown by name mounts the root filesystem and both FAT partitions in the guest;
    # finish makes all three from prepare's tree and the guest's record, so a second
    # build matches bit for bit.
    assert_guest_made_no_filesystem(efixbootldr.log)
    again = build_image(efixbootldr.spec, work, name="efixbootldr-again")
    assert efixbootldr.image.read_bytes() == again.image.read_bytes()


@pytest.fixture(scope="module")
def loader_systems(work: Path) -> dict[str, TestSystem]:
    """Test systems with the boot loader of a layout: GRUB (legacy), systemd-boot (efi)."""
    return {layout: build_test_system(work / f"system-{layout}", boot_loader_for(layout))
            for layout in ("legacy", "efi", "hybrid")}


def loader_spec(system: TestSystem, payload: Path, layout: str, **kw: Any) -> dict[str, Any]:
    return system.spec(
        partitionTableType=layout, installBootLoader=True, additionalSpace="16M",
        contents=[
            {"source": str(payload / "data"), "target": "/home/alice/data", "mode": "750",
             "user": "alice", "group": "users"},
            {"source": str(payload / "key"), "target": "/etc/bob.key", "mode": "0400",
             "user": "bob", "group": "bob"},
        ],
        **kw,
    )


def check_chowned(image: Path, offset: int) -> None:
    notes = stat(image, offset, "/home/alice/data/notes.txt")
    key = stat(image, offset, "/etc/bob.key")
    assert notes and key
    assert (notes.uid, notes.gid, notes.mode & 0o7777) == (1000, 100, 0o750)
    assert (key.uid, key.gid, key.mode & 0o7777) == (1001, 1001, 0o400)
    assert cat(image, offset, "/etc/bob.key") == "k\n"
    # Written by the activation in the guest, kept through the guest's record.
    assert "alice:x:1000:100:" in cat(image, offset, "/etc/passwd")


def mtools(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True,
                          env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin"}).stdout


@pytest.mark.parametrize("layout", ["legacy", "efi", "hybrid"])
def test_deterministic_builds_with_bootloader_and_chown_are_identical(
        loader_systems: dict[str, TestSystem], payload: Path, work: Path, tmp_path: Path,
        layout: str) -> None:
    system = loader_systems[layout]
    spec = loader_spec(system, payload, layout)
    first = build_image(spec, work, name=f"loader-{layout}-1")
    second = build_image(spec, work, name=f"loader-{layout}-2")
    assert_guest_made_no_filesystem(first.log)
    assert first.image.read_bytes() == second.image.read_bytes()
    table = sfdisk_json(first.image)
    assert_sparse(first.image, table)
    root = table["partitions"][-1]
    offset = root["start"] * 512
    fsck = e2fsck_clean(first.image, offset)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    check_chowned(first.image, offset)
    store_file = system.toplevel / "nixos-version"
    assert cat(first.image, offset, str(store_file)) == store_file.read_text()
    sb = dumpe2fs(first.image, offset)
    assert sb["Filesystem UUID"] == ROOT_GUID.lower()
    assert sb["Last checked"] == "Thu Jan  1 00:00:00 1970"
    if layout in ("legacy", "hybrid"):
        # GRUB's boot.img in the MBR: the boot code outside any filesystem is kept.
        assert b"GRUB" in first.image.read_bytes()[:512]
    if layout == "legacy":
        # core.img in the gap, GRUB's files on the root filesystem.
        grub_cfg = cat(first.image, offset, "/boot/grub/grub.cfg")
        assert f"init={system.toplevel}/init" in grub_cfg
        assert stat(first.image, offset, "/boot/grub/i386-pc/core.img") is not None
    if layout in ("efi", "hybrid"):
        esp = table["partitions"][0]
        fat = extract(first.image, esp["start"], esp["size"], tmp_path / "esp.fat")
        fsck = subprocess.run(["fsck.vfat", "-n", str(fat)], capture_output=True, text=True)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        files = mtools("mdir", "-b", "-/", "-i", str(fat), "::/").split()
        assert "::/EFI/systemd/systemd-bootx64.efi" in files
        assert "::/EFI/BOOT/BOOTX64.EFI" in files
        if layout == "hybrid":
            assert "::/grub/grub.cfg" in files
        loader_conf = mtools("mtype", "-i", str(fat), "::/loader/loader.conf")
        assert "default nixos-generation-1.conf" in loader_conf
        entry = mtools("mtype", "-i", str(fat), "::/loader/entries/nixos-generation-1.conf")
        assert f"init={system.toplevel}/init" in entry
        assert "1980-01-01" in mtools("mdir", "-i", str(fat), "::/loader")


def test_non_deterministic_build_takes_the_same_path(
        loader_systems: dict[str, TestSystem], payload: Path, work: Path) -> None:
    spec = loader_spec(loader_systems["legacy"], payload, "legacy", deterministic=False)
    built = build_image(spec, work, name="loader-legacy-nondet")
    assert_guest_made_no_filesystem(built.log)
    offset = sfdisk_json(built.image)["partitions"][0]["start"] * 512
    fsck = e2fsck_clean(built.image, offset)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    check_chowned(built.image, offset)
    assert "init=" in cat(built.image, offset, "/boot/grub/grub.cfg")


def test_guest_failure_names_the_step_and_leaves_no_output(
        system: TestSystem, payload: Path, work: Path) -> None:
    spec = system.spec(installBootLoader=False, additionalSpace="8M", contents=[
        {"source": str(payload / "key"), "target": "/etc/k", "user": "nosuchuser",
         "group": "nogroup"}])
    with pytest.raises(BuildError) as err:
        build_image(spec, work, name="broken")
    assert "guest: chown /etc/k" in str(err.value)
    assert "sw/bin/chown -R nosuchuser:nogroup /etc/k" in str(err.value)
    assert not (work / "broken").exists()
