# The boot loader options make-disk-image reads, with nixpkgs' names, types and
# defaults (nixos/modules/system/boot/loader/{grub/grub.nix,limine/limine.nix,
# systemd-boot/systemd-boot.nix,efi.nix}), and grub.nix's device handling: `device` is
# added to `devices`, and an enabled GRUB needs at least one.
{ config, lib, ... }:
let
  inherit (lib) mkOption types;
  grub = config.boot.loader.grub;
in
{
  options.boot.loader = {
    grub = {
      enable = mkOption {
        default = true;
        type = types.bool;
        description = "Whether to enable the GNU GRUB boot loader.";
      };
      device = mkOption {
        default = "";
        example = "/dev/disk/by-id/wwn-0x500001234567890a";
        type = types.str;
        description = "The device on which the GRUB boot loader will be installed.";
      };
      devices = mkOption {
        default = [ ];
        example = [ "/dev/disk/by-id/wwn-0x500001234567890a" ];
        type = types.listOf types.str;
        description = "The devices on which the boot loader, GRUB, will be installed.";
      };
      efiSupport = mkOption {
        default = false;
        type = types.bool;
        description = "Whether GRUB should be built with EFI support.";
      };
      efiInstallAsRemovable = mkOption {
        default = false;
        type = types.bool;
        description = "Whether to invoke `grub-install` with `--removable`.";
      };
    };
    limine = {
      enable = lib.mkEnableOption "the Limine Bootloader";
      biosSupport = mkOption {
        default = false;
        type = types.bool;
        description = "Whether or not to install limine for BIOS.";
      };
      biosDevice = mkOption {
        default = "nodev";
        type = types.str;
        description = "Device to install the BIOS version of limine on.";
      };
    };
    systemd-boot.enable = mkOption {
      default = false;
      type = types.bool;
      description = "Whether to enable the systemd-boot (formerly gummiboot) EFI boot manager.";
    };
    efi = {
      canTouchEfiVariables = mkOption {
        default = false;
        type = types.bool;
        description = "Whether the installation process is allowed to modify EFI boot variables.";
      };
      efiSysMountPoint = mkOption {
        default = "/boot";
        type = types.str;
        description = "Where the EFI System Partition is mounted.";
      };
    };
  };

  config = lib.mkIf grub.enable {
    boot.loader.grub.devices = lib.mkIf (grub.device != "") [ grub.device ];
    assertions = [
      {
        assertion = grub.devices != [ ];
        message = "You must set the option ‘boot.loader.grub.devices’ or 'boot.loader.grub.mirroredBoots' to make the system bootable.";
      }
    ];
  };
}
