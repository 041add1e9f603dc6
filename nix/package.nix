# The make-disk-image engine as a Python application, built from setup.cfg.
{
  lib,
  python3Packages,
}:
let
  root = ../.;
  # The engine's own files only: the make_disk_image/ tree and the project's metadata.
  # Neither the tests nor the test system (tests/, testsys/) are part of it, so editing
  # them, or the docs and Nix files, leaves the engine's store path, and every image
  # built with it, as it was (tests/test_product.py checks these lists). The unit tests
  # run from the checkout (./run-tests, CI), against the same source.
  files = [
    "setup.cfg"
    "pyproject.toml"
  ];
  trees = [ "make_disk_image" ];
  wanted =
    path: type:
    let
      relative = lib.removePrefix "${toString root}/" (toString path);
      inTree = lib.any (tree: relative == tree || lib.hasPrefix "${tree}/" relative) trees;
    in
    baseNameOf path != "__pycache__" && (inTree || builtins.elem relative files);
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

  # A smoke test: the installed engine loads and answers (pythonImportsCheck: nixpkgs').
  pythonImportsCheck = [
    "make_disk_image.cli"
    "make_disk_image.vm"
  ];
  checkPhase = ''
    runHook preCheck
    $out/bin/make-disk-image --help > /dev/null
    runHook postCheck
  '';

  meta = {
    description = "NixOS disk images built by a typed Python engine; a drop-in for make-disk-image.nix";
    license = lib.licenses.mit or "MIT";
    mainProgram = "make-disk-image";
  };
}
