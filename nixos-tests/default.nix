# NixOS VM tests for make-disk-image against real nixpkgs: one test per bootable
# partition table type. Each builds an image with `makeDiskImage` (same arguments as
# nixpkgs' nixos/lib/make-disk-image.nix) from a NixOS configuration with GRUB (BIOS
# layouts) or systemd-boot (UEFI layouts), boots it through firmware from a qcow2
# overlay on a virtio drive, and checks the running guest. See docs/nixos-tests.md.
{ pkgs, makeDiskImage }:
let
  inherit (pkgs) lib;
  mkImageTest = import ./make-image-test.nix { inherit pkgs makeDiskImage; };

  # BIOS boot (GRUB i386-pc under SeaBIOS) exists on x86 only.
  biosTests = lib.optionalAttrs pkgs.stdenv.hostPlatform.isx86 {
    legacy = mkImageTest {
      name = "legacy";
      partitionTableType = "legacy";
      bootLoader = "grub";
      firmwares = [ "bios" ];
      # The reference's default: the image carries a nixos channel.
      copyChannel = true;
    };

    legacy-boot = mkImageTest {
      name = "legacy-boot";
      partitionTableType = "legacy+boot";
      bootLoader = "grub";
      firmwares = [ "bios" ];
      bootSize = "512M";
    };

    legacy-gpt = mkImageTest {
      name = "legacy-gpt";
      partitionTableType = "legacy+gpt";
      bootLoader = "grub";
      firmwares = [ "bios" ];
      # A non-default GUID: the root partition and the root filesystem must carry it.
      rootGPUID = "2D7A5C1E-94B3-4F60-8C2D-6B1E0F9A7C35";
      # A fixed size in MiB instead of "auto".
      diskSize = 4096;
    };

    # Booted twice from the same image: SeaBIOS through the bios_grub partition, then
    # OVMF through the removable-media path on the ESP (no EFI variables touched).
    hybrid = mkImageTest {
      name = "hybrid";
      partitionTableType = "hybrid";
      bootLoader = "grub-hybrid";
      firmwares = [
        "bios"
        "uefi"
      ];
    };
  };

  uefiTests = {
    efi = mkImageTest {
      name = "efi";
      partitionTableType = "efi";
      bootLoader = "systemd-boot";
      firmwares = [ "uefi" ];
      touchEFIVars = true;
      format = "qcow2-compressed";
    };

    efixbootldr = mkImageTest {
      name = "efixbootldr";
      partitionTableType = "efixbootldr";
      bootLoader = "systemd-boot";
      firmwares = [ "uefi" ];
      touchEFIVars = true;
      # The ESP ends at 100MiB; XBOOTLDR runs from there to bootSize.
      bootSize = "512M";
      format = "raw";
    };
  };
in
biosTests // uefiTests
