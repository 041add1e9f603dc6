# system.nixos.* and system.stateVersion, as nixpkgs' nixos/modules/misc/version.nix
# and misc/label.nix declare them.
{
  config,
  options,
  lib,
  ...
}:
let
  cfg = config.system.nixos;
  inherit (lib) mkOption types;
in
{
  options.system = {
    nixos = {
      version = mkOption {
        internal = true;
        type = types.str;
        description = "Release and suffix together, as nixos-version prints it.";
      };
      release = mkOption {
        readOnly = true;
        type = types.str;
        default = lib.trivial.release;
        description = "Release number, YY.MM.";
      };
      versionSuffix = mkOption {
        internal = true;
        type = types.str;
        default = lib.trivial.versionSuffix;
        description = "What follows the release in the version.";
      };
      revision = mkOption {
        internal = true;
        type = types.nullOr types.str;
        default = lib.trivial.revisionWithDefault null;
        description = "Commit of the nixpkgs the system came from, where known.";
      };
      codeName = mkOption {
        readOnly = true;
        type = types.str;
        default = lib.trivial.codeName;
        description = "Code name of the release.";
      };
      tags = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "Words put before the version in the default label.";
      };
      label = mkOption {
        type = types.strMatching "[a-zA-Z0-9:_\\.-]*";
        description = "Short name of this build, used in store path names and boot menus.";
      };
    };
    stateVersion = mkOption {
      type = types.str;
      default = cfg.release;
      description = "Release whose on-disk state formats the system keeps to.";
    };
  };

  config = {
    system.nixos = {
      version = lib.mkDefault (cfg.release + cfg.versionSuffix);
      label = lib.mkDefault (
        lib.concatStringsSep "-" ((lib.sort (x: y: x < y) cfg.tags) ++ [ cfg.version ])
      );
    };
    warnings = lib.optional (
      options.system.stateVersion.highestPrio == (lib.mkOptionDefault { }).priority
    ) "system.stateVersion is not set, defaulting to ${config.system.stateVersion}: set it to the release the system was first installed with.";
  };
}
