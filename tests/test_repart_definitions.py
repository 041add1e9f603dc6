"""Reading repartConfig: every key of the issue's table, and errors that name the option."""

from __future__ import annotations

import pytest

from make_disk_image.repart import definitions
from make_disk_image.repart.definitions import CopyFiles, DefinitionError


def test_full_definition() -> None:
    d = definitions.parse("20-root", {
        "Type": "root", "Label": "nixos", "Format": "ext4", "Minimize": "guess",
        "CopyFiles": "/src:/dst /other", "MakeDirectories": "/nix/store /var",
        "SizeMinBytes": "1.5G", "SizeMaxBytes": 4 << 30, "Weight": 500, "SplitName": "root",
    }, "x86-64")
    assert d.type.name == "root-x86-64" and d.label == "nixos" and d.format == "ext4"
    assert d.copy_files == (CopyFiles("/src", "/dst"), CopyFiles("/other", "/other"))
    assert d.make_directories == ("/nix/store", "/var")
    assert (d.size_min, d.size_max, d.weight, d.minimize) == (3 << 29, 4 << 30, 500, "guess")


@pytest.mark.parametrize(("config", "message"), [
    ({"Type": "usr", "Verity": "data"}, r"repartConfig\.Verity: dm-verity"),
    ({"Type": "root", "Encrypt": "tpm2"}, r"repartConfig\.Encrypt: encrypted"),
    ({"Type": "root", "Frobnicate": "1"}, r"repartConfig\.Frobnicate: .*supported keys"),
    ({"Format": "ext4"}, r"repartConfig\.Type: every partition needs a Type"),
    ({"Type": "root", "Format": "ntfs"}, r"repartConfig\.Format: 'ntfs'"),
    ({"Type": "root", "SizeMinBytes": "lots"}, r"SizeMinBytes: 'lots' is not a size"),
    ({"Type": "root", "Minimize": "guess"}, r"Minimize: needs Format"),
    ({"Type": "root", "Format": "ext4", "Minimize": "best"}, r"Minimize: \"best\" is for erofs"),
    ({"Type": "root", "Label": "x" * 37}, r"Label: .*36 characters"),
    ({"Type": "root", "Weight": -3}, r"Weight: -3"),
    ({"Type": "swap", "Format": "swap", "CopyFiles": "/a"}, r"CopyFiles: files need a filesystem"),
    ({"Type": "root", "SizeMinBytes": "2G", "SizeMaxBytes": "1G"}, r"larger than SizeMaxBytes"),
])
def test_refused_with_the_option_named(config: dict, message: str) -> None:
    with pytest.raises(DefinitionError, match=r"image\.repart\.partitions\.p\.repartConfig\."):
        definitions.parse("p", config, "x86-64")
    with pytest.raises(DefinitionError, match=message):
        definitions.parse("p", config, "x86-64")


def test_order_by_name_and_encrypt_off() -> None:
    defs = definitions.parse_all({"20-root": {"Type": "root", "Encrypt": "off"},
                                  "10-esp": {"Type": "esp"}}, "x86-64")
    assert [d.name for d in defs] == ["10-esp", "20-root"]


def test_minimize_booleans() -> None:
    d = definitions.parse("s", {"Type": "usr", "Format": "erofs", "Minimize": True}, "x86-64")
    assert d.minimize == "best"
