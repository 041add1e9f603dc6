# The package set of the system, as nixpkgs' nixos/modules/misc/nixpkgs.nix chooses it:
# nixpkgs.pkgs when set (with nixpkgs.overlays applied over it), else the stand-in
# imported for nixpkgs.hostPlatform (or the legacy nixpkgs.system) with the overlays.
{
  config,
  options,
  lib,
  ...
}:
let
  cfg = config.nixpkgs;
  opt = options.nixpkgs;

  overlayType = lib.mkOptionType {
    name = "nixpkgs-overlay";
    description = "nixpkgs overlay";
    check = lib.isFunction;
    merge = lib.mergeOneOption;
  };

  applyOverlays =
    pkgs: overlays:
    let
      final = builtins.foldl' (prev: overlay: prev // overlay final prev) pkgs overlays;
    in
    final;

  finalPkgs =
    if opt.pkgs.isDefined then
      applyOverlays cfg.pkgs cfg.overlays
    else
      import ../../../pkgs.nix {
        inherit (cfg.hostPlatform) system;
        inherit (cfg) overlays;
      };
in
{
  options.nixpkgs = {
    pkgs = lib.mkOption {
      type = lib.types.pkgs;
      description = "If set, the pkgs argument to all NixOS modules is the value of this option.";
    };
    overlays = lib.mkOption {
      default = [ ];
      type = lib.types.listOf overlayType;
      description = "List of overlays to apply to Nixpkgs.";
    };
    hostPlatform = lib.mkOption {
      type = lib.types.either lib.types.str lib.types.attrs;
      example = {
        system = "aarch64-linux";
      };
      apply = lib.systems.elaborate;
      description = "Specifies the platform where the NixOS configuration will run.";
    };
    system = lib.mkOption {
      type = lib.types.str;
      example = "i686-linux";
      default =
        if opt.hostPlatform.isDefined then
          throw ''
            Neither nixpkgs.system nor any other option in nixpkgs.* is meant
            to be read by modules and configurations.
            Use pkgs.stdenv.hostPlatform instead.
          ''
        else
          throw ''
            Neither nixpkgs.hostPlatform nor the legacy option nixpkgs.system has been set.
            You can set nixpkgs.hostPlatform in hardware-configuration.nix by re-running
            a recent version of nixos-generate-config.
            The option nixpkgs.system is still fully supported for NixOS 22.05 interoperability,
            but will be deprecated in the future, so we recommend to set nixpkgs.hostPlatform.
          '';
      description = "Specifies the Nix platform type on which NixOS should be built.";
    };
  };

  config = {
    nixpkgs.hostPlatform = lib.mkOptionDefault cfg.system;
    _module.args.pkgs = finalPkgs;
  };
}
