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
  root = ../.;
  # The unit test modules that can run in a build sandbox: the others build store
  # paths with nix-build (testsys/), boot VMs, read the host's kernel or need Nix
  # itself (test_nixos_tests_parse.py), which a sandboxed build cannot do. Those run in
  # the flake's image checks and in CI.
  sandboxTestModules = builtins.filter (path: builtins.pathExists (root + "/${path}")) [
    "tests/test_spec.py"
    "tests/test_layouts.py"
    "tests/test_staging.py"
    "tests/test_utils.py"
  ];
  # Only what the package is built and checked from, so that a change elsewhere (docs,
  # other tests, Nix files) leaves the engine's store path, and every image built with
  # it, as it was. conftest.py imports testsys.system.
  files = [
    "setup.cfg"
    "pyproject.toml"
    "tests/conftest.py"
    # test_layouts compares with the reference's recorded facts.
    "tests/reference_facts.py"
    "tests/reference_facts.json"
    "testsys/__init__.py"
    "testsys/system.py"
  ]
  ++ sandboxTestModules;
  trees = [ "make_disk_image" ];
  parents = [
    "tests"
    "testsys"
  ];
  wanted =
    path: type:
    let
      relative = lib.removePrefix "${toString root}/" (toString path);
      inTree = lib.any (tree: relative == tree || lib.hasPrefix "${tree}/" relative) trees;
    in
    baseNameOf path != "__pycache__"
    && (
      inTree
      || builtins.elem relative files
      || (type == "directory" && builtins.elem relative parents)
    );
in
python3Packages.buildPythonApplication {
  pname = "make-disk-image";
  # One version, setup.cfg's.
  version = builtins.head (
    builtins.match ".*\nversion = ([^\n]+)\n.*" (builtins.readFile ../setup.cfg)
  );
  pyproject = true;

  src = lib.cleanSourceWith {
    src = lib.cleanSource root;
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
