"""The Nix layer, built for real: nix-build of default.nix and the flake against the
offline nixpkgs stand-in (tests/nixpkgs), through preVM / the qemu guest / postVM.

Each image is checked with the tools a user would use (sfdisk, e2fsck, debugfs,
dumpe2fs, mtools, qemu-img), not with the engine's own code. See docs/nix.md.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import add_selected_lib
from imagecheck import header_fields

from make_disk_image import interface

REPO = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.nix,
    pytest.mark.skipif(
        shutil.which("nix-build") is None, reason="nix-build (nix-bin) not installed"
    ),
]

ROOT_GPUID = "F222513B-DED1-49FA-B591-20CE86A2FE7F"
# What sgdisk makes of the reference's 31-digit disk GUID literal.
SEED_DISK_GUID = "97FD5997-F390-0B4A-A3F8-D106C1723AEA"
BIOS_BOOT_GUID = "21686148-6449-6E6F-744E-656564454649"
ESP_GUID = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
XBOOTLDR_GUID = "BC13C2FF-59E6-4262-A352-B275FD6F7172"
BOOTLOADER_MARKER = "nixos-standin-bootloader"

# The image under test: default.nix called like nixos/lib/make-disk-image.nix, with a
# stand-in NixOS configuration made of one JSON module. Paths in `contents` and the
# text of `configFile` / `additionalPaths` come as strings and become store paths here.
IMAGE_NIX = """
{ repo, imageArgs, configModule }:
let
  pkgs = import (repo + "/tests/nixpkgs") { };
  inherit (pkgs) lib;
  standIn = (import (repo + "/tests/nixpkgs/flake.nix")).outputs { self = null; };
  config = (standIn.lib.nixosSystem {
    system = builtins.currentSystem;
    modules = [
      # What every NixOS configuration must have (nixpkgs asserts it).
      { fileSystems."/" = { device = "/dev/disk/by-label/nixos"; fsType = "ext4"; }; }
      (builtins.fromJSON configModule)
    ];
  }).config;
  args = builtins.fromJSON imageArgs;
  converted = {
    contents = map (entry: entry // { source = /. + entry.source; }) (args.contents or [ ]);
    additionalPaths =
      map (text: pkgs.writeText "additional-path" text) (args.additionalTexts or [ ]);
  } // lib.optionalAttrs (args ? configFileText) {
    configFile = pkgs.writeText "configuration.nix" args.configFileText;
  };
in
import (repo + "/default.nix") (
  { inherit pkgs lib config; }
  // removeAttrs args [ "additionalTexts" "configFileText" ]
  // converted
)
"""


@dataclass(frozen=True)
class Partition:
    start: int  # sectors
    size: int  # sectors
    type: str
    uuid: str | None
    name: str | None

    @property
    def offset(self) -> int:
        return self.start * 512


@dataclass(frozen=True)
class BuildResult:
    out: Path
    log: str


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)


def checked(argv: list[str], **kwargs: Any) -> str:
    proc = run(argv, **kwargs)
    assert proc.returncode == 0, f"{argv} failed ({proc.returncode}):\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The working tree as a fresh git repository: flakes only see `git add`ed files,
    and this is what a CI clone looks like (without caches and build results)."""
    dest = tmp_path_factory.mktemp("checkout") / "make-disk-image"
    listed = checked(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO
    )
    for name in filter(None, listed.split("\0")):
        src = REPO / name
        if not src.exists():  # deleted in the working tree, not yet committed
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target, follow_symlinks=False)
    add_selected_lib(dest)
    checked(["git", "init", "-q"], cwd=dest)
    checked(["git", "add", "-A", "--force"], cwd=dest)
    return dest


def nix_build_image(
    checkout: Path,
    tmp_path: Path,
    image_args: Mapping[str, Any],
    config_module: Mapping[str, Any] | None = None,
    extra_args: list[str] | None = None,
    **kwargs: Any,
) -> subprocess.CompletedProcess[str]:
    """nix-build of IMAGE_NIX; `kwargs` go to subprocess.run."""
    expr = tmp_path / "image.nix"
    expr.write_text(IMAGE_NIX)
    return run(
        [
            "nix-build",
            str(expr),
            "--arg",
            "repo",
            str(checkout),
            "--argstr",
            "imageArgs",
            json.dumps(image_args),
            "--argstr",
            "configModule",
            # GRUB without devices is an error in NixOS: no boot loader by default.
            json.dumps(NO_GRUB if config_module is None else config_module),
            "--out-link",
            str(tmp_path / "result"),
            *(extra_args or []),
        ],
        **kwargs,
    )


def build_image(
    checkout: Path,
    tmp_path: Path,
    image_args: Mapping[str, Any],
    config_module: Mapping[str, Any] | None = None,
) -> BuildResult:
    proc = nix_build_image(checkout, tmp_path, image_args, config_module)
    assert proc.returncode == 0, f"nix-build failed:\n{proc.stderr[-6000:]}"
    out = Path(proc.stdout.strip().splitlines()[-1])
    log = proc.stderr
    if "building '" not in log:
        # Built before by an earlier run (the same derivation): its log as Nix kept it.
        log += checked(["nix-store", "--read-log", str(out)])
    return BuildResult(out=out, log=log)


def as_raw(image: Path, tmp_path: Path) -> Path:
    info = json.loads(checked(["qemu-img", "info", "--output=json", str(image)]))
    if info["format"] == "raw":
        return image
    raw = tmp_path / "converted.raw"
    checked(["qemu-img", "convert", "-O", "raw", str(image), str(raw)])
    return raw


def partition_table(raw: Path) -> tuple[dict[str, Any], list[Partition]]:
    table = json.loads(checked(["sfdisk", "--json", str(raw)]))["partitiontable"]
    parts = [
        Partition(
            start=p["start"],
            size=p["size"],
            type=p["type"].upper(),
            uuid=p.get("uuid"),
            name=p.get("name"),
        )
        for p in table["partitions"]
    ]
    return table, parts


def ext4_header(spec: str) -> dict[str, str]:
    # debugfs, not dumpe2fs: dumpe2fs takes an argument with "=" for a NAME=value tag.
    return header_fields(debugfs(spec, "stats -h"))


def check_ext4(spec: str) -> None:
    proc = run(["e2fsck", "-fn", spec])
    assert proc.returncode == 0, f"e2fsck -fn {spec}:\n{proc.stdout}\n{proc.stderr}"


def debugfs(spec: str, request: str) -> str:
    proc = run(["debugfs", "-R", request, spec])
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def ext4_read(spec: str, path: str) -> str:
    return debugfs(spec, f"cat {path}")


def ext4_stat(spec: str, path: str) -> dict[str, str]:
    """uid, gid and mode of one inode, from debugfs' stat."""
    text = debugfs(spec, f"stat {path}")
    assert "File not found" not in text, f"{path} missing"
    fields: dict[str, str] = {}
    for line in text.splitlines():
        words = line.replace(":", " : ").split()
        for i, word in enumerate(words[:-2]):
            if word in ("Mode", "User", "Group") and words[i + 1] == ":":
                fields.setdefault(word.lower(), words[i + 2])
    return fields


def fat_read(raw: Path, part: Partition, path: str) -> str:
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    return checked(["mtype", "-i", f"{raw}@@{part.offset}", f"::{path}"], env=env)


def fat_label(raw: Path, part: Partition) -> str:
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    return checked(["mlabel", "-s", "-i", f"{raw}@@{part.offset}", "::"], env=env).strip()


def hydra_products(out: Path) -> list[str]:
    return (out / "nix-support" / "hydra-build-products").read_text().splitlines()


def store_path_names(spec: str, directory: str) -> set[str]:
    # `ls -p` lines: /inode/mode/uid/gid/name/size/
    lines = debugfs(spec, f"ls -p {directory}").splitlines()
    return {line.split("/")[5] for line in lines if line.count("/") >= 6} - {".", ".."}


@pytest.fixture
def contents_file(tmp_path: Path) -> Path:
    source = tmp_path / "motd"
    source.write_text("welcome to the image\n")
    return source


# Config modules of the stand-in NixOS (NixOS options, evaluated by lib.evalModules):
# grub on a device the guest must link to /dev/vda, and a user the guest must chown
# contents to.
GRUB_SDA = {
    "boot": {"loader": {"grub": {"enable": True, "devices": ["/dev/sda"]}}},
    "users": {"users": {"alice": {"isNormalUser": True, "uid": 1000}}},
}
NO_GRUB = {"boot": {"loader": {"grub": {"enable": False}}}}
LIMINE_SDB = {
    "boot": {
        "loader": {
            "grub": {"enable": False},
            "limine": {"enable": True, "biosSupport": True, "biosDevice": "/dev/sdb"},
        }
    }
}


@dataclass(frozen=True)
class LayoutCase:
    partition_table_type: str
    image_format: str
    extension: str
    config: Mapping[str, Any]
    # 1-based number of the root partition (0: the image is the file system), of the
    # partition /boot lives on when it is not the root, and the boot loader devices.
    root: int
    boot: int | None
    devices: tuple[str, ...]
    extra_args: Mapping[str, Any]


LAYOUTS = [
    LayoutCase("legacy", "raw", "img", GRUB_SDA, 1, None, ("/dev/sda",), {"diskSize": 700}),
    LayoutCase("legacy+boot", "qcow2", "qcow2", GRUB_SDA, 2, 1, ("/dev/sda",), {}),
    LayoutCase("legacy+gpt", "vpc", "vhd", GRUB_SDA, 2, None, ("/dev/sda",), {}),
    LayoutCase("efi", "qcow2-compressed", "qcow2", NO_GRUB, 2, 1, (), {"touchEFIVars": True}),
    LayoutCase("efixbootldr", "vdi", "vdi", NO_GRUB, 3, 2, (), {"bootSize": "160M"}),
    LayoutCase("hybrid", "raw", "img", LIMINE_SDB, 3, 1, ("/dev/sdb",), {}),
    LayoutCase(
        "none",
        "raw",
        "img",
        NO_GRUB,
        0,
        None,
        (),
        {"copyChannel": False, "baseName": "rootfs", "label": "standin-root", "name": "rootfs"},
    ),
]


@pytest.mark.parametrize(
    "case", LAYOUTS, ids=lambda c: f"{c.partition_table_type}-{c.image_format}"
)
def test_nix_build_layout(
    case: LayoutCase, checkout: Path, tmp_path: Path, contents_file: Path
) -> None:
    args: dict[str, Any] = {
        "partitionTableType": case.partition_table_type,
        "format": case.image_format,
        "contents": [
            {"source": str(contents_file), "target": "/etc/motd", "mode": "0640"}
            | ({"user": "alice", "group": "users"} if "users" in case.config else {})
        ],
        "postVM": 'echo "$diskImage" > $out/post-vm-disk-image',
        **case.extra_args,
    }
    result = build_image(checkout, tmp_path, args, case.config)
    out = result.out
    image = out / f"{case.extra_args.get('baseName', 'nixos')}.{case.extension}"
    assert out.name.endswith("-" + case.extra_args.get("name", "nixos-disk-image"))
    assert image.is_file()
    # The user's postVM ran after the engine's finish, with diskImage set to the output.
    assert (out / "post-vm-disk-image").read_text().strip() == str(image)
    fmt = "qcow2" if case.image_format == "qcow2-compressed" else case.image_format
    assert hydra_products(out) == [f"file {fmt}-image {image}"]
    info = json.loads(checked(["qemu-img", "info", "--output=json", str(image)]))
    assert info["format"] == fmt
    if "diskSize" in case.extra_args:
        assert info["virtual-size"] == case.extra_args["diskSize"] * 1024 * 1024
    assert (out / "efi-vars.fd").is_file() == bool(case.extra_args.get("touchEFIVars"))

    raw = as_raw(image, tmp_path)
    if case.root == 0:
        root_spec = str(raw)
        assert not run(["sfdisk", "--json", str(raw)]).stdout.strip()
        parts: list[Partition] = []
    else:
        table, parts = partition_table(raw)
        root_part = parts[case.root - 1]
        root_spec = f"{raw}?offset={root_part.offset}"
        if table["label"] == "gpt":
            assert table["id"].upper() == SEED_DISK_GUID
            if case.partition_table_type != "legacy+gpt":
                assert root_part.uuid is not None and root_part.uuid.upper() == ROOT_GPUID
        else:
            assert table["label"] == "dos"
    check_ext4(root_spec)
    header = ext4_header(root_spec)
    assert header["Filesystem volume name"] == case.extra_args.get("label", "nixos")
    # tune2fs in the guest set the UUID and the deterministic timestamps.
    assert header["Filesystem UUID"].upper() == ROOT_GPUID
    assert header["Last checked"].endswith("1970")

    assert "Type: symlink" in debugfs(root_spec, "stat /nix/var/nix/profiles/system")
    assert ext4_read(root_spec, "/etc/motd") == "welcome to the image\n"
    motd = ext4_stat(root_spec, "/etc/motd")
    assert motd["mode"].endswith("0640")
    if "users" in case.config:
        # chown in the guest through nixos-enter, with the image's own /etc/passwd.
        assert (motd["user"], motd["group"]) == ("1000", "100")

    # switch-to-configuration boot ran in the guest through nixos-enter, with the boot
    # loader devices linked to /dev/vda and /boot mounted where the layout puts it.
    if case.boot is None:
        marker = ext4_read(root_spec, f"/boot/{BOOTLOADER_MARKER}")
    else:
        boot_part = parts[case.boot - 1]
        marker = fat_read(raw, boot_part, f"/{BOOTLOADER_MARKER}")
        expected_label = {"legacy+boot": "BOOT", "efixbootldr": "BOOT"}.get(
            case.partition_table_type, "ESP"
        )
        assert fat_label(raw, boot_part).endswith(expected_label)
    lines = marker.splitlines()
    assert lines[0].startswith("system=/nix/store/") and "install=1" in lines
    assert [line for line in lines if line.startswith("device=")] == [
        f"device={d}" for d in case.devices
    ]
    if case.partition_table_type == "efixbootldr":
        esp = parts[0]
        assert esp.type == ESP_GUID and parts[1].type == XBOOTLDR_GUID
        assert fat_label(raw, esp).endswith("ESP")
    if case.partition_table_type in ("legacy+gpt", "hybrid"):
        assert BIOS_BOOT_GUID in {p.type for p in parts}


def test_nix_build_only_nix_store(checkout: Path, tmp_path: Path) -> None:
    """onlyNixStore: a plain derivation without VM, the store at the image's root."""
    result = build_image(
        checkout,
        tmp_path,
        {
            "onlyNixStore": True,
            "installBootLoader": False,
            "partitionTableType": "none",
            "copyChannel": False,
            "additionalTexts": ["an additional path\n"],
        },
    )
    image = result.out / "nixos.img"
    check_ext4(str(image))
    assert ext4_header(str(image))["Filesystem volume name"] == "nix-store"
    names = store_path_names(str(image), "/")
    assert any(n.endswith("-busybox-static-debian") for n in names), names
    assert any(n.endswith("-additional-path") for n in names), names
    assert "nix" not in names
    assert "Virtual machine" not in result.log


@pytest.mark.parametrize(
    ("image_args", "message"),
    [
        # Wrong in ways only the engine sees (default.nix checks types and the
        # reference's asserts at evaluation: tests/test_interface.py).
        ({"bootSize": "7M", "partitionTableType": "efi"}, "bootSize"),
        ({"memSize": 128}, "memSize"),
        ({"contents": [{"source": "/etc/hostname", "target": "/x", "mode": "999"}]},
         "contents[0].mode"),
    ],
    ids=["bootSize-too-small", "memSize-too-little", "mode-not-octal"],
)
def test_nix_build_wrong_argument_fails_with_engine_message(
    checkout: Path, tmp_path: Path, image_args: dict[str, Any], message: str
) -> None:
    proc = nix_build_image(checkout, tmp_path, image_args | {"copyChannel": False})
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines()
              if "error:" in line and f"`{message}`" in line]  # fmt: skip
    assert errors, proc.stderr[-4000:]
    # The engine refused in preVM: nothing ran in a guest.
    assert "[guest" not in proc.stderr


def test_contents_entry_with_an_unknown_key_warns_and_evaluates(
    checkout: Path, tmp_path: Path
) -> None:
    """The reference ignores keys a contents entry does not use; so does default.nix,
    so that such a call site still builds, but it names them in a warning."""
    source = tmp_path / "motd"
    source.write_text("hello\n")
    expr = tmp_path / "image.nix"
    expr.write_text(IMAGE_NIX)
    entry = {"source": str(source), "target": "/etc/motd", "owner": "root"}
    proc = run(["nix-instantiate", str(expr), "--arg", "repo", str(checkout),
                "--argstr", "imageArgs", json.dumps({"contents": [entry]}),
                "--argstr", "configModule", json.dumps(NO_GRUB)])  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip().endswith(".drv"), proc.stdout
    assert "argument `contents`" in proc.stderr, proc.stderr
    assert "/etc/motd has keys that are ignored: owner" in proc.stderr, proc.stderr


def test_nix_build_guest_failure_fails_the_build(
    checkout: Path, tmp_path: Path, contents_file: Path
) -> None:
    """A command failing inside the VM fails the build: as in nixpkgs, stage 2 runs
    under `set -e`, so no exit code is written and the host says so, after the
    engine's own error line from the guest."""
    proc = nix_build_image(
        checkout,
        tmp_path,
        {
            "copyChannel": False,
            "contents": [
                {
                    "source": str(contents_file),
                    "target": "/etc/motd",
                    "user": "nosuchuser",
                    "group": "users",
                }
            ],
        },
        GRUB_SDA,
    )
    assert proc.returncode != 0
    # The guest's steps ran (the engine logs them), and chown's complaint came back.
    assert "[guest" in proc.stderr
    assert "nosuchuser" in proc.stderr, proc.stderr[-4000:]
    assert "error: guest: chown /etc/motd: command failed" in proc.stderr
    assert "Virtual machine didn't produce an exit code" in proc.stderr


def flake_ref_of_stand_in(checkout: Path) -> str:
    # git+file with dir=: the stand-in's vmTools and nixos-enter come from the checkout
    # around it (path: flake refs take no dir= in Nix 2.8).
    return f"git+file://{checkout}?dir=tests/nixpkgs"


def test_flake_build_package_and_check(checkout: Path) -> None:
    override = ["--override-input", "nixpkgs", flake_ref_of_stand_in(checkout)]
    built = json.loads(
        checked(
            ["nix", "build", "--no-link", "--json", f"{checkout}#packages.x86_64-linux.default"]
            + override,
            cwd=checkout,
        )
    )
    app = Path(built[0]["outputs"]["out"])
    help_text = checked([str(app / "bin" / "make-disk-image"), "--help"])
    assert "prepare" in help_text and "guest" in help_text

    shown = json.loads(checked(["nix", "flake", "show", "--json", str(checkout)] + override))
    checks = shown["checks"]["x86_64-linux"]
    assert {"package", "image-legacy-raw", "image-efi-qcow2", "image-nix-store"} <= set(checks)
    assert set(shown["checks"]) == {"x86_64-linux", "aarch64-linux"}
    assert "formatter" in shown and "lib" in shown
    assert set(shown["overlays"]) == {"default"} and set(shown["nixosModules"]) == {"default"}
    # nixpkgs' GRUB has no BIOS target on aarch64.
    assert "image-legacy-raw" not in shown["checks"]["aarch64-linux"]

    proc = run(["nix", "flake", "check", "-L", str(checkout)] + override, cwd=checkout)
    assert proc.returncode == 0, proc.stderr[-6000:]
    # The checks were really built: their outputs are valid store paths now.
    for name in ("image-legacy-raw", "image-efi-qcow2"):
        out = json.loads(
            checked(
                ["nix", "build", "--no-link", "--json", f"{checkout}#checks.x86_64-linux.{name}"]
                + override,
                cwd=checkout,
            )
        )[0]["outputs"]["out"]
        assert (Path(out) / "nix-support" / "hydra-build-products").is_file()


def test_default_nix_takes_the_reference_arguments(checkout: Path) -> None:
    args = json.loads(
        checked(
            [
                "nix-instantiate",
                "--eval",
                "--json",
                "-E",
                f"builtins.functionArgs (import {checkout}/default.nix)",
            ]
        )
    )
    # Exactly the reference's arguments, the same ones optional, and the extensions,
    # all optional (their defaults keep the reference's behaviour).
    assert args == {**REFERENCE_ARGUMENTS, **EXTENSION_ARGUMENTS}


# The extensions are the table's (all optional): adding one is a row there.
EXTENSION_ARGUMENTS = {
    name: True for name, row in interface.ARGUMENTS.items() if row.origin == "extension"
}


# The reference's argument list: name -> has a default.
REFERENCE_ARGUMENTS = {
    "pkgs": False,
    "lib": False,
    "config": False,
    "diskSize": True,
    "additionalSpace": True,
    "bootSize": True,
    "contents": True,
    "partitionTableType": True,
    "installBootLoader": True,
    "touchEFIVars": True,
    "OVMF": True,
    "efiFirmware": True,
    "efiVariables": True,
    "fsType": True,
    "label": True,
    "configFile": True,
    "postVM": True,
    "memSize": True,
    "onlyNixStore": True,
    "name": True,
    "format": True,
    "baseName": True,
    "deterministic": True,
    "rootGPUID": True,
    "rootFSUID": True,
    "copyChannel": True,
    "additionalPaths": True,
}


# default.nix's spec for a nixpkgs whose source (pkgs.path) is SOURCE and a NixOS version
# suffix SUFFIX: building it builds channelSources, which the spec names.
CHANNEL_NIX = """
{ repo, source, suffix }:
let
  pkgs = import (repo + "/tests/nixpkgs") { } // { path = /. + source; };
  inherit (pkgs) lib;
  standIn = (import (repo + "/tests/nixpkgs/flake.nix")).outputs { self = null; };
  config = (standIn.lib.nixosSystem {
    system = builtins.currentSystem;
    modules = [ {
      system.nixos.versionSuffix = lib.mkForce suffix;
      system.stateVersion = "26.05";
      fileSystems."/" = { device = "/dev/disk/by-label/nixos"; fsType = "ext4"; };
      boot.loader.grub.devices = [ "/dev/vda" ];
    } ];
  }).config;
in (import (repo + "/default.nix") { inherit pkgs lib config; }).passthru.spec
"""


def tree_listing(root: Path) -> dict[str, tuple[str, str]]:
    """Each entry under root: (kind, what it holds): a file's text and executable bit, a
    link's target; directories by name only."""
    listing = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if path.is_symlink():
            listing[name] = ("link", os.readlink(path))
        elif path.is_dir():
            listing[name] = ("dir", "")
        else:
            executable = "x" if path.stat().st_mode & 0o100 else "-"
            listing[name] = ("file", executable + path.read_text())
    return listing


@pytest.mark.parametrize("has_nixpkgs", [False, True], ids=["nixpkgs-linked", "nixpkgs-kept"])
def test_channel_is_the_nixpkgs_source_with_link_and_suffix(
    checkout: Path, tmp_path: Path, has_nixpkgs: bool
) -> None:
    """copyChannel's channel: directory `nixos` holds pkgs.path's source without .git,
    `nixos/nixpkgs` links to `.` unless the source has one, `nixos/.version-suffix`
    holds the configuration's system.nixos.versionSuffix (no newline)."""
    source = tmp_path / "nixpkgs-source"
    (source / "pkgs" / "top").mkdir(parents=True)
    (source / "default.nix").write_text("{ }: { }\n")
    (source / "pkgs" / "top" / "run").write_text("#!/bin/sh\n")
    (source / "pkgs" / "top" / "run").chmod(0o755)
    (source / "lib").symlink_to("pkgs/top")
    (source / ".git").mkdir()
    (source / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    if has_nixpkgs:
        (source / "nixpkgs").write_text("a file of the source\n")
    spec_file = checked(["nix-build", "--no-out-link", "-E", CHANNEL_NIX,
                         "--argstr", "repo", str(checkout), "--argstr", "source", str(source),
                         "--argstr", "suffix", ".pre-test-1"]).strip()
    channel = Path(json.loads(Path(spec_file).read_text())["channelSources"])
    # Named as the reference names it: nixos-RELEASE plus the suffix.
    assert re.fullmatch(r"[0-9a-z]{32}-nixos-[0-9.]+\.pre-test-1", channel.name), channel
    expected = {f"nixos/{name}": entry for name, entry in tree_listing(source).items()
                if not name.startswith(".git")}
    expected |= {"nixos": ("dir", ""), "nixos/.version-suffix": ("file", "-.pre-test-1")}
    if not has_nixpkgs:
        expected["nixos/nixpkgs"] = ("link", ".")
    assert tree_listing(channel) == expected


def test_default_nix_qemu_opts_follow_the_reference(checkout: Path) -> None:
    """QEMU_OPTS: both pflash drives with touchEFIVars, SMM options when OVMF needs them."""
    expr = f"""
      let
        pkgs = import {checkout}/tests/nixpkgs {{ }};
        standIn = (import {checkout}/tests/nixpkgs/flake.nix).outputs {{ self = null; }};
        config = (standIn.lib.nixosSystem {{ modules = [ ]; }}).config;
        image = args: import {checkout}/default.nix
          ({{ inherit pkgs config; inherit (pkgs) lib; }} // args);
        smmOVMF = pkgs.OVMF.fd // {{ systemManagementModeRequired = true; }};
      in {{
        plain = (image {{ }}).QEMU_OPTS;
        efi = (image {{ partitionTableType = "efi"; touchEFIVars = true; }}).QEMU_OPTS;
        smm = (image {{ partitionTableType = "efi"; touchEFIVars = true; OVMF = smmOVMF; }})
          .QEMU_OPTS;
        memSize = (image {{ memSize = 768; }}).memSize;
      }}
    """
    opts = json.loads(checked(["nix-instantiate", "--eval", "--strict", "--json", "-E", expr]))
    assert opts["plain"] == ""
    firmware = "if=pflash,format=raw,unit=0,readonly=on,file=/nix/store/"
    assert opts["efi"].startswith(f"-drive {firmware}")
    assert opts["efi"].endswith("-drive if=pflash,format=raw,unit=1,file=$out/efi-vars.fd")
    assert "smm" not in opts["efi"]
    assert opts["smm"].startswith(opts["efi"])
    assert opts["smm"].endswith(
        "-machine q35,smm=on -global driver=cfi.pflash01,property=secure,value=on"
    )
    assert opts["memSize"] == 768


VM_PROBE_NIX = """
{ repo, guestExit }:
let
  pkgs = import (repo + "/tests/nixpkgs") { };
in
pkgs.vmTools.runInLinuxVM (
  pkgs.runCommand "vmtools-probe"
    {
      FROM_DERIVATION = "yes";
      memSize = 384;
      enableParallelBuilding = true;
      QEMU_OPTS = "-smbios type=1,serial=standin-probe";
      buildInputs = [ pkgs.util-linux ];
      preVM = ''
        export FROM_PRE_VM=1
        diskImage=$PWD/probe.raw
        truncate -s 4M $diskImage
        mkdir -p $out
      '';
      postVM = ''
        head -c 13 $diskImage > $out/disk-marker
      '';
    }
    ''
      env > $out/guest-env
      ls -A / > $out/guest-root
      nproc > $out/cpus
      grep MemTotal /proc/meminfo > $out/meminfo
      cat /sys/class/dmi/id/product_serial > $out/serial
      printf written-in-vm | dd of=/dev/vda conv=notrunc,fsync status=none
      exit ${toString guestExit}
    ''
)
"""


def build_vm_probe(
    tmp_path: Path, checkout: Path, guest_exit: int
) -> subprocess.CompletedProcess[str]:
    expr = tmp_path / "probe.nix"
    expr.write_text(VM_PROBE_NIX)
    return run(
        [
            "nix-build",
            str(expr),
            "--arg",
            "repo",
            str(checkout),
            "--arg",
            "guestExit",
            str(guest_exit),
            "--out-link",
            str(tmp_path / "result"),
        ]
    )


def test_stand_in_run_in_linux_vm(checkout: Path, tmp_path: Path) -> None:
    """The stand-in's vmTools.runInLinuxVM behaves like nixpkgs': the environment is
    saved before preVM, the original builder runs in the guest with $diskImage as
    /dev/vda and the store shared, memSize and QEMU_OPTS reach qemu, postVM runs after,
    and the guest's exit status is the build's."""
    proc = build_vm_probe(tmp_path, checkout, 0)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = Path(proc.stdout.strip().splitlines()[-1])
    guest_env = dict(
        line.split("=", 1) for line in (out / "guest-env").read_text().splitlines() if "=" in line
    )
    assert guest_env["FROM_DERIVATION"] == "yes"
    assert "FROM_PRE_VM" not in guest_env
    assert guest_env["TMPDIR"] == "/tmp"
    mem_kib = int((out / "meminfo").read_text().split()[1])
    assert 256 * 1024 < mem_kib <= 384 * 1024
    assert (out / "serial").read_text().strip() == "standin-probe"
    assert (out / "disk-marker").read_text() == "written-in-vm"
    # An empty tmpfs root: the store and xchg shared in, the host's /usr (and its Python's
    # prefix, which may lie under /root) for the stand-in's packages, nothing else of the
    # host (no /work, /home, /var).
    root = set((out / "guest-root").read_text().split())
    assert {"nix", "tmp", "usr", "dev", "proc", "sys"} <= root
    assert not root & {"work", "home", "var", "srv", "opt"}, root
    # enableParallelBuilding: -smp cpus=$NIX_BUILD_CORES (0: all cores).
    assert int((out / "cpus").read_text()) == os.cpu_count()

    # Stage 2 runs under set -euo pipefail: a failing builder writes no exit code.
    (tmp_path / "failing").mkdir()
    failed = build_vm_probe(tmp_path / "failing", checkout, 3)
    assert failed.returncode != 0
    assert "Virtual machine didn't produce an exit code." in failed.stderr, failed.stderr[-4000:]


def test_stand_in_run_in_linux_vm_requires_kvm(checkout: Path) -> None:
    expr = f"""
      let pkgs = import {checkout}/tests/nixpkgs {{ }};
      in (pkgs.vmTools.runInLinuxVM (pkgs.runCommand "x" {{ }} "true")).requiredSystemFeatures
    """
    features = json.loads(checked(["nix-instantiate", "--eval", "--strict", "--json", "-E", expr]))
    assert features == ["kvm"]


# A Nix whose builders have no KVM: no `kvm` system feature.
NO_KVM = ["--option", "system-features", "nixos-test benchmark big-parallel"]


def test_without_kvm_the_default_build_is_refused(checkout: Path, tmp_path: Path) -> None:
    proc = nix_build_image(checkout, tmp_path, {"diskSize": 64}, extra_args=NO_KVM)
    assert proc.returncode != 0
    assert "with features {kvm} is required" in proc.stderr, proc.stderr[-3000:]


def test_require_kvm_false_builds_without_kvm(checkout: Path, tmp_path: Path) -> None:
    """The opt-in drops the kvm feature; the VM (TCG) installs GRUB and chowns."""
    proc = nix_build_image(
        checkout, tmp_path,
        {"requireKVM": False, "partitionTableType": "legacy", "additionalSpace": "16M",
         "contents": [{"source": str(REPO / "README.md"), "target": "/etc/readme",
                       "user": "root", "group": "root"}]},
        extra_args=NO_KVM,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-6000:]
    out = Path(proc.stdout.strip().splitlines()[-1])
    drv = json.loads(checked(["nix", "show-derivation", str(out)]))
    env = next(iter(drv.values()))["env"]
    assert "kvm" not in env.get("requiredSystemFeatures", "")
    image = out / "nixos.img"
    _, parts = partition_table(image)
    check_ext4(f"{image}?offset={parts[0].offset}")
    # The image holds the contents entry the guest chowned (the result may be Nix's
    # cached one, without a build log).
    assert "readme" in debugfs(f"{image}?offset={parts[0].offset}", "ls -l /etc")


def vm_features(checkout: Path, tmp_path: Path, image_args: Mapping[str, Any]) -> list[str]:
    """The image derivation's requiredSystemFeatures: ["kvm"] where it boots a build VM."""
    expr = tmp_path / "image.nix"
    expr.write_text(IMAGE_NIX)
    call = (f"(import {expr}) {{ repo = {checkout}; imageArgs = ''{json.dumps(image_args)}''; "
            f"configModule = ''{json.dumps(NO_GRUB)}''; }}")
    out = checked(["nix-instantiate", "--eval", "--strict", "--json", "-E",
                   f"({call}).requiredSystemFeatures or [ ]"])
    return json.loads(out)  # type: ignore[no-any-return]


OWNED = {"source": str(REPO / "README.md"), "target": "/etc/readme"}


@pytest.mark.parametrize("image_args", [
    {},
    {"installBootLoader": False},
    {"installBootLoader": False, "contents": [{**OWNED, "user": "0", "group": "00"}]},
    {"installBootLoader": False, "contents": [{**OWNED, "user": "alice", "group": "100"}]},
    {"installBootLoader": False, "contents": [{**OWNED, "user": "root", "group": "root"}]},
    {"installBootLoader": False, "touchEFIVars": True, "partitionTableType": "efi"},
    {"onlyNixStore": True, "partitionTableType": "none", "installBootLoader": False},
])
def test_a_build_vm_only_where_the_guest_has_work(checkout: Path, tmp_path: Path,
                                                 image_args: dict[str, Any]) -> None:
    """default.nix boots the build VM exactly where the engine's guest has work
    (prepare.guest_mounts_root) or the firmware may write efi-vars.fd."""
    from make_disk_image.models import ContentEntry, Spec
    from make_disk_image.prepare import guest_mounts_root

    spec = Spec(toplevel="/nix/store/x", closureInfo="/nix/store/y",
                installBootLoader=image_args.get("installBootLoader", True),
                onlyNixStore=image_args.get("onlyNixStore", False),
                contents=tuple(ContentEntry(**c) for c in image_args.get("contents", [])))
    boots = guest_mounts_root(spec) or bool(image_args.get("touchEFIVars"))
    assert vm_features(checkout, tmp_path, image_args) == (["kvm"] if boots else [])


def test_without_a_boot_loader_no_vm_and_no_kvm(checkout: Path, tmp_path: Path) -> None:
    """No boot loader and no owners by name: prepare and finish alone, on a builder
    without KVM, and the image is complete (its ESP made by finish)."""
    proc = nix_build_image(checkout, tmp_path, {"partitionTableType": "efi",
                                                "installBootLoader": False},
                           extra_args=NO_KVM)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "guest:" not in proc.stderr  # no guest phase ran
    image = Path(proc.stdout.strip().splitlines()[-1]) / "nixos.img"
    table = json.loads(checked(["sfdisk", "--json", str(image)]))
    parts = table["partitiontable"]["partitions"]
    assert [p["type"] for p in parts] == [ESP_GUID, "0FC63DAF-8483-4772-8E79-3D69D8477DE4"]
