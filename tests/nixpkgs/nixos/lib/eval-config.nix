# The stand-in's nixos/lib/eval-config.nix (lib.nixosSystem): the arguments of
# nixpkgs' file, and a NixOS system as lib.evalModules makes it, of class "nixos" with
# `modulesPath` among the special arguments. The base modules are the stand-in's
# (../modules/module-list.nix): they declare, with nixpkgs' names, types and defaults,
# only the options make-disk-image and its tests use, so any other option is an error,
# as with nixpkgs ("The option `...' does not exist").
args@{
  # null: the platform comes from the modules (nixpkgs.hostPlatform or nixpkgs.system).
  system ? builtins.currentSystem,
  # A package set for the modules' `pkgs` (nixpkgs.pkgs), instead of importing one.
  pkgs ? null,
  baseModules ? import ../modules/module-list.nix,
  extraModules ? [ ],
  modules,
  specialArgs ? { },
  prefix ? [ ],
  # Where the caller's inline modules are reported to come from.
  modulesLocation ? (builtins.unsafeGetAttrPos "modules" args).file or null,
  lib ? import ../../selected-lib.nix,
}:
let
  # What the arguments say about nixpkgs.*: the system as a default a module may
  # override; pkgs at normal priority, so that a module setting it too is a conflict.
  argumentsModule = {
    _file = ./eval-config.nix;
    key = "${toString ./eval-config.nix}#arguments";
    config = lib.mkMerge [
      (lib.optionalAttrs (system != null) { nixpkgs.system = lib.mkDefault system; })
      (lib.optionalAttrs (pkgs != null) { nixpkgs.pkgs = pkgs; })
    ];
  };

  located = map (
    module: if modulesLocation == null then module else lib.setDefaultModuleLocation modulesLocation module
  );

  # The module lists are arguments of every module, as with nixpkgs.
  listsModule = {
    _module.args = {
      inherit baseModules extraModules modules;
      noUserModules = base;
    };
  };

  # The system without the caller's modules, then extended with them: extendModules
  # (images.nix) and noUserModules start from the same evaluation.
  base = lib.evalModules {
    inherit prefix;
    class = "nixos";
    specialArgs = {
      modulesPath = toString ../modules;
    }
    // specialArgs;
    modules = baseModules ++ [ argumentsModule ] ++ extraModules ++ [ listsModule ];
  };

  # nixosSystem's result also carries pkgs and lib, and so does every extension of it.
  withPkgsAndLib =
    evaluation:
    evaluation
    // {
      inherit (evaluation._module.args) pkgs;
      inherit lib;
      extendModules = extension: withPkgsAndLib (evaluation.extendModules extension);
    };
in
withPkgsAndLib (base.extendModules { modules = located modules; })
