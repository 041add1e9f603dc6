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
  # Unmarked tests that read the host's kernel and modules (/boot, /lib/modules),
  # which a build sandbox does not have.
  disabledTests = [ "test_initramfs" ];
in
python3Packages.buildPythonApplication {
  pname = "make-disk-image";
  version = "0.1.0";
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

  # The unit tests run the engine's tools on files; tests that boot a VM, run Nix or
  # boot an image cannot run in the build sandbox.
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
      -k "not (${lib.concatStringsSep " or " disabledTests})" tests
    runHook postCheck
  '';

  meta = {
    description = "NixOS disk images built by a typed Python engine; a drop-in for make-disk-image.nix";
    license = lib.licenses.mit or "MIT";
    mainProgram = "make-disk-image";
  };
}
