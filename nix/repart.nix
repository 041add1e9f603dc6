# makeDiskImage.repart: nixpkgs' `image.repart` definitions (nixos/modules/image/repart.nix,
# as they are) built by this engine. With the switch on, system.build.image is the
# engine's image instead of systemd-repart's:
#
#   imports = [ "${modulesPath}/image/repart.nix" ];
#   image.repart = { name = "appliance"; partitions = { ... }; };
#   makeDiskImage.repart.enable = true;
#
# Keys the engine does not build (Verity=, Encrypt=) are refused at evaluation, naming
# the option; the rest of repart.d(5)'s checks run before any slow work in the builder.
{
  config,
  options,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib) mkOption types;
  cfg = config.makeDiskImage.repart;
  hasRepart = options ? image && options.image ? repart;
  refused = {
    Verity = "dm-verity is not built by makeDiskImage.repart";
    VerityMatchKey = "dm-verity is not built by makeDiskImage.repart";
    Encrypt = "encrypted partitions are not built by makeDiskImage.repart";
  };
  refusals = lib.concatLists (
    lib.mapAttrsToList (
      name: p:
      lib.mapAttrsToList (key: message: {
        assertion = !(p.repartConfig ? ${key}) || (key == "Encrypt" && p.repartConfig.${key} == "off");
        message = "image.repart.partitions.${name}.repartConfig.${key}: ${message}; drop the key or build this image with systemd-repart (makeDiskImage.repart.enable = false)";
      }) refused
    ) (if hasRepart then config.image.repart.partitions else { })
  );
  checks = [
    {
      assertion = hasRepart;
      message = "makeDiskImage.repart.enable needs nixpkgs' image.repart options: add (modulesPath + \"/image/repart.nix\") to imports";
    }
  ]
  ++ refusals;
  failed = map (check: check.message) (lib.filter (check: !check.assertion) checks);
  image = import ./repart-image.nix {
    inherit pkgs lib config;
    inherit (cfg) format nixDatabase;
  };
in
{
  options.makeDiskImage.repart = {
    enable = mkOption {
      type = types.bool;
      default = false;
      description = "Build system.build.image from image.repart's definitions with make-disk-image's engine instead of systemd-repart.";
    };
    format = mkOption {
      type = types.enum [
        "raw"
        "qcow2"
        "qcow2-compressed"
        "qcow2-zstd"
        "vdi"
        "vpc"
        "vmdk"
        "vhdx"
      ];
      default = "raw";
      description = "The image's format (raw: nixpkgs' `<imageFileBasename>.raw`).";
    };
    nixDatabase = mkOption {
      type = types.bool;
      default = true;
      description = "Register the store paths of a root partition that holds /nix/store in its Nix database (nixpkgs #508743).";
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = checks;
    # Also when the image is built on its own (not through the system's toplevel).
    system.build.image = lib.mkOverride 90 (
      if failed == [ ] then image else throw (lib.concatStringsSep "\n" failed)
    );
  };
}
