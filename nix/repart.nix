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
  defaultMountPoint =
    type:
    if lib.elem type [
      "root"
      "root-x86-64"
      "root-arm64"
    ] then
      "/"
    else if type == "esp" then
      config.boot.loader.efi.efiSysMountPoint or "/boot"
    else
      null;
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
    bootLoader =
      if cfg.installBootLoader then { inherit (cfg) mountPoints grubDevices; } else null;
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
    installBootLoader = mkOption {
      type = types.bool;
      default = false;
      description = "Install the system's boot loader into the image with its own switch-to-configuration, in the build VM (GRUB, systemd-boot), as makeDiskImage's installBootLoader.";
    };
    mountPoints = mkOption {
      type = types.attrsOf types.str;
      default = lib.mapAttrs (_: p: defaultMountPoint p.repartConfig.Type) (
        lib.filterAttrs (_: p: defaultMountPoint (p.repartConfig.Type or "") != null) (
          if hasRepart then config.image.repart.partitions else { }
        )
      );
      defaultText = lib.literalMD "the root partition (`Type = \"root\"`) at `/`, the ESP at `boot.loader.efi.efiSysMountPoint`";
      description = "With installBootLoader: where each partition (by definition name) is mounted while the boot loader is installed.";
    };
    grubDevices = mkOption {
      type = types.listOf types.str;
      default = config.boot.loader.grub.devices or [ ];
      defaultText = lib.literalMD "`boot.loader.grub.devices`";
      description = "With installBootLoader: GRUB's devices, all of them the image (/dev/vda in the build VM).";
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
