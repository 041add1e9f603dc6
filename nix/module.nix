# The flake's nixosModules.default: makeDiskImage's arguments as typed NixOS options
# under `makeDiskImage.*`, and the image as config.system.build.diskImage:
#
#   nix build .#nixosConfigurations.HOST.config.system.build.diskImage
#
# Where the nixpkgs revision has image.modules (`nixos-rebuild build-image`), the same
# image is also the image variant `make-disk-image`:
#
#   nixos-rebuild build-image --image-variant make-disk-image --flake .#HOST
#
# Options left unset are not passed, so default.nix's defaults (the reference's) apply;
# the constant ones are repeated here only so that they show up as option defaults.
{
  config,
  options,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib) mkOption types;
  cfg = config.makeDiskImage;
  opts = options.makeDiskImage;

  makeDiskImage = import ../default.nix;

  # File name extensions of the image, as finish.py (and the reference) names it.
  extensions = {
    raw = "img";
    qcow2 = "qcow2";
    qcow2-compressed = "qcow2";
    vdi = "vdi";
    vpc = "vhd";
  };

  contentsEntry = types.submodule {
    options = {
      source = mkOption {
        type = types.path;
        description = "A store path, file or glob (with `*`) to copy into the image.";
      };
      target = mkOption {
        type = types.str;
        description = "Where to put it in the root file system.";
      };
      mode = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "0640";
        description = "Mode of the copy (octal), recursively for a directory.";
      };
      user = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "Owner: a number, or a user name the image's system defines.";
      };
      group = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "Group: a number, or a group name the image's system defines.";
      };
    };
  };

  option =
    type: default: description:
    mkOption { inherit type default description; };
  # An argument whose reference default depends on other arguments: no default here.
  derivedOption =
    type: defaultText: description:
    mkOption {
      inherit type description;
      defaultText = lib.literalMD defaultText;
    };

  # What the user defined (or the constant defaults), as makeDiskImage's arguments.
  arguments =
    lib.filterAttrs (name: _: opts.${name}.isDefined) (removeAttrs cfg [ "contents" ])
    // {
      contents = map (lib.filterAttrs (_: value: value != null)) cfg.contents;
    };

  diskImage = makeDiskImage ({ inherit pkgs lib config; } // arguments);
in
{
  options.makeDiskImage = {
    diskSize = option (types.either (types.enum [ "auto" ]) types.ints.positive) "auto" ''
      Size of the disk in MiB, or `"auto"`: what goes into the image plus `additionalSpace`.
    '';
    additionalSpace = option types.str "512M" ''
      Extra space added to an automatic size (`numfmt --from=iec` units).
    '';
    bootSize = option types.str "256M" ''
      End offset of the boot partition (efi, efixbootldr, hybrid, legacy+boot).
    '';
    contents = option (types.listOf contentsEntry) [ ] ''
      Files and directories to put in the root file system.
    '';
    partitionTableType = option (types.enum [
      "legacy"
      "legacy+boot"
      "legacy+gpt"
      "efi"
      "efixbootldr"
      "hybrid"
      "none"
    ]) "legacy" "The disk layout (`none`: the file system on the whole disk).";
    installBootLoader = option types.bool true ''
      Whether to run `switch-to-configuration boot` while building.
    '';
    touchEFIVars = option types.bool false ''
      Whether to keep the EFI variables in `efi-vars.fd` and write them while building.
    '';
    OVMF = derivedOption types.package "`pkgs.OVMF.fd`" "The OVMF firmware derivation.";
    efiFirmware = derivedOption types.path "`OVMF.firmware`" "The EFI firmware.";
    efiVariables = derivedOption types.path "`OVMF.variables`" "The initial EFI variables.";
    fsType = option types.str "ext4" "The root file system type.";
    label = derivedOption types.str ''`"nix-store"` with `onlyNixStore`, else `"nixos"`'' ''
      The root file system label.
    '';
    configFile = option (types.nullOr types.path) null ''
      A file copied to /etc/nixos/configuration.nix in the image.
    '';
    postVM = option types.lines "" "Shell code run after the VM, with `$diskImage` set.";
    memSize = option types.ints.positive 1024 "Memory of the build VM in MiB.";
    onlyNixStore = option types.bool false ''
      Only the Nix store at the root of the image, built without a VM.
    '';
    name = option types.str "nixos-disk-image" "The derivation's name.";
    format = option (types.enum (lib.attrNames extensions)) "raw" "The image format.";
    baseName = option types.str "nixos" "The image's file name, without extension.";
    deterministic = option types.bool true ''
      Fixed GPT GUIDs, ext4 UUID and timestamps: the same inputs give the same image.
    '';
    rootGPUID = option types.str "F222513B-DED1-49FA-B591-20CE86A2FE7F" ''
      GPT partition GUID of the root partition.
    '';
    rootFSUID = derivedOption (types.nullOr types.str) "`rootGPUID` for ext4, else `null`" ''
      UUID of the root file system.
    '';
    copyChannel = option types.bool true "Whether to put a nixos channel of `pkgs.path` in the image.";
    additionalPaths = option (types.listOf types.package) [ ] ''
      More store paths to copy into the image's store.
    '';
  };

  options.system.build.diskImage = mkOption {
    type = types.package;
    readOnly = true;
    description = "The disk image makeDiskImage builds from this system and `makeDiskImage.*`.";
  };

  config = lib.mkMerge [
    { system.build.diskImage = diskImage; }
    # nixos-rebuild build-image: an image variant, where nixpkgs has them.
    (lib.optionalAttrs (options ? image.modules) {
      image.modules.make-disk-image =
        { config, modulesPath, ... }:
        {
          imports = [ (modulesPath + "/image/file-options.nix") ];
          makeDiskImage.baseName = lib.mkDefault config.image.baseName;
          image.extension = extensions.${config.makeDiskImage.format};
          system.build.image = config.system.build.diskImage;
        };
    })
  ];
}
