"""The flake's outputs for NixOS users, evaluated (not built) against the offline nixpkgs
stand-in: nixosModules.default, overlays.default, the checks per system, and the
package source filter.

The stand-in's lib.nixosSystem runs lib.evalModules as nixpkgs' eval-config.nix does,
with the stand-in's own lib (as strict as nixpkgs', tests/test_standin_lib.py) or, with
MDI_NIXPKGS_LIB, a real nixpkgs lib: option types, undefined options and assertions
behave as with nixpkgs. Everything here is `nix-instantiate --eval`:
derivation paths and option values, seconds in all.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import NEEDS_NIX
from imagecheck import cat, dumpe2fs, e2fsck_clean, qemu_img_info, sfdisk_json

from make_disk_image import interface

REPO = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.nix,
    NEEDS_NIX,
]

# The flake called as Nix calls it, with the stand-in as its nixpkgs input, and a
# NixOS system of the check configuration plus `module`.
PRELUDE = """
let
  repo = REPO;
  standIn = (import (repo + "/tests/nixpkgs/flake.nix")).outputs { self = null; };
  flake = (import (repo + "/flake.nix")).outputs { self = flake; nixpkgs = standIn; };
  inherit (standIn) lib;
  nixos = modules: standIn.lib.nixosSystem {
    system = "x86_64-linux";
    modules = [
      (repo + "/nix/check-configuration.nix")
      { boot.loader.grub.device = "/dev/vda"; }
    ] ++ modules;
  };
  withModule = module: nixos [ flake.nixosModules.default module ];
  direct = system: args: flake.lib.makeDiskImage
    ({ inherit (system) pkgs lib config; } // args);
in
"""


def nix_eval(body: str, repo: Path = REPO) -> subprocess.CompletedProcess[str]:
    expr = PRELUDE.replace("REPO", str(repo)) + body
    return subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "-E", expr],
        capture_output=True,
        text=True,
        check=False,
    )


def evaluated(body: str, repo: Path = REPO) -> Any:
    proc = nix_eval(body, repo)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def eval_error(body: str) -> str:
    proc = nix_eval(body)
    assert proc.returncode != 0, f"evaluated, expected an error: {proc.stdout}"
    return proc.stderr


@pytest.mark.parametrize(
    ("module", "message"),
    [
        # An option no module declares.
        ("{ boot.loader.grub.foo = true; }", "The option `boot.loader.grub.foo' does not exist"),
        # A value of the wrong type.
        ('{ boot.loader.grub.enable = "yes"; }', "is not of type `boolean'"),
        # nixpkgs' assertions, with its messages.
        (
            '{ users.users.bob = { uid = 1001; group = "users"; }; }',
            "Exactly one of users.users.bob.isSystemUser and users.users.bob.isNormalUser",
        ),
        (
            "{ fileSystems = lib.mkForce { }; }",
            "The ‘fileSystems’ option does not specify your root file system.",
        ),
        (
            '{ boot.loader.grub.device = lib.mkForce ""; }',
            "You must set the option ‘boot.loader.grub.devices’",
        ),
        # The module's own options are typed.
        (
            '{ imports = [ flake.nixosModules.default ]; makeDiskImage.format = "iso"; }',
            "A definition for option `makeDiskImage.format' is not of type",
        ),
    ],
    ids=["undefined", "type", "user", "root-fs", "grub-devices", "module-type"],
)
def test_stand_in_nixos_system_is_as_strict_as_nixpkgs(module: str, message: str) -> None:
    # Option values are lazy, as with nixpkgs: the image reads makeDiskImage.*.
    built = "diskImage" if "makeDiskImage" in module else "toplevel"
    stderr = eval_error(f"(nixos [ ({module}) ]).config.system.build.{built}.drvPath")
    assert message in stderr, stderr[-3000:]


def test_module_builds_the_image_default_nix_builds() -> None:
    """Unset options pass nothing (default.nix's defaults apply); set ones pass exactly
    their values: the same derivation as calling makeDiskImage directly."""
    paths = evaluated("""
      let
        plain = withModule { };
        set = withModule {
          makeDiskImage = {
            format = "qcow2";
            partitionTableType = "efi";
            touchEFIVars = true;
            diskSize = 2048;
            label = "root";
            contents = [ { source = repo + "/README.md"; target = "/etc/motd"; mode = "0640"; } ];
          };
        };
      in {
        plain = [ plain.config.system.build.diskImage.drvPath (direct plain { }).drvPath ];
        set = [
          set.config.system.build.diskImage.drvPath
          (direct set {
            format = "qcow2";
            partitionTableType = "efi";
            touchEFIVars = true;
            diskSize = 2048;
            label = "root";
            contents = [ { source = repo + "/README.md"; target = "/etc/motd"; mode = "0640"; } ];
          }).drvPath
        ];
        # The values the module passes are its option values.
        format = set.config.makeDiskImage.format;
        defaultFormat = plain.config.makeDiskImage.format;
      }
    """)
    assert paths["plain"][0] == paths["plain"][1]
    assert paths["set"][0] == paths["set"][1]
    assert paths["plain"][0] != paths["set"][0]
    assert (paths["format"], paths["defaultFormat"]) == ("qcow2", "raw")


def test_module_registers_an_image_variant() -> None:
    """nixos-rebuild build-image: system.build.images.make-disk-image, its file path
    the image's (baseName from image.baseName, extension from the format)."""
    got = evaluated("""
      let
        system = withModule { makeDiskImage.format = "vpc"; };
        variant = system.config.system.build.images.make-disk-image;
      in {
        inherit (variant.passthru) filePath;
        name = variant.name;
        baseName = variant.passthru.config.makeDiskImage.baseName;
        imageBaseName = variant.passthru.config.image.baseName;
        # The variant is the diskImage of the extended system, not the base one.
        same = variant.drvPath == variant.passthru.config.system.build.diskImage.drvPath;
      }
    """)
    assert got["filePath"] == f"{got['imageBaseName']}.vhd"
    assert got["baseName"] == got["imageBaseName"]
    assert got["imageBaseName"].startswith("nixos-image-")
    assert got["name"] == "nixos-disk-image" and got["same"]


def test_overlay_adds_make_disk_image_and_the_engine() -> None:
    got = evaluated("""
      let
        pkgs = import (repo + "/tests/nixpkgs") { overlays = [ flake.overlays.default ]; };
        system = nixos [ { nixpkgs.overlays = [ flake.overlays.default ]; } ];
      in {
        engine = [ pkgs.make-disk-image.drvPath flake.packages.${pkgs.system}.default.drvPath ];
        image = [
          (pkgs.makeDiskImage { inherit (system) config; format = "qcow2"; }).drvPath
          (flake.lib.makeDiskImage { inherit pkgs; inherit (pkgs) lib; inherit (system) config;
            format = "qcow2"; }).drvPath
        ];
        # NixOS' pkgs gets it through nixpkgs.overlays.
        inSystem = system.pkgs ? makeDiskImage && system.pkgs ? make-disk-image;
      }
    """)
    assert got["engine"][0] == got["engine"][1]
    assert got["image"][0] == got["image"][1]
    assert got["inSystem"]


def test_bios_checks_only_on_x86() -> None:
    """nixpkgs' GRUB has no i386-pc target on aarch64: the BIOS image check exists for
    x86_64-linux only, and every aarch64-linux check evaluates to a derivation."""
    got = evaluated("""
      lib.mapAttrs (system: checks: lib.mapAttrs (name: check: check.drvPath) checks) flake.checks
    """)
    assert set(got["x86_64-linux"]) == {
        "package",
        "image-legacy-raw",
        "image-efi-qcow2",
        "image-nix-store",
    }
    assert set(got["aarch64-linux"]) == {"package", "image-efi-qcow2", "image-nix-store"}
    assert all(path.endswith(".drv") for path in got["aarch64-linux"].values())


def copy_checkout(dest: Path) -> Path:
    shutil.copytree(
        REPO,
        dest,
        symlinks=True,
        ignore=shutil.ignore_patterns(".git", "__pycache__", ".*_cache", "result*"),
    )
    return dest


ENGINE_DRV = """
  ((import (repo + "/tests/nixpkgs") { }).callPackage (repo + "/nix/package.nix") { }).drvPath
"""


def test_package_source_is_only_what_the_package_needs(tmp_path: Path) -> None:
    """A change to the docs, the tests, the test system or the Nix files leaves the
    engine's store path (and so every image) as it was; a change to the engine does not."""
    copy = copy_checkout(tmp_path / "checkout")
    before = evaluated(ENGINE_DRV, copy)
    for name in ("README.md", "docs/nix.md", "tests/test_nix.py", "tests/test_spec.py",
                 "tests/conftest.py", "testsys/system.py", "nixos-tests/default.nix"):
        with (copy / name).open("a") as file:
            file.write("\n# touched\n")
    (copy / "tests/test_new_module.py").write_text("def test_nothing() -> None: ...\n")
    assert evaluated(ENGINE_DRV, copy) == before

    with (copy / "make_disk_image/cli.py").open("a") as file:
        file.write("\n# changed\n")
    assert evaluated(ENGINE_DRV, copy) != before


# --- the module offers makeDiskImage's every argument ------------------------------------


def test_every_argument_is_an_option_and_every_option_an_argument() -> None:
    got = evaluated("""
      let system = withModule { };
      in {
        options = builtins.attrNames system.options.makeDiskImage;
        arguments = builtins.attrNames (builtins.functionArgs flake.lib.makeDiskImage);
      }
    """)
    # pkgs, lib and config are the system's own; makeDiskImage.repart is the switch for
    # image.repart (nix/repart.nix), not an argument.
    options = set(got["options"]) - {"repart"}
    assert options == set(got["arguments"]) - {"pkgs", "lib", "config"}
    assert options == {
        name for name, argument in interface.ARGUMENTS.items() if argument.type != "context"
    }


def test_options_take_the_engine_s_choices() -> None:
    """Every format, partition table type, fsType and diskSize word of interface.json is
    a value the module's options take, and reaches makeDiskImage unchanged."""
    choices = {
        "format": list(interface.FORMATS),
        "partitionTableType": list(interface.PARTITION_TABLE_TYPES),
        "fsType": list(interface.FS_TYPES),
        "diskSize": list(interface.DISK_SIZE_WORDS),
        "requireKVM": [False, True],
    }
    body = "[" + " ".join(
        f"(withModule {{ makeDiskImage.{option} = {json.dumps(value)}; }})"
        f".config.makeDiskImage.{option}"
        for option, values in choices.items()
        for value in values
    ) + "]"
    assert evaluated(body) == [value for values in choices.values() for value in values]


# Images the module builds. A store image (onlyNixStore) needs no VM, so every format is
# built that way; one VM build combines what needs the VM: "minimal", requireKVM = false
# (on a Nix without the kvm feature) and a format the reference lacks.
STORE_IMAGE = {
    "onlyNixStore": True,
    "installBootLoader": False,
    "partitionTableType": "none",
    "copyChannel": False,
    "additionalSpace": "8M",
}
NO_KVM = ["--option", "system-features", "nixos-test benchmark big-parallel"]
# qemu-img's name for each qemu-img format (raw-zstd is zstd's).
QEMU_IMG_FORMATS = {"raw": "raw", "qcow2": "qcow2", "qcow2-compressed": "qcow2",
                    "qcow2-zstd": "qcow2", "vdi": "vdi", "vpc": "vpc", "vmdk": "vmdk",
                    "vhdx": "vhdx"}  # fmt: skip


def nix_build(body: str, *extra: str) -> list[Path]:
    expr = PRELUDE.replace("REPO", str(REPO)) + body
    proc = subprocess.run(["nix-build", "--no-out-link", *extra, "-E", expr],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-6000:]
    return [Path(line) for line in proc.stdout.split()]


def as_raw(image: Path, fmt: str, dest: Path) -> Path:
    """The image converted back to raw by the format's own tool."""
    if fmt == "raw-zstd":
        subprocess.run(["zstd", "-q", "-d", image, "-o", dest], check=True)
    else:
        subprocess.run(["qemu-img", "convert", "-f", QEMU_IMG_FORMATS[fmt], "-O", "raw",
                        image, dest], check=True)  # fmt: skip
    return dest


def nix_value(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, bool) else str(value).lower()


def module_image(args: dict[str, Any]) -> str:
    settings = " ".join(f"{key} = {nix_value(value)};" for key, value in args.items())
    return f"(withModule {{ makeDiskImage = {{ {settings} }}; }}).config.system.build.diskImage"


def test_module_builds_a_store_image_in_every_format(tmp_path: Path) -> None:
    formats = list(interface.FORMATS)
    outs = nix_build("[ " + " ".join(
        module_image(STORE_IMAGE | {"format": fmt}) for fmt in formats) + " ]")  # fmt: skip
    assert len(outs) == len(formats)
    filesystems = set()
    for fmt, out in zip(formats, outs, strict=True):
        image = out / f"nixos.{interface.FORMATS[fmt].extension}"
        products = (out / "nix-support/hydra-build-products").read_text()
        assert products == f"file {interface.FORMATS[fmt].product_type} {image}\n"
        if fmt in QEMU_IMG_FORMATS:
            assert qemu_img_info(image, QEMU_IMG_FORMATS[fmt])["format"] == QEMU_IMG_FORMATS[fmt]
        raw = as_raw(image, fmt, tmp_path / f"{fmt}.raw")
        assert e2fsck_clean(raw, 0).returncode == 0, fmt
        assert dumpe2fs(raw, 0)["Filesystem volume name"] == "nix-store"
        # Every format holds the same filesystem, bit for bit (deterministic).
        filesystems.add(hashlib.sha256(raw.read_bytes()).hexdigest())
    assert len(filesystems) == 1


def test_module_builds_minimal_without_kvm_in_a_new_format(tmp_path: Path) -> None:
    args = {"diskSize": "minimal", "requireKVM": False, "format": "vhdx",
            "partitionTableType": "legacy+gpt", "additionalSpace": "8M",
            "copyChannel": False}  # fmt: skip
    [out] = nix_build(module_image(args), *NO_KVM)
    image = out / "nixos.vhdx"
    assert qemu_img_info(image, "vhdx")["format"] == "vhdx"
    raw = as_raw(image, "vhdx", tmp_path / "image.raw")
    root = sfdisk_json(raw)["partitions"][1]
    offset = root["start"] * 512
    assert e2fsck_clean(raw, offset).returncode == 0
    # "minimal": the root filesystem has little more free space than additionalSpace.
    fields = dumpe2fs(raw, offset)
    free = int(fields["Free blocks"]) * int(fields["Block size"])
    assert 8 * 1024 * 1024 <= free < 64 * 1024 * 1024, fields
    # The VM ran the stand-in's switch-to-configuration boot, with GRUB's device.
    marker = cat(raw, offset, "/boot/nixos-standin-bootloader").splitlines()
    assert "install=1" in marker and "device=/dev/vda" in marker, marker
