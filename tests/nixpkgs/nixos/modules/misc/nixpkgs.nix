# The package set of the system, as nixpkgs' nixos/modules/misc/nixpkgs.nix chooses it:
# nixpkgs.pkgs when set (with nixpkgs.overlays applied over it), else the stand-in
# imported for nixpkgs.hostPlatform (or the legacy nixpkgs.system) with the overlays and
# nixpkgs.config.
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
        # nixpkgs.hostPlatform where set, else the legacy nixpkgs.system (nixpkgs'
        # localSystem default).
        system = if opt.hostPlatform.isDefined then cfg.hostPlatform.system else cfg.system;
        inherit (cfg) overlays config;
      };
in
{
  options.nixpkgs = {
    pkgs = lib.mkOption {
      type = lib.types.pkgs;
      description = "A package set to use as the modules' pkgs instead of importing one.";
    };
    config = lib.mkOption {
      default = { };
      type = lib.types.attrs;
      description = "nixpkgs' configuration, passed to the package set it imports.";
    };
    overlays = lib.mkOption {
      default = [ ];
      type = lib.types.listOf overlayType;
      description = "Overlays applied, in order, to the package set.";
    };
    hostPlatform = lib.mkOption {
      type = lib.types.either lib.types.str lib.types.attrs;
      example = {
        system = "aarch64-linux";
      };
      apply = lib.systems.elaborate;
      description = "Platform the system runs on (a system string or a platform set).";
    };
    system = lib.mkOption {
      type = lib.types.str;
      example = "i686-linux";
      default =
        if opt.hostPlatform.isDefined then
          throw "nixpkgs.system is only an input: read pkgs.stdenv.hostPlatform.system instead."
        else
          throw "Neither nixpkgs.hostPlatform nor the legacy option nixpkgs.system has been set: set nixpkgs.hostPlatform (e.g. \"x86_64-linux\").";
      description = "Older way to name the platform, as a system string.";
    };
  };

  config = {
    _module.args.pkgs = finalPkgs;
  };
}
