# makeDiskImage: a drop-in for nixpkgs' nixos/lib/make-disk-image.nix.
#
# The arguments and their defaults are the reference's. Nix computes only what needs
# Nix (the closure, the channel, the OVMF store paths, the few `config` values the
# guest needs) and writes them with the arguments to one JSON spec; the Python engine
# (make_disk_image, see docs/interface.md) validates it and does the work in preVM
# (`prepare`), in the VM (`guest`) and in postVM (`finish`). See docs/nix.md.
#
# The arguments are checked first (nix/arguments.nix): a wrong one stops evaluation with
# the reference's message before pkgs or config is looked at.
args@{
  pkgs,
  lib,

  # The NixOS configuration to be installed onto the disk image.
  config,

  # Size of the disk in MiB, or "auto" (contents + additionalSpace).
  diskSize ? "auto",

  # Extra space added when diskSize is "auto" (numfmt --from=iec).
  additionalSpace ? "512M",

  # End offset of the boot partition (efi, efixbootldr, hybrid, legacy+boot).
  bootSize ? "256M",

  # Files and directories to put in the root file system:
  # [ { source; target; mode ? ; user ? ; group ? ; } ]
  contents ? [ ],

  # legacy, legacy+boot, legacy+gpt, efi, efixbootldr, hybrid or none.
  partitionTableType ? "legacy",

  # Whether to run `switch-to-configuration boot` while building.
  installBootLoader ? true,

  # Whether to keep the EFI variables in $out/efi-vars.fd and use them while building.
  touchEFIVars ? false,

  # OVMF firmware derivation
  OVMF ? pkgs.OVMF.fd,

  # EFI firmware
  efiFirmware ? OVMF.firmware,

  # EFI variables
  efiVariables ? OVMF.variables,

  # The root file system type.
  fsType ? "ext4",

  # File system label
  label ? if onlyNixStore then "nix-store" else "nixos",

  # Copied to /etc/nixos/configuration.nix.
  configFile ? null,

  # Shell code run after the VM has finished, with $diskImage set.
  postVM ? "",

  # Guest memory size in MiB.
  memSize ? 1024,

  # Only the Nix store at the root of the image, built without a VM. Incompatible with
  # contents, installBootLoader and configFile.
  onlyNixStore ? false,

  name ? "nixos-disk-image",

  # raw, qcow2, qcow2-compressed, vdi, vpc, vmdk, vhdx, qcow2-zstd or raw-zstd (README: Formats).
  format ? "raw",

  # Image file name without extension.
  baseName ? "nixos",

  # Fixed GPT GUIDs, ext4 UUID and timestamps.
  deterministic ? true,

  # Extension: identical files of the store as one inode with several names, as
  # `nix-store --optimise` leaves a store; the same image from an optimised store or not.
  deduplicate ? false,

  # Extension: a store image's compression (fsType erofs or squashfs; null: lz4).
  compression ? null,

  # GPT partition GUID of the root partition.
  rootGPUID ? "F222513B-DED1-49FA-B591-20CE86A2FE7F",

  # ext4 UUID of the root file system.
  rootFSUID ? (if fsType == "ext4" then rootGPUID else null),

  # Whether to put a nixos channel of pkgs.path in the image.
  copyChannel ? true,

  # More store paths to copy to the image's store.
  additionalPaths ? [ ],

  # Extension: whether the build needs a builder with KVM (the `kvm` system feature),
  # as the reference's runInLinuxVM does. With false, any Linux builder takes it and the
  # build VM's qemu falls back to TCG: the VM only installs the bootloader, so its time
  # does not grow with the closure.
  requireKVM ? true,
}:
let
  # The choices (formats, partition table types, filesystems) and the arguments: one
  # file that the module and the engine read too.
  interface = builtins.fromJSON (builtins.readFile ./make_disk_image/interface.json);

  # Every argument but pkgs, lib and config, defaults applied.
  arguments = {
    inherit
      diskSize
      additionalSpace
      bootSize
      contents
      partitionTableType
      installBootLoader
      touchEFIVars
      OVMF
      efiFirmware
      efiVariables
      fsType
      label
      configFile
      postVM
      memSize
      onlyNixStore
      name
      format
      baseName
      deterministic
      deduplicate
      compression
      rootGPUID
      rootFSUID
      copyChannel
      additionalPaths
      requireKVM
      ;
  };
  checks = import ./nix/arguments.nix { inherit lib interface; } {
    given = args;
    inherit arguments;
  };

  makeDiskImage = pkgs.callPackage ./nix/package.nix { };

  # The image's system is config's (nixpkgs.hostPlatform); the builder's is pkgs'. All
  # that grows with the closure (prepare, finish, the conversion) runs natively on the
  # builder with pkgs' tools, whatever the image's system; only the guest phase runs in
  # a VM of the image's system, under TCG when it is not the builder's (docs/aarch64.md).
  # A configuration that names no platform (only possible without NixOS' nixpkgs module
  # doing its work) is taken to be the builder's, as the reference takes every one.
  configSystem = builtins.tryEval config.nixpkgs.hostPlatform.system;
  imageSystem = if configSystem.success then configSystem.value else pkgs.stdenv.hostPlatform.system;
  crossSystem = imageSystem != pkgs.stdenv.hostPlatform.system;
  platforms = removeAttrs interface.platforms [ "_about" ];
  platform =
    platforms.${imageSystem} or (throw ("makeDiskImage: config.nixpkgs.hostPlatform is "
      + "${imageSystem}; images are built for ${lib.concatStringsSep ", " (lib.attrNames platforms)}"));
  # What runs inside a VM of another system comes from the image's own package set (with
  # real nixpkgs: from the binary cache, nothing cross-compiled): its kernel, python3
  # and pyudev for the engine (whose Python source is the same), nixos-enter, coreutils.
  # A configuration does not carry its pkgs; this is the set NixOS' nixpkgs module
  # imports by default for it (nixpkgs.hostPlatform, nixpkgs.config, nixpkgs.overlays).
  guestPkgs = import pkgs.path {
    system = imageSystem;
    config = config.nixpkgs.config or { };
    overlays = config.nixpkgs.overlays or [ ];
  };
  # The firmware of the image's system: pkgs' OVMF is the builder's, so an image of
  # another system takes its own set's (nixpkgs' OVMF of an aarch64 set is edk2's AAVMF),
  # unless the caller named one. The same as the arguments for a same-system image.
  firmwareOVMF = if crossSystem && !(args ? OVMF) then guestPkgs.OVMF.fd else OVMF;
  firmwareCode = if args ? efiFirmware then efiFirmware else firmwareOVMF.firmware;
  firmwareVariables = if args ? efiVariables then efiVariables else firmwareOVMF.variables;

  guest = import ./nix/guest.nix {
    inherit pkgs guestPkgs lib platform;
    engineSource = ./make_disk_image;
  };

  # copyChannel's channel: nixpkgs' own source (pkgs.path, without version-control
  # files) as the channel `nixos`, also reachable as `nixos/nixpkgs` when the source has
  # no such entry, and the NixOS version suffix that `nixos-version` appends.
  channelSources = pkgs.runCommand "nixos-${config.system.nixos.version}" {
    nixpkgsTree = lib.cleanSource pkgs.path;
    inherit (config.system.nixos) versionSuffix;
  } ''
    set -eu
    channel=$out/nixos
    mkdir -p "$out"
    cp --recursive --no-dereference --preserve=mode,timestamps "$nixpkgsTree" "$channel"
    # The store copy is read-only; the suffix (and a link) go into it.
    chmod --recursive u+w "$channel"
    test -e "$channel/nixpkgs" || ln -s . "$channel/nixpkgs"
    printf %s "$versionSuffix" > "$channel/.version-suffix"
  '';

  toplevel = config.system.build.toplevel;
  basePaths = [ toplevel ] ++ lib.optional copyChannel channelSources;
  # additionalPaths beyond the system and channel; closureInfo takes each root once.
  extraPaths = lib.subtractLists basePaths additionalPaths;
  closureInfo = pkgs.closureInfo { rootPaths = basePaths ++ extraPaths; };

  grub = config.boot.loader.grub;
  limine = config.boot.loader.limine or { enable = false; };

  contentsKeys = [
    "source"
    "target"
    "mode"
    "user"
    "group"
  ];
  # Only the keys a contents entry may have; toJSON turns paths and derivations into
  # store path strings (and the spec file depends on them). The reference ignores other
  # keys, so a call site that carries one keeps building, with a warning that names them
  # (a misspelt `user` would otherwise chown nothing, silently).
  contentsEntry =
    entry:
    let
      ignored = builtins.attrNames (removeAttrs entry contentsKeys);
    in
    lib.warnIf (ignored != [ ])
      "makeDiskImage: argument `contents`: the entry for ${entry.target} has keys that are ignored: ${lib.concatStringsSep ", " ignored} (an entry takes ${lib.concatStringsSep ", " contentsKeys})"
      (
        {
          inherit (entry) source target;
        }
        // lib.filterAttrs (key: _: entry ? ${key}) {
          mode = entry.mode or null;
          user = entry.user or null;
          group = entry.group or null;
        }
      );

  # The spec: the arguments the engine takes (not OVMF, requireKVM: only Nix uses them)
  # and what Nix computes.
  spec = pkgs.writeText "${name}-spec.json" (
    builtins.toJSON (
      removeAttrs arguments [
        "OVMF"
        "requireKVM"
      ]
      # Only for another system: a same-system spec (and image) stays as it was.
      // lib.optionalAttrs crossSystem { system = imageSystem; }
      // {
        inherit toplevel closureInfo;
        contents = map contentsEntry contents;
        # The firmware is only built when it is used, as in the reference.
        efiFirmware = if touchEFIVars then firmwareCode else null;
        efiVariables = if touchEFIVars then firmwareVariables else null;
        ovmfSystemManagementModeRequired = firmwareOVMF.systemManagementModeRequired or false;
        channelSources = if copyChannel then channelSources else null;
        grubDevices = if grub.enable then grub.devices else [ ];
        limineBiosDevice =
          if limine.enable && (limine.biosSupport or false) then limine.biosDevice else null;
      }
    )
  );

  # Every tool a phase runs, named once.
  binPath = lib.makeBinPath (
    [ makeDiskImage ]
    ++ import ./nix/engine-tools.nix pkgs
    # A system of another architecture: its nixos-install cannot run on the builder.
    ++ lib.optional (!crossSystem) config.system.build.nixos-install
    ++ [
      pkgs.nixos-enter
      pkgs.systemdMinimal
    ]
    ++ pkgs.stdenv.initialPath
  );

  prepare = ''
    export PATH=${binPath}:$PATH
    make-disk-image prepare ${spec}
    diskImage=nixos.raw
  '';

  # finish's output is not evaluated as shell: a command substitution that fails inside
  # an eval does not stop `sh -e`. finish prints the image's path; reading it back is a
  # plain assignment, whose status `sh -e` checks.
  finish = ''
    export PATH=${binPath}:$PATH
    make-disk-image finish ${spec} > make-disk-image.result
    diskImage=$(cat make-disk-image.result)
  '';

  # nixpkgs' build VM loads only its rootModules (ext4 among them); the guest mounts the
  # root filesystem, so a root of another filesystem adds its driver there (interface.json:
  # the fsType's kernelModule). `override` replaces
  # the list, so it repeats vmTools' default (pkgs/build-support/vm). A vmTools without
  # `override` (the project's stand-in) is used as it is: its guest loads the driver
  # with modprobe (make_disk_image/guest.py).
  vmDefaultRootModules = [
    "virtio_pci"
    "virtio_mmio"
    "virtio_blk"
    "virtio_balloon"
    "virtio_rng"
    "ext4"
    "virtiofs"
    "crc32c"
  ];
  rootModule = (builtins.head (builtins.filter (fs: fs.name == fsType) interface.fsTypes)).kernelModule;
  vmTools =
    if !(lib.elem rootModule vmDefaultRootModules) && pkgs.vmTools ? override then
      pkgs.vmTools.override { rootModules = vmDefaultRootModules ++ [ rootModule ]; }
    else
      pkgs.vmTools;

  vmImage = vmTools.runInLinuxVM (
    pkgs.runCommand name
      {
        preVM = prepare;
        postVM = finish + postVM;
        QEMU_OPTS = lib.concatStringsSep " " (
          lib.optional touchEFIVars "-drive if=pflash,format=raw,unit=0,readonly=on,file=${efiFirmware}"
          # The engine's prepare writes $out/efi-vars.fd from efiVariables.
          ++ lib.optional touchEFIVars "-drive if=pflash,format=raw,unit=1,file=$out/efi-vars.fd"
          # OVMF built with SMM runs only on a q35 machine with SMM and a secure flash.
          ++ lib.optionals (OVMF.systemManagementModeRequired or false) [
            "-machine q35,smm=on"
            "-global driver=cfi.pflash01,property=secure,value=on"
          ]
        );
        inherit memSize;
        passthru = { inherit spec makeDiskImage; };
      }
      ''
        # kmod: a VM whose rootModules lack the root filesystem's driver (a vmTools
        # without `override`, the stand-in's) loads it with modprobe (guest.py).
        export PATH=${binPath}:${lib.makeBinPath [ pkgs.kmod ]}:$PATH
        make-disk-image guest ${spec}
      ''
  );
  # runInLinuxVM asks for the `kvm` system feature unconditionally. Its qemu
  # (nixos/lib/qemu-common.nix: `-machine accel=kvm:tcg -cpu max`) falls back to TCG
  # by itself where the builder has no /dev/kvm.
  vmImageOfSystem = if crossSystem then crossImage else vmImage;
  buildImage =
    if requireKVM then
      vmImageOfSystem
    else
      lib.overrideDerivation vmImageOfSystem (old: {
        requiredSystemFeatures = lib.remove "kvm" (old.requiredSystemFeatures or [ ]);
      });

  # An image of another system: the same phases, the guest phase run by the engine's own
  # VM runner (python3 -m make_disk_image.vm, what the stand-in's runInLinuxVM runs
  # too) booting the image system's kernel with guest.root as its root: nixpkgs'
  # runInLinuxVM builds its initrd and stage 2 from its own pkgs, which are the builder's.
  crossImage = pkgs.runCommand name {
    inherit memSize;
    QEMU_OPTS = lib.concatStringsSep " " (
      lib.optional touchEFIVars "-drive if=pflash,format=raw,unit=0,readonly=on,file=${firmwareCode}"
      ++ lib.optional touchEFIVars "-drive if=pflash,format=raw,unit=1,file=$out/efi-vars.fd"
    );
    requiredSystemFeatures = [ "kvm" ];
    passthru = { inherit spec makeDiskImage guest; };
  } (prepare + ''
    mkdir -p xchg
    export PATH=${binPath}:${lib.makeBinPath [ pkgs.qemu pkgs.kmod ]}:$PATH
    # The guest sees the builder's store (the image system's packages) and xchg/.
    # QEMU_OPTS names $out/efi-vars.fd, which runInLinuxVM's shell expands; so here.
    PYTHONPATH=${makeDiskImage}/${pkgs.python3.sitePackages} ${pkgs.python3}/bin/python3 \
      -m make_disk_image.vm --system ${imageSystem} --kernel ${guest.root}/boot/vmlinuz-* \
      --modules ${guest.root}/lib/modules/* --busybox ${guest.root}/bin/busybox --root ${guest.root} \
      --disk "$diskImage" --mem "$memSize" --qemu-opts "''${QEMU_OPTS//'$out'/$out}" \
      --share ${builtins.storeDir}:${builtins.storeDir} --share "$PWD/xchg:/tmp/xchg:rw" \
      --cwd /tmp -- ${guest.engine}/bin/make-disk-image guest ${spec}
  '' + finish + postVM);

  # Whether the build VM has work: the boot loader, or an owner given by name, which only
  # the image's own system resolves (make_disk_image.prepare.guest_mounts_root;
  # tests/test_nix_build_vm.py keeps the two in step), or firmware whose variables the VM may
  # write into efi-vars.fd. Without, prepare and finish run alone: no VM to boot, and no
  # KVM asked of the builder.
  isNumber = value: builtins.match "[0-9]+" (toString value) != null;
  ownedByName =
    entry:
    (entry.user or null) != null && !(isNumber entry.user && isNumber (entry.group or ""));
  guestHasWork =
    !onlyNixStore && (installBootLoader || touchEFIVars || lib.any ownedByName contents);

  # BIOS-only layouts and BIOS GRUB have no meaning where the image's system has no BIOS
  # (interface.json: platforms and the `system` row's rules), unless no boot loader is
  # installed.
  platformChecked = checks.computed {
    system = imageSystem;
    grubDevices = if grub.enable then grub.devices else [ ];
    ovmfSystemManagementModeRequired = firmwareOVMF.systemManagementModeRequired or false;
  };
in
assert checks.arguments;
assert platformChecked;
if guestHasWork then
  buildImage
else
  pkgs.runCommand name {
    passthru = { inherit spec makeDiskImage; };
  } (prepare + finish + postVM)
