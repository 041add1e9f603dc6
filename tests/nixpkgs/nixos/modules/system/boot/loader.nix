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
        description = "Whether GRUB is the boot loader.";
      };
      device = mkOption {
        default = "";
        example = "/dev/disk/by-id/wwn-0x500001234567890a";
        type = types.str;
        description = "One disk to install GRUB to (joins devices).";
      };
      devices = mkOption {
        default = [ ];
        example = [ "/dev/disk/by-id/wwn-0x500001234567890a" ];
        type = types.listOf types.str;
        description = "Disks to install GRUB to; at least one when GRUB is enabled.";
      };
      efiSupport = mkOption {
        default = false;
        type = types.bool;
        description = "Whether GRUB is installed for UEFI too.";
      };
      efiInstallAsRemovable = mkOption {
        default = false;
        type = types.bool;
        description = "Whether GRUB goes to the removable-media path on the ESP.";
      };
    };
    limine = {
      enable = lib.mkEnableOption "the Limine Bootloader";
      biosSupport = mkOption {
        default = false;
        type = types.bool;
        description = "Whether Limine is installed for BIOS boot too.";
      };
      biosDevice = mkOption {
        default = "nodev";
        type = types.str;
        description = "Disk Limine's BIOS stage goes to.";
      };
    };
    systemd-boot.enable = mkOption {
      default = false;
      type = types.bool;
      description = "Whether systemd-boot is the (UEFI) boot loader.";
    };
    efi = {
      canTouchEfiVariables = mkOption {
        default = false;
        type = types.bool;
        description = "Whether installing the boot loader may write EFI variables.";
      };
      efiSysMountPoint = mkOption {
        default = "/boot";
        type = types.str;
        description = "Mount point of the EFI system partition.";
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
