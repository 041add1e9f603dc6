"""default.nix's literal defaults are interface.json's, value by value, and default.nix
and the engine apply the same defaults: default.nix evaluated with stand-ins for pkgs and
config, nothing built. (Its refusals of wrong arguments: tests/test_interface.py.)"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import NEEDS_NIX
from nix_expressions import nix

from make_disk_image import interface
from make_disk_image.arguments import ROWS, with_defaults

REPO = Path(__file__).resolve().parent.parent

needs_nix = NEEDS_NIX


# --- default.nix's literal defaults are the table's, value by value ----------------------

# default.nix with stand-ins for pkgs and config that give every derivation a fixed store
# path, and runCommand its passthru at the top (as nixpkgs' does): its result's `spec` is
# the JSON the engine would get. Nothing is built or written.
SPEC_OF_CALL = """
let
  lib = import REPO/tests/nixpkgs/selected-lib.nix;
  drv = name: { type = "derivation"; name = name;
                outPath = "/nix/store/00000000000000000000000000000000-${name}"; };
  pkgs = {
    inherit lib;
    path = REPO/tests/nixpkgs;
    stdenv.hostPlatform.system = "x86_64-linux";
    writeText = name: text: text;
    runCommand = name: attrs: script: drv name // attrs // (attrs.passthru or { });
    callPackage = f: args: drv "make-disk-image";
    closureInfo = args: drv "closure-info";
    OVMF.fd = drv "OVMF" // { firmware = drv "OVMF_CODE.fd"; variables = drv "OVMF_VARS.fd"; };
    vmTools.runInLinuxVM = d: d;
  };
  config = {
    system.build.toplevel = drv "toplevel";
    system.nixos = { version = "1"; versionSuffix = ""; };
    boot.loader.grub = { enable = false; devices = [ ]; };
    nixpkgs.hostPlatform.system = "x86_64-linux";
  };
in builtins.fromJSON (import REPO/default.nix ({ inherit pkgs lib config; } // ARGS)).spec
"""

# Argument sets whose defaults differ: the constants, and each default rule's cases.
DEFAULT_CASES: list[dict[str, Any]] = [
    {},
    {"onlyNixStore": True, "installBootLoader": False, "partitionTableType": "none"},
    {"fsType": "xfs"},
    {"fsType": "ext2", "partitionTableType": "none", "deterministic": False},
    {"rootGPUID": "01234567-89AB-CDEF-0123-456789ABCDEF"},
    {"partitionTableType": "efi", "touchEFIVars": True},
]


def spec_of_call(arguments: dict[str, Any]) -> dict[str, Any]:
    expr = SPEC_OF_CALL.replace("REPO", str(REPO)).replace("ARGS", nix(arguments))
    proc = subprocess.run(["nix-instantiate", "--readonly-mode", "--eval", "--strict",
                           "--json", "-E", expr],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    spec: dict[str, Any] = json.loads(proc.stdout)
    return spec


@pytest.mark.nix
@needs_nix
def test_default_nix_defaults_are_the_table_s() -> None:
    """Every constant default default.nix's formals write is the table's `default`."""
    spec = spec_of_call({})
    constants = {name: row.default for name, row in ROWS.items() if row.has_default}
    arguments = {name for name, row in ROWS.items() if row.origin != "computed"}
    for name in arguments & set(constants):
        assert spec[name] == constants[name], name
    # All but label and rootFSUID (default rules, below), OVMF, efiFirmware and
    # efiVariables (pkgs'), requireKVM (only Nix reads it) and pkgs, lib and config: a
    # new argument with a constant default is compared here without a change.
    assert len(arguments & set(constants)) >= 21


@pytest.mark.nix
@needs_nix
@pytest.mark.parametrize("arguments", DEFAULT_CASES, ids=lambda a: ",".join(a) or "none")
def test_default_nix_and_the_engine_apply_the_same_defaults(arguments: dict[str, Any]) -> None:
    """Value by value: the spec default.nix writes for a call, and the engine's values for
    a spec with only what default.nix computes and what the caller gave."""
    spec = spec_of_call(arguments)
    computed = {name: spec[name] for name in interface.COMPUTED if name in spec}
    given = {**computed, **arguments}
    # default.nix writes the firmware only with touchEFIVars: the engine has no OVMF.
    for name in ("efiFirmware", "efiVariables"):
        if spec[name] is not None:
            given[name] = spec[name]
    engine = with_defaults(given)
    assert {name: engine[name] for name in spec} == spec
    assert set(spec) == set(ROWS) - ({"system"} - set(spec))
