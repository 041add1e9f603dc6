"""prepare, finish and plan as the unprivileged build user, checked with the real tools.

Where the guest has nothing to do (no bootloader, owners as numbers), Nix runs prepare
and then finish; those images are checked here. prepare's disk for the build VM is
checked on its own, and the full flow with a VM in test_build.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import Closure, Engine, EngineRun, base_spec
from imagecheck import cat, dumpe2fs, e2fsck_clean, ls, sfdisk_json, stat

from make_disk_image.models import MIB

LAYOUT_TABLES = {
    "legacy": ("dos", ["83"]),
    "legacy+boot": ("dos", ["c", "83"]),
    "legacy+gpt": ("gpt", ["21686148-6449-6E6F-744E-656564454649",
                           "0FC63DAF-8483-4772-8E79-3D69D8477DE4"]),
    "efi": ("gpt", ["C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
                    "0FC63DAF-8483-4772-8E79-3D69D8477DE4"]),
    "efixbootldr": ("gpt", ["C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
                            "BC13C2FF-59E6-4262-A352-B275FD6F7172",
                            "0FC63DAF-8483-4772-8E79-3D69D8477DE4"]),
    "hybrid": ("gpt", ["C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
                       "21686148-6449-6E6F-744E-656564454649",
                       "0FC63DAF-8483-4772-8E79-3D69D8477DE4"]),
    "none": (None, []),
}
ROOT_GUID = "F222513B-DED1-49FA-B591-20CE86A2FE7F"


def handoff(build_dir: Path) -> dict:  # type: ignore[type-arg]
    data = json.loads((build_dir / "xchg/make-disk-image.json").read_text())
    return data["plan"]  # type: ignore[no-any-return]


def image_of(result: EngineRun) -> Path:
    return result.out / "nixos.img"


@pytest.fixture
def contents_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import world_readable_dir

    src = world_readable_dir("mdi-contents-")
    (src / "conf").mkdir()
    (src / "conf/app.toml").write_text("key = 1\n")
    (src / "conf/app.toml").chmod(0o644)
    (src / "conf").chmod(0o755)
    (src / "secret").write_text("s3cret\n")
    (src / "secret").chmod(0o644)
    return src


@pytest.mark.parametrize("ptt", list(LAYOUT_TABLES))
def test_prepare_every_layout(closure: Closure, engine: Engine, contents_src: Path,
                              ptt: str) -> None:
    spec = base_spec(
        closure, partitionTableType=ptt, additionalSpace="16M",
        contents=[{"source": str(contents_src / "conf"), "target": "/etc/app"},
                  {"source": str(contents_src / "secret"), "target": "/var/lib/secret",
                   "mode": "0600", "user": "0", "group": "0"}],
        installBootLoader=False,
        **({"fsType": "ext4"} if ptt == "none" else {}),
    )
    result = engine.build_without_vm(spec, name=ptt)
    assert result.returncode == 0, result.stderr
    image = image_of(result)
    plan = handoff(result.build_dir)
    assert image.stat().st_size == plan["disk_size"]
    assert plan["auto"]["disk_image_size"] == plan["disk_size"]
    label, types = LAYOUT_TABLES[ptt]
    if label is None:
        assert subprocess.run(["sfdisk", "--json", str(image)], capture_output=True).returncode
    else:
        table = sfdisk_json(image)
        assert table["label"] == label
        assert [p["type"] for p in table["partitions"]] == types
        root = table["partitions"][plan["root_number"] - 1]
        assert root["start"] * 512 == plan["root_offset"]
        assert root["size"] * 512 == plan["root_size"]
        if label == "gpt":
            assert table["id"] == "97FD5997-F390-0B4A-A3F8-D106C1723AEA"
            assert root["uuid"] == ROOT_GUID
        else:
            assert table["id"] == "0xf222513b"
    offset = plan["root_offset"]
    fsck = e2fsck_clean(image, offset)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    sb = dumpe2fs(image, offset)
    assert sb["Filesystem volume name"] == "nixos"
    assert sb["Filesystem UUID"] == ROOT_GUID.lower()
    assert int(sb["Block count"]) == plan["root_size"] // 4096
    # The system, its closure and the Nix database
    assert cat(image, offset, "/etc/NIXOS") == ""
    system_link = stat(image, offset, "/nix/var/nix/profiles/system-1-link")
    assert system_link is not None and system_link.mode & 0o170000 == 0o120000
    for path in (closure.toplevel, closure.app, closure.lib, closure.channel):
        inode = stat(image, offset, path)
        assert inode is not None, path
        assert (inode.uid, inode.gid) == (0, 0)
    hello = stat(image, offset, f"{closure.app}/bin/hello")
    assert hello is not None and hello.mode == 0o100555
    assert stat(image, offset, closure.extra) is None  # not in the closure
    assert "db.sqlite" in ls(image, offset, "/nix/var/nix/db")
    # contents: modes and numeric owners (names are resolved by the guest)
    secret = stat(image, offset, "/var/lib/secret")
    assert secret is not None and (secret.mode, secret.uid) == (0o100600, 0)
    toml = stat(image, offset, "/etc/app/app.toml")
    assert toml is not None and toml.mode == 0o100644
    assert cat(image, offset, "/etc/app/app.toml") == "key = 1\n"
    # the channel, as nixos-install makes it
    channels = stat(image, offset, "/root/.nix-defexpr/channels")
    assert channels is not None and channels.mode & 0o170000 == 0o120000
    # metadata checksums in the image (prepare's disk for the VM has none)
    assert "metadata_csum" in sb["Filesystem features"]
    # sparse: allocated about what the filesystem uses
    assert image.stat().st_blocks * 512 < image.stat().st_size // 2
    # $out holds the image and Hydra's products file, nothing else
    assert sorted(p.name for p in result.out.iterdir()) == ["nix-support", "nixos.img"]


def test_files_in_image_are_readable_and_db_lists_the_closure(
        closure: Closure, engine: Engine, tmp_path: Path) -> None:
    result = engine.build_without_vm(base_spec(closure, partitionTableType="legacy",
                                               additionalPaths=[closure.extra],
                                               installBootLoader=False))
    assert result.returncode == 0, result.stderr
    image, offset = image_of(result), handoff(result.build_dir)["root_offset"]
    assert cat(image, offset, f"{closure.extra}/EXTRA") == "extra path\n"
    db = tmp_path / "db.sqlite"
    db.write_bytes(subprocess.run(["debugfs", "-R", "cat /nix/var/nix/db/db.sqlite",
                                   f"{image}?offset={offset}"], check=True,
                                  capture_output=True).stdout)
    import sqlite3

    conn = sqlite3.connect(db)
    paths = {row[0] for row in conn.execute("SELECT path FROM ValidPaths")}
    times = {row[0] for row in conn.execute("SELECT registrationTime FROM ValidPaths")}
    conn.close()
    assert {closure.toplevel, closure.channel, closure.extra, closure.lib} <= paths
    assert times == {1}


def test_deterministic_builds_are_identical(closure: Closure, engine: Engine,
                                            contents_src: Path) -> None:
    spec = base_spec(closure, partitionTableType="legacy+gpt", additionalSpace="8M",
                     installBootLoader=False,
                     contents=[{"source": str(contents_src / "conf"), "target": "/etc/app"}])
    first = engine.build_without_vm(spec, name="det-a")
    # A second staging copy of the contents with other timestamps must not matter.
    os.utime(contents_src / "conf/app.toml", (12345, 12345))
    second = engine.build_without_vm(spec, name="det-b")
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert image_of(first).read_bytes() == image_of(second).read_bytes()


def test_not_deterministic_differs(closure: Closure, engine: Engine) -> None:
    spec = base_spec(closure, partitionTableType="efi", deterministic=False, rootFSUID=None,
                     additionalSpace="8M", installBootLoader=False)
    runs = [engine.build_without_vm(spec, name=f"nondet-{i}") for i in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr
    uuids = {dumpe2fs(image_of(r), handoff(r.build_dir)["root_offset"])
             ["Filesystem UUID"] for r in runs}
    assert len(uuids) == 2


def test_fixed_disk_size(closure: Closure, engine: Engine) -> None:
    result = engine.run("prepare", base_spec(closure, partitionTableType="efi", diskSize=400))
    assert result.returncode == 0, result.stderr
    assert (result.build_dir / "nixos.raw").stat().st_size == 400 * MIB
    assert handoff(result.build_dir)["size_source"] == "diskSize"


def test_only_nix_store(closure: Closure, engine: Engine) -> None:
    spec = base_spec(closure, partitionTableType="none", onlyNixStore=True,
                     installBootLoader=False, copyChannel=False, additionalSpace="4M")
    result = engine.build_without_vm(spec)
    assert result.returncode == 0, result.stderr
    image = image_of(result)
    names = set(ls(image, 0, "/"))
    assert os.path.basename(closure.toplevel) in names
    assert "nix" not in names and "etc" not in names
    assert dumpe2fs(image, 0)["Filesystem volume name"] == "nix-store"


def test_config_file_and_no_channel(closure: Closure, engine: Engine, tmp_path: Path) -> None:
    from conftest import world_readable_dir

    cfg = world_readable_dir("mdi-cfg-") / "configuration.nix"
    cfg.write_text("{ ... }: { }\n")
    cfg.chmod(0o644)
    result = engine.build_without_vm(base_spec(closure, configFile=str(cfg), copyChannel=False,
                                               installBootLoader=False))
    assert result.returncode == 0, result.stderr
    image, offset = image_of(result), handoff(result.build_dir)["root_offset"]
    assert cat(image, offset, "/etc/nixos/configuration.nix") == "{ ... }: { }\n"
    assert stat(image, offset, "/root/.nix-defexpr/channels") is None
    assert stat(image, offset, closure.channel) is None


def test_disk_too_small_fails_cleanly(closure: Closure, engine: Engine) -> None:
    result = engine.run("prepare", base_spec(closure, partitionTableType="efi", diskSize=200))
    assert result.returncode == 1
    assert "diskSize 200 MiB is too small" in result.stderr
    assert not (result.build_dir / "nixos.raw").exists()
    assert not (result.build_dir / "nixos.raw.partial").exists()


def test_root_filesystem_too_small_names_the_fix(closure: Closure, engine: Engine,
                                                 tmp_path: Path) -> None:
    from conftest import world_readable_dir

    big = world_readable_dir("mdi-big-")
    (big / "blob").write_bytes(os.urandom(3 * MIB))
    (big / "blob").chmod(0o644)
    spec = base_spec(closure, partitionTableType="legacy", diskSize=3,
                     contents=[{"source": str(big / "blob"), "target": "/blob"}])
    result = engine.run("prepare", spec)
    assert result.returncode == 1
    assert "root filesystem" in result.stderr and "raise diskSize" in result.stderr
    assert list(result.build_dir.glob("nixos.raw*")) == []


def test_bad_spec_fails_before_work(closure: Closure, engine: Engine) -> None:
    result = engine.run("prepare", base_spec(closure, partitionTableType="gpt"))
    assert result.returncode == 2
    assert "argument `partitionTableType`" in result.stderr
    assert list(result.build_dir.iterdir()) == []


def test_missing_content_source_fails_before_work(closure: Closure, engine: Engine) -> None:
    result = engine.run("prepare", base_spec(
        closure, contents=[{"source": "/nonexistent/file", "target": "/x"}]))
    assert result.returncode == 1
    assert "contents[0].source: /nonexistent/file does not exist" in result.stderr
    assert list(result.build_dir.iterdir()) == []


def test_touch_efi_vars_copies_the_variable_store(closure: Closure, engine: Engine) -> None:
    spec = base_spec(closure, partitionTableType="efi", touchEFIVars=True,
                     efiFirmware="/usr/share/OVMF/OVMF_CODE_4M.fd",
                     efiVariables="/usr/share/OVMF/OVMF_VARS_4M.fd")
    result = engine.run("prepare", spec)
    assert result.returncode == 0, result.stderr
    efi_vars = result.out / "efi-vars.fd"
    assert efi_vars.read_bytes() == Path("/usr/share/OVMF/OVMF_VARS_4M.fd").read_bytes()
    assert efi_vars.stat().st_mode & 0o777 == 0o644


def test_plan_writes_nothing(closure: Closure, engine: Engine) -> None:
    result = engine.run("plan", base_spec(closure, partitionTableType="hybrid"))
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert [p["role"] for p in plan["partitions"]] == ["esp", "bios_grub", "root"]
    # bios_grub ends where nixpkgs' parted (3.6+) ends "1024KiB" (layouts.py).
    assert [(p["start"], p["end"]) for p in plan["partitions"][:2]] == [(16384, 526335),
                                                                         (34, 2047)]
    assert plan["auto"]["additional_space"] == 512 * MIB + 34 * 512 + 257 * MIB
    assert plan["root_partition_device"] == "/dev/vda3"
    assert list(result.build_dir.iterdir()) == [] and not result.out.exists()


@pytest.mark.parametrize(("ptt", "additional", "grows"), [
    # parted falls back to the last usable sector: a 1 MiB root, enough here
    ("efi", "1.3K", False), ("hybrid", "1.3K", False),
    # parted cannot end "100%" at all on this 3 MiB GPT disk: the engine grows it
    ("legacy+gpt", "0", True),
])
def test_auto_size_always_holds_the_filesystem(closure: Closure, engine: Engine, ptt: str,
                                               additional: str, grows: bool) -> None:
    result = engine.build_without_vm(base_spec(closure, partitionTableType=ptt,
                                               additionalSpace=additional,
                                               installBootLoader=False), name=ptt)
    assert result.returncode == 0, result.stderr
    plan = handoff(result.build_dir)
    auto = plan["auto"]
    assert (auto["alignment_growth"] >= MIB) is grows
    assert plan["disk_size"] == auto["disk_image_size"]
    assert plan["root_size"] >= auto["filesystem_size_needed"]
    fsck = e2fsck_clean(image_of(result), plan["root_offset"])
    assert fsck.returncode == 0, fsck.stdout


def test_prepare_makes_the_build_vms_disk(closure: Closure, engine: Engine,
                                          contents_src: Path) -> None:
    """With work for the guest, prepare's disk holds what the guest mounts: the FAT
    partitions, empty, and the root filesystem with every inode at prepare's time."""
    spec = base_spec(closure, partitionTableType="efixbootldr", additionalSpace="16M",
                     contents=[{"source": str(contents_src / "secret"), "target": "/etc/s",
                                "user": "alice", "group": "users"}])
    result = engine.run("prepare", spec, name="vm-disk")
    assert result.returncode == 0, result.stderr
    image, plan = result.build_dir / "nixos.raw", handoff(result.build_dir)
    data = json.loads((result.build_dir / "xchg/make-disk-image.json").read_text())
    assert data["guest_mounts"] is True
    assert data["fat_volume_ids"] == {"1": "1C06F03B", "2": "970C694F"}
    # The guest compares against prepare's entries outside the store, by name.
    outside = {e["path"] for e in data["outside_store"]}
    assert "etc/s" in outside and not any(p.startswith("nix/store/") for p in outside)
    assert os.path.basename(closure.toplevel) in data["store_names"]
    for part in plan["partitions"][:2]:
        listing = subprocess.run(
            ["mdir", "-i", f"{image}@@{part['start'] * 512}", "::/"], capture_output=True,
            text=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
        assert listing.returncode == 0 and "No files" in listing.stdout, listing.stderr
    offset = plan["root_offset"]
    assert e2fsck_clean(image, offset).returncode == 0
    assert "metadata_csum" not in dumpe2fs(image, offset)["Filesystem features"]
    # Each store path is only its mount point, with prepare's times: the guest binds the
    # shared store over it, and the closure's bytes are written once, by finish.
    def debugfs(request: str) -> str:
        return subprocess.run(["debugfs", "-R", request, f"{image}?offset={offset}"],
                              capture_output=True, text=True, check=True).stdout
    inode = debugfs(f"stat {closure.toplevel}")
    assert "Type: directory" in inode
    assert "mtime: 0x00000001" in inode and "ctime: 0x00000000" in inode
    listing = debugfs(f"ls -p {closure.toplevel}").split()
    assert sorted(line.split("/")[5] for line in listing) == [".", ".."], listing
    assert "File not found" in subprocess.run(
        ["debugfs", "-R", f"stat {closure.toplevel}/init", f"{image}?offset={offset}"],
        capture_output=True, text=True).stderr
    # finish refuses to go on without the guest's record.
    finished = engine.run("finish", spec, build_dir=result.build_dir, out=result.out)
    assert finished.returncode == 1 and "the guest phase did not run" in finished.stderr
    assert not (result.out / "nixos.img").exists()
