# The make-disk-image engine as a Python application, built from setup.cfg.
{
  lib,
  python3Packages,
  e2fsprogs,
  dosfstools,
  mtools,
  gptfdisk,
  util-linux,
  parted,
  qemu-utils,
}:
let
  # The whole checkout (the unit tests read files beside the package, e.g.
  # nixos-tests/), without caches and build results.
  wanted =
    path: type:
    !(builtins.elem (baseNameOf path) [
      "__pycache__"
      ".pytest_cache"
      ".mypy_cache"
      ".ruff_cache"
    ]);
  # The unit test modules that can run in a build sandbox: the others build store
  # paths with nix-build (testsys/), boot VMs, or read the host's kernel, which a
  # sandboxed build cannot do. Those run in the flake's image checks and in CI.
  sandboxTestModules = builtins.filter (path: builtins.pathExists (../. + "/${path}")) [
    "tests/test_spec.py"
    "tests/test_layouts.py"
    "tests/test_staging.py"
    "tests/test_utils.py"
    "tests/test_nixos_tests_parse.py"
  ];
in
python3Packages.buildPythonApplication {
  pname = "make-disk-image";
  # One version, setup.cfg's.
  version = builtins.head (
    builtins.match ".*\nversion = ([^\n]+)\n.*" (builtins.readFile ../setup.cfg)
  );
  pyproject = true;

  src = lib.cleanSourceWith {
    src = lib.cleanSource ../.;
    filter = wanted;
    name = "make-disk-image-source";
  };

  build-system = [ python3Packages.setuptools ];
  dependencies = with python3Packages; [
    pyparted
    pyudev
  ];

  # The unit tests run the engine's tools on files.
  nativeCheckInputs = [
    python3Packages.pytest
    e2fsprogs
    dosfstools
    mtools
    gptfdisk
    util-linux
    parted
    qemu-utils
  ];
  checkPhase = ''
    runHook preCheck
    python3 -m pytest -p no:cacheprovider -m "not vm and not nix and not boot" \
      ${lib.concatStringsSep " " sandboxTestModules}
    runHook postCheck
  '';

  meta = {
    description = "NixOS disk images built by a typed Python engine; a drop-in for make-disk-image.nix";
    license = lib.licenses.mit or "MIT";
    mainProgram = "make-disk-image";
  };
}
