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
        description = "The full NixOS version (e.g. `16.03.1160.f2d4ee1`).";
      };
      release = mkOption {
        readOnly = true;
        type = types.str;
        default = lib.trivial.release;
        description = "The NixOS release (e.g. `16.03`).";
      };
      versionSuffix = mkOption {
        internal = true;
        type = types.str;
        default = lib.trivial.versionSuffix;
        description = "The NixOS version suffix (e.g. `1160.f2d4ee1`).";
      };
      revision = mkOption {
        internal = true;
        type = types.nullOr types.str;
        default = lib.trivial.revisionWithDefault null;
        description = "The Git revision from which this NixOS configuration was built.";
      };
      codeName = mkOption {
        readOnly = true;
        type = types.str;
        default = lib.trivial.codeName;
        description = "The NixOS release code name (e.g. `Emu`).";
      };
      tags = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "Strings to prefix to the default system.nixos.label.";
      };
      label = mkOption {
        type = types.strMatching "[a-zA-Z0-9:_\\.-]*";
        description = "NixOS version name to be used in the names of generated outputs and boot labels.";
      };
    };
    stateVersion = mkOption {
      type = types.str;
      default = cfg.release;
      description = "The NixOS release with which stateful data on this system is compatible.";
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
    ) "system.stateVersion is not set, defaulting to ${config.system.stateVersion}. Read why this matters on https://nixos.org/manual/nixos/stable/options.html#opt-system.stateVersion.";
  };
}
