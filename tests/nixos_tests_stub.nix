# nixos-tests/ evaluated against a stub of the few nixpkgs names it uses (there is no
# nixpkgs here): every test must evaluate, with its image arguments, node module and
# test script. Used by tests/test_nixos_tests_parse.py.
{ nixosTests, isx86 ? true }:
let
  upper = [ "A" "B" "C" "D" "E" "F" "G" "H" "I" "J" "K" "L" "M" "N" "O" "P" "Q" "R" "S" "T" "U" "V" "W" "X" "Y" "Z" ];
  lower = [ "a" "b" "c" "d" "e" "f" "g" "h" "i" "j" "k" "l" "m" "n" "o" "p" "q" "r" "s" "t" "u" "v" "w" "x" "y" "z" ];
  lib = {
    inherit (builtins) listToAttrs;
    optionalAttrs = cond: attrs: if cond then attrs else { };
    mkIf = condition: content: { _type = "if"; inherit condition content; };
    toLower = builtins.replaceStrings upper lower;
  };
  fakePath = name: "/nix/store/00000000000000000000000000000000-${name}";
  pkgs = {
    inherit lib;
    stdenv.hostPlatform.isx86 = isx86;
    testers.runNixOSTest = module: module;
    runCommand = name: _env: _script: fakePath name;
    writeText = name: text: { outPath = fakePath name; inherit text; };
    efibootmgr = fakePath "efibootmgr";
  };
  makeDiskImage = args: { outPath = fakePath "image"; inherit args; };
  node = {
    system.build.toplevel = fakePath "nixos-system-machine";
    system.nixos = { version = "26.05pre-test"; codeName = "Stub"; };
    virtualisation = {
      efi = { OVMF = fakePath "OVMF"; firmware = fakePath "OVMF_CODE.fd"; variables = fakePath "OVMF_VARS.fd"; };
      qemu.package = fakePath "qemu";
    };
  };
  tests = import nixosTests { inherit pkgs makeDiskImage; };
  evaluate = module:
    let
      test = module { config.nodes.machine = node; };
      machine = test.nodes.machine { inherit lib pkgs; };
    in
    {
      inherit (test) name testScript;
      imageArgs = removeAttrs test.passthru.image.args [ "pkgs" "lib" "config" ];
      expected = test.passthru.expected;
      node = machine // { boot = machine.boot // { loader = machine.boot.loader // {
        systemd-boot = let s = machine.boot.loader.systemd-boot; in if s.condition then s.content else null;
      }; }; };
    };
in
builtins.mapAttrs (_: evaluate) tests
