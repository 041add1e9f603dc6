# One NixOS VM test: build a disk image with `makeDiskImage` from the test node's own
# NixOS configuration, boot that image through firmware and its boot loader (not
# qemu's direct kernel boot), and check from inside the guest that it came up as
# specified. The node's configuration is the image's configuration, as in nixpkgs'
# image tests, so the booted system carries the test driver's backdoor.
{ pkgs, makeDiskImage }:
{
  # Test name suffix.
  name,
  # One of the bootable partitionTableTypes (see ./layouts.nix).
  partitionTableType,
  # "grub" (BIOS), "systemd-boot" (UEFI) or "grub-hybrid" (GRUB for BIOS and UEFI).
  bootLoader,
  # Firmware to boot the image with, in order: [ "bios" ], [ "uefi" ] or both.
  firmwares,
  touchEFIVars ? false,
  # Image format; the overlay the guest writes to is a qcow2 backed by it.
  format ? "qcow2",
  diskSize ? "auto",
  additionalSpace ? "512M",
  bootSize ? "256M",
  copyChannel ? false,
  rootGPUID ? "F222513B-DED1-49FA-B591-20CE86A2FE7F",
}:
let
  inherit (pkgs) lib;
  layout = (import ./layouts.nix).${partitionTableType};
  label = "nixos";
  usesUEFIOnly = firmwares == [ "uefi" ];

  vfatFileSystems = lib.listToAttrs (
    map (fs: {
      name = fs.mountPoint;
      value = {
        device = "/dev/disk/by-label/${fs.label}";
        fsType = "vfat";
      };
    }) layout.bootFileSystems
  );

  # Files grafted into the image: numeric owner, named owner (resolved against the
  # image's own /etc/passwd), a directory (mode and owner apply recursively), and an
  # entry with neither (keeps the store file's mode).
  contentsDir = pkgs.runCommand "make-disk-image-test-dir" { } ''
    mkdir -p $out/sub
    echo greeting > $out/greeting
    echo nested > $out/sub/nested
  '';
  contents = [
    {
      source = pkgs.writeText "numeric-owner" "numeric owner\n";
      target = "/testFile";
      user = "1234";
      group = "5678";
      mode = "755";
    }
    {
      source = pkgs.writeText "named-owner" "named owner\n";
      target = "/srv/alice-note";
      user = "alice";
      group = "users";
      mode = "640";
    }
    {
      source = contentsDir;
      target = "/srv/data";
      user = "alice";
      group = "users";
      mode = "750";
    }
    {
      source = pkgs.writeText "no-owner" "no owner\n";
      target = "/srv/plain";
    }
  ];
  aliceUid = 1001;
  usersGid = 100;

  # What `stat` must report inside the guest, per path.
  expectedContents = [
    {
      path = "/testFile";
      uid = 1234;
      gid = 5678;
      mode = "755";
      text = "numeric owner\n";
    }
    {
      path = "/srv/alice-note";
      uid = aliceUid;
      gid = usersGid;
      user = "alice";
      group = "users";
      mode = "640";
      text = "named owner\n";
    }
    {
      path = "/srv/data";
      uid = aliceUid;
      gid = usersGid;
      mode = "750";
    }
    {
      path = "/srv/data/sub";
      uid = aliceUid;
      gid = usersGid;
      mode = "750";
    }
    {
      path = "/srv/data/greeting";
      uid = aliceUid;
      gid = usersGid;
      mode = "750";
      text = "greeting\n";
    }
    {
      path = "/srv/data/sub/nested";
      uid = aliceUid;
      gid = usersGid;
      mode = "750";
      text = "nested\n";
    }
    {
      path = "/srv/plain";
      mode = "444";
      text = "no owner\n";
    }
  ];

  imageFileName =
    "nixos."
    + {
      qcow2 = "qcow2";
      qcow2-compressed = "qcow2";
      raw = "img";
    }
    .${format};
  imageFormat = if format == "raw" then "raw" else "qcow2";
in
# A module, so that the image and the expectations can use the node's configuration
# and are exposed as passthru: `nix build .#checks.<system>.<test>.image` builds only
# the image.
pkgs.testers.runNixOSTest (
  { config, ... }:
  let
    machineConfig = config.nodes.machine;
    image = makeDiskImage {
      inherit pkgs lib;
      config = machineConfig;
      inherit
        partitionTableType
        touchEFIVars
        format
        diskSize
        additionalSpace
        bootSize
        copyChannel
        rootGPUID
        label
        contents
        ;
      OVMF = machineConfig.virtualisation.efi.OVMF;
      installBootLoader = true;
      deterministic = true;
    };
    expected = {
      inherit
        partitionTableType
        bootLoader
        firmwares
        touchEFIVars
        copyChannel
        label
        imageFormat
        ;
      inherit (layout) partitionTable bootFileSystems;
      rootDevice = "/dev/vda${toString layout.rootPartition}";
      partitionCount =
        {
          legacy = 1;
          "legacy+boot" = 2;
          "legacy+gpt" = 2;
          efi = 2;
          efixbootldr = 3;
          hybrid = 3;
        }
        .${partitionTableType};
      # Deterministic ext4 images carry rootFSUID (= rootGPUID by default); on GPT
      # the root partition's own GUID is rootGPUID for every layout, legacy+gpt
      # included (the reference dropped it there: it addressed partition 3).
      rootFSUID = lib.toLower rootGPUID;
      rootPartUUID = if layout.partitionTable == "gpt" then lib.toLower rootGPUID else null;
      toplevel = "${machineConfig.system.build.toplevel}";
      nixosVersion = "${machineConfig.system.nixos.version} (${machineConfig.system.nixos.codeName})";
      imageFile = "${image}/${imageFileName}";
      qemuImg = "${machineConfig.virtualisation.qemu.package}/bin/qemu-img";
      efiFirmware = "${machineConfig.virtualisation.efi.firmware}";
      efiVariables =
        if touchEFIVars then "${image}/efi-vars.fd" else "${machineConfig.virtualisation.efi.variables}";
      nodeHasEFI = usesUEFIOnly;
      contents = expectedContents;
    };
    expectedFile = pkgs.writeText "make-disk-image-expected.json" (builtins.toJSON expected);
  in
  {
    name = "make-disk-image-${name}";

    nodes.machine =
      { lib, pkgs, ... }:
      {
        virtualisation = {
          # Boot the image's own boot loader from firmware, with the image's own store.
          directBoot.enable = false;
          mountHostNixStore = false;
          useBootLoader = false; # qemu-vm would build its own image otherwise
          # Hybrid images get UEFI firmware per boot from the test script instead,
          # so GRUB's BIOS target stays the disk (qemu-vm makes it "nodev" under UEFI).
          useEFIBoot = usesUEFIOnly;
          efi.keepVariables = false;
          rootDevice = "/dev/disk/by-label/${label}";
          fileSystems = vfatFileSystems;
          memorySize = 1024;
        };
        # The image's view of its filesystems; under qemu-vm, virtualisation.fileSystems
        # (same devices) takes precedence.
        fileSystems = {
          "/" = {
            device = "/dev/disk/by-label/${label}";
            fsType = "ext4";
          };
        } // vfatFileSystems;

        # make-disk-image runs switch-to-configuration; nixos tests leave it out by default.
        system.switch.enable = true;

        boot.loader = {
          timeout = 1;
          grub = {
            enable = bootLoader != "systemd-boot";
            efiSupport = bootLoader == "grub-hybrid";
            efiInstallAsRemovable = bootLoader == "grub-hybrid";
          };
          systemd-boot = lib.mkIf (bootLoader == "systemd-boot") (
            {
              enable = true;
            }
            // lib.optionalAttrs (partitionTableType == "efixbootldr") {
              xbootldrMountPoint = "/boot";
            }
          );
          efi = {
            canTouchEfiVariables = touchEFIVars;
            efiSysMountPoint = if partitionTableType == "efixbootldr" then "/efi" else "/boot";
          };
        };

        users.users.alice = {
          isNormalUser = true;
          uid = aliceUid;
        };
        environment.systemPackages = [ pkgs.efibootmgr ];
      };

    testScript =
      builtins.readFile ./checks.py
      + ''

        run_image_test(machine, subtest, "${expectedFile}")
      '';

    passthru = { inherit image expected; };
  }
)
