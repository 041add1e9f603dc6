"""The stand-in's own lib (tests/nixpkgs/lib): its module system is as strict as
nixpkgs' where the project's Nix code could go wrong, with nixpkgs' messages, and the
rest of the lib the project uses has nixpkgs' semantics.

Every case is `nix-instantiate --eval` over tests/nixpkgs/selected-lib.nix, so with
MDI_NIXPKGS_LIB=DIR the same assertions run against a real nixpkgs lib: what passes
with both is nixpkgs' behaviour, not only the stand-in's. Seconds in all.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import NEEDS_NIX

REPO = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.nix,
    NEEDS_NIX,
]

# `eval MODULES` evaluates modules after a module declaring a few options of the
# types the project uses; each test module names its file, so messages can be matched.
PRELUDE = """
let
  lib = import REPO/tests/nixpkgs/selected-lib.nix;
  inherit (lib) mkOption types;
  declarations = {
    _file = "declarations.nix";
    options = {
      flag = mkOption { type = types.bool; default = false; };
      name = mkOption { type = types.str; };
      names = mkOption { type = types.listOf types.str; default = [ ]; };
      size = mkOption {
        type = types.either (types.enum [ "auto" ]) types.ints.positive;
        default = "auto";
      };
      fixed = mkOption { type = types.str; readOnly = true; default = "built-in"; };
      result = mkOption { type = types.str; readOnly = true; };
      users = mkOption {
        default = { };
        type = types.attrsOf (types.submodule ({ name, ... }: {
          options.uid = mkOption { type = types.nullOr types.ints.unsigned; default = null; };
          options.home = mkOption { type = types.str; default = "/home/${name}"; };
        }));
      };
      build = mkOption {
        default = { };
        type = types.submoduleWith {
          modules = [ { freeformType = types.lazyAttrsOf (types.uniq types.unspecified); } ];
        };
      };
    };
  };
  eval = modules: lib.evalModules { modules = [ declarations ] ++ modules; };
  config = modules: (eval modules).config;
in
"""


def nix_eval(body: str) -> subprocess.CompletedProcess[str]:
    expr = PRELUDE.replace("REPO", str(REPO)) + body
    return subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "-E", expr],
        capture_output=True,
        text=True,
        check=False,
    )


def evaluated(body: str) -> Any:
    proc = nix_eval(body)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def eval_error(body: str) -> str:
    proc = nix_eval(body)
    assert proc.returncode != 0, f"evaluated, expected an error: {proc.stdout}"
    # Nix indents continuation lines of an error message.
    return "\n".join(line.strip() for line in proc.stderr.splitlines())


# The strictness cases: (Nix expression, what nixpkgs says).
STRICT = {
    "wrong-type": (
        '(config [ { _file = "a.nix"; flag = "yes"; } ]).flag',
        [
            "A definition for option `flag' is not of type `boolean'.",
            "- In `a.nix': \"yes\"",
        ],
    ),
    "wrong-type-in-list": (
        '(config [ { _file = "a.nix"; names = [ "x" 3 ]; } ]).names',
        ['A definition for option `names."[definition 1-entry 2]"\' is not of type `string\'.'],
    ),
    "wrong-type-in-submodule": (
        '(config [ { _file = "a.nix"; users.bob.uid = -1; } ]).users.bob.uid',
        [
            "A definition for option `users.bob.uid' is not of type "
            "`null or (unsigned integer, meaning >=0)'."
        ],
    ),
    "wrong-type-either": (
        '(config [ { _file = "a.nix"; size = 0; } ]).size',
        [
            "A definition for option `size' is not of type "
            "`value \"auto\" (singular enum) or (positive integer, meaning >0)'."
        ],
    ),
    "nonexistent": (
        '(config [ { _file = "a.nix"; flga = true; } ]).flag',
        ["The option `flga' does not exist. Definition values:", "- In `a.nix': true"],
    ),
    "nonexistent-nested": (
        '(config [ { _file = "a.nix"; users.bob.shell = "/bin/sh"; } ]).users.bob.home',
        ["The option `users.bob.shell' does not exist."],
    ),
    "used-but-undefined": (
        "(config [ ]).name",
        ["The option `name' was accessed but has no value defined. Try setting the option."],
    ),
    "conflicting": (
        '(config [ { _file = "a.nix"; name = "one"; } { _file = "b.nix"; name = "two"; } ]).name',
        [
            "The option `name' has conflicting definition values:",
            "- In `a.nix': \"one\"",
            "- In `b.nix': \"two\"",
            "Use `lib.mkForce value` or `lib.mkDefault value` to change the priority on any of "
            "these definitions.",
        ],
    ),
    "conflicting-unique": (
        '(config [ { _file = "a.nix"; build.x = 1; } { _file = "b.nix"; build.x = 2; } ]).build.x',
        ["The option `build.x' is defined multiple times while it's expected to be unique."],
    ),
    "read-only-with-default": (
        '(config [ { _file = "a.nix"; fixed = "mine"; } ]).fixed',
        [
            "The option `fixed' is read-only, but it's set multiple times. Definition values:",
            "- In `declarations.nix': \"built-in\"",
            "- In `a.nix': \"mine\"",
        ],
    ),
    "read-only-twice": (
        '(config [ { _file = "a.nix"; result = "a"; } { _file = "b.nix"; result = "b"; } ]).result',
        ["The option `result' is read-only, but it's set multiple times."],
    ),
    "mkIf-non-boolean": (
        '(config [ { flag = lib.mkIf "yes" true; } ]).flag',
        ["‘mkIf’ called with a non-Boolean condition"],
    ),
    "assertOneOf": (
        'lib.assertOneOf "format" "iso" [ "raw" "qcow2" ]',
        ['format must be one of [\n"raw"\n"qcow2"\n], but is: "iso"'],
    ),
}


@pytest.mark.parametrize("case", list(STRICT), ids=list(STRICT))
def test_fails_as_nixpkgs_does(case: str) -> None:
    expr, messages = STRICT[case]
    stderr = eval_error(expr)
    for message in messages:
        assert message in stderr, stderr[-3000:]


def test_priorities_decide_between_definitions() -> None:
    got = evaluated("""
      let
        force = config [ { name = "plain"; } { name = lib.mkForce "forced"; } ];
        default = config [ { name = "plain"; } { name = lib.mkDefault "default"; } ];
        optionDefault = config [
          { name = lib.mkOptionDefault "od"; }
          { name = lib.mkDefault "d"; }
        ];
        override = config [ { name = lib.mkOverride 10 "ten"; } { name = lib.mkForce "fifty"; } ];
        options = (eval [ { name = lib.mkDefault "x"; } ]).options;
      in {
        inherit (force) name;
        defaultName = default.name;
        optionDefaultName = optionDefault.name;
        overrideName = override.name;
        # An option with only its declared default has mkOptionDefault's priority.
        flagPrio = options.flag.highestPrio;
        namePrio = options.name.highestPrio;
        defined = [ options.name.isDefined (eval [ ]).options.name.isDefined ];
      }
    """)
    assert got == {
        "name": "forced",
        "defaultName": "plain",
        "optionDefaultName": "d",
        "overrideName": "ten",
        "flagPrio": 1500,
        "namePrio": 1000,
        "defined": [True, False],
    }


def test_conditions_merges_and_lists() -> None:
    got = evaluated("""
      let
        # A condition may read the configuration it is part of.
        cfg = config [
          ({ config, ... }: lib.mkIf config.flag { names = [ "on" ]; })
          { flag = true; names = lib.mkMerge [ [ "a" ] (lib.mkIf false [ "never" ]) ]; }
          { users = lib.mkMerge [ { alice.uid = 1000; } (lib.mkIf false { eve = { }; }) ]; }
        ];
      in {
        names = lib.sort (a: b: a < b) cfg.names;
        users = cfg.users;
      }
    """)
    assert got == {
        "names": ["a", "on"],
        "users": {"alice": {"uid": 1000, "home": "/home/alice"}},
    }


def test_module_arguments_imports_and_extension() -> None:
    got = evaluated("""
      let
        shared = { _file = "shared.nix"; key = "shared"; names = [ "shared" ]; };
        base = lib.evalModules {
          specialArgs.greeting = "hello";
          modules = [
            declarations
            { imports = [ shared ]; }
            { imports = [ shared ]; _module.args.suffix = "!"; }
            ({ greeting, suffix, ... }: { name = greeting + suffix; })
          ];
        };
        extended = base.extendModules { modules = [ { flag = true; } ]; };
        freeform = (config [ { build.anything = 1; build.other = "x"; } ]).build;
      in {
        inherit (base.config) name names;
        flags = [ base.config.flag extended.config.flag ];
        extendedName = extended.config.name;
        inherit freeform;
      }
    """)
    assert got == {
        "name": "hello!",
        # Imported twice, included once (same key).
        "names": ["shared"],
        "flags": [False, True],
        "extendedName": "hello!",
        "freeform": {"anything": 1, "other": "x"},
    }


def test_platforms_the_project_builds_for() -> None:
    got = evaluated("""
      map (system: let p = lib.systems.elaborate system; in {
        inherit (p) system efiArch isx86 isx86_64 isAarch64 isLinux;
        cpu = p.parsed.cpu.name;
        linuxArch = p.linuxArch;
      }) [ "x86_64-linux" "aarch64-linux" ]
    """)
    assert got == [
        {
            "system": "x86_64-linux",
            "efiArch": "x64",
            "isx86": True,
            "isx86_64": True,
            "isAarch64": False,
            "isLinux": True,
            "cpu": "x86_64",
            "linuxArch": "x86_64",
        },
        {
            "system": "aarch64-linux",
            "efiArch": "aa64",
            "isx86": False,
            "isx86_64": False,
            "isAarch64": True,
            "isLinux": True,
            "cpu": "aarch64",
            "linuxArch": "arm64",
        },
    ]


def test_helpers_the_project_uses() -> None:
    got = evaluated("""
      {
        binPath = lib.makeBinPath [ "/a" { outPath = "/b"; } ];
        subtract = lib.subtractLists [ 2 ] [ 1 2 3 ];
        flatten = lib.flatten [ 1 [ 2 [ 3 ] ] ];
        recursive = lib.recursiveUpdate { a.b = 1; a.c = 2; } { a.c = 3; d = 4; };
        prefix = [ (lib.hasPrefix "ab" "abc") (lib.removePrefix "ab" "abc") ];
        lower = lib.toLower "ABC-def";
        attrs = lib.mapAttrsToList (n: v: n + v)
          (lib.filterAttrs (n: _: n != "b") { a = "1"; b = "2"; });
        assertMsg = lib.assertMsg true "unused";
        version = builtins.isString lib.trivial.release && builtins.isString lib.version;
        mit = lib.licenses.mit.spdxId;
      }
    """)
    assert got == {
        "binPath": "/a/bin:/b/bin",
        "subtract": [1, 3],
        "flatten": [1, 2, 3],
        "recursive": {"a": {"b": 1, "c": 3}, "d": 4},
        "prefix": [True, "c"],
        "lower": "abc-def",
        "attrs": ["a1"],
        "assertMsg": True,
        "version": True,
        "mit": "MIT",
    }


def test_assert_msg_fails_with_its_message() -> None:
    stderr = eval_error('lib.assertMsg false "requireKVM must be true or false"')
    assert "requireKVM must be true or false" in stderr


def test_selected_lib_follows_the_variable_then_a_copied_lib(tmp_path: Path) -> None:
    """selected-lib.nix: MDI_NIXPKGS_LIB first; else external-lib (what flake tests copy
    into their checkout, since flakes see no environment); else the stand-in's own."""
    stand_in = tmp_path / "nixpkgs"
    stand_in.mkdir()
    shutil.copy(REPO / "tests/nixpkgs/selected-lib.nix", stand_in)
    for name in ("lib", "external-lib", "elsewhere"):
        target = tmp_path / name if name == "elsewhere" else stand_in / name
        target.mkdir()
        (target / "default.nix").write_text(f'{{ marker = "{name}"; }}\n')

    def marker(variable: str) -> str:
        env = {k: v for k, v in os.environ.items() if k != "MDI_NIXPKGS_LIB"}
        if variable:
            env["MDI_NIXPKGS_LIB"] = variable
        proc = subprocess.run(
            ["nix-instantiate", "--eval", "--json", "-E",
             f"(import {stand_in}/selected-lib.nix).marker"],
            capture_output=True, text=True, check=False, env=env,
        )
        assert proc.returncode == 0, proc.stderr
        return str(json.loads(proc.stdout))

    assert marker(str(tmp_path / "elsewhere")) == "elsewhere"
    assert marker("") == "external-lib"
    shutil.rmtree(stand_in / "external-lib")
    assert marker("") == "lib"


def test_order_and_definedness_look_at_the_values() -> None:
    """mkBefore / mkAfter order list definitions; whether an option is defined depends on
    its winning values evaluating (nixpkgs reads each one's `_type`), so a definition
    that throws makes isDefined throw, which tryEval catches."""
    got = evaluated("""
      let
        cfg = config [
          { names = [ "middle" ]; }
          { names = lib.mkAfter [ "last" ]; }
          { names = lib.mkBefore [ "first" ]; }
        ];
        opts = (eval [ { name = throw "no name"; } ]).options;
      in {
        inherit (cfg) names;
        defined = builtins.tryEval opts.name.isDefined;
      }
    """)
    assert got == {
        "names": ["first", "middle", "last"],
        "defined": {"success": False, "value": False},
    }
