# The stand-in's nixos/lib/eval-config.nix: as nixpkgs', a thin wrapper around
# lib.evalModules (class "nixos", `modulesPath` as a special argument). The base modules
# are the stand-in's (../modules/module-list.nix), which declare, with nixpkgs' names,
# types and defaults, only the options make-disk-image and its tests use; any other
# option is an error, as with nixpkgs ("The option `...' does not exist").
evalConfigArgs@{
  # As nixpkgs': pass `null` to set it in a module (nixpkgs.hostPlatform / nixpkgs.system).
  system ? builtins.currentSystem,
  pkgs ? null,
  baseModules ? (
    let
      pkgsModule = rec {
        _file = ./eval-config.nix;
        key = _file;
        config = lib.mkMerge (
          lib.optional (system != null) { nixpkgs.system = lib.mkDefault system; }
          # Default priority, so that it conflicts with a user-defined nixpkgs.pkgs.
          ++ lib.optional (pkgs != null) { nixpkgs.pkgs = pkgs; }
        );
      };
    in
    import ../modules/module-list.nix ++ [ pkgsModule ]
  ),
  specialArgs ? { },
  modules,
  modulesLocation ? (builtins.unsafeGetAttrPos "modules" evalConfigArgs).file or null,
  prefix ? [ ],
  lib ? import ../../selected-lib.nix,
  extraModules ? [ ],
}:
let
  evalModulesMinimal =
    {
      prefix ? [ ],
      modules ? [ ],
      specialArgs ? { },
    }:
    lib.evalModules {
      inherit prefix modules;
      class = "nixos";
      specialArgs = {
        modulesPath = builtins.toString ../modules;
      }
      // specialArgs;
    };

  # Inline modules without a location of their own are reported at the caller's file.
  allUserModules =
    if modulesLocation == null then
      modules
    else
      map (lib.setDefaultModuleLocation modulesLocation) modules;

  modulesModule = {
    config._module.args = {
      inherit
        noUserModules
        baseModules
        extraModules
        modules
        ;
    };
  };

  noUserModules = evalModulesMinimal {
    inherit prefix specialArgs;
    modules = baseModules ++ extraModules ++ [ modulesModule ];
  };

  nixosWithUserModules = noUserModules.extendModules { modules = allUserModules; };

  withExtraAttrs =
    configuration:
    configuration
    // {
      inherit (configuration._module.args) pkgs;
      inherit lib;
      extendModules = args: withExtraAttrs (configuration.extendModules args);
    };
in
withExtraAttrs nixosWithUserModules
