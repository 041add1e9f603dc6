"""nix-build of default.nix against the offline nixpkgs stand-in (tests/nixpkgs), and the
tools a user would read its images with (sfdisk, e2fsck, debugfs, mtools, qemu-img): what
the Nix test modules (test_nix*.py) share. See docs/nix.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from imagecheck import header_fields

REPO = Path(__file__).resolve().parent.parent

# The marks of a module of nix-build tests (its pytestmark).
NIX_BUILD_TESTS = [
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


def nix_build_expression(tmp_path: Path, name: str, text: str, args: list[str],
                         **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """nix-build of the expression `text`, written to tmp_path/`name`, with `args`
    (--arg/--argstr pairs); the result linked at tmp_path/result."""
    expr = tmp_path / name
    expr.write_text(text)
    return run(["nix-build", str(expr), *args, "--out-link", str(tmp_path / "result")],
               **kwargs)


def nix_build_image(
    checkout: Path,
    tmp_path: Path,
    image_args: Mapping[str, Any],
    config_module: Mapping[str, Any] | None = None,
    extra_args: list[str] | None = None,
    **kwargs: Any,
) -> subprocess.CompletedProcess[str]:
    """nix-build of IMAGE_NIX; `kwargs` go to subprocess.run."""
    # GRUB without devices is an error in NixOS: no boot loader by default.
    module = NO_GRUB if config_module is None else config_module
    return nix_build_expression(
        tmp_path, "image.nix", IMAGE_NIX,
        ["--arg", "repo", str(checkout), "--argstr", "imageArgs", json.dumps(image_args),
         "--argstr", "configModule", json.dumps(module), *(extra_args or [])],
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


# A stand-in NixOS config module (NixOS options, evaluated by lib.evalModules): GRUB
# without devices is an error in NixOS, so no boot loader unless a test asks for one.
NO_GRUB = {"boot": {"loader": {"grub": {"enable": False}}}}
