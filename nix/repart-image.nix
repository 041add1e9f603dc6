# system.build.image from nixpkgs' image.repart options, built by make-disk-image's
# engine (make-disk-image-repart) instead of systemd-repart: the same outputs
# (<imageFileBasename>.raw[.zst|.xz], split files, repart-output.json), plus any
# `format`, nix-support/hydra-build-products and the Nix database in the root.
{
  pkgs,
  lib,
  config,
  format,
  nixDatabase,
  # null, or { mountPoints = { <partition> = "/..."; }; grubDevices = [ ... ]; }
  bootLoader ? null,
}:
let
  cfg = config.image.repart;
  engine = pkgs.callPackage ./package.nix { };
  # As default.nix: a configuration that names no platform is the builder's.
  configSystem = builtins.tryEval config.nixpkgs.hostPlatform.system;
  imageSystem = if configSystem.success then configSystem.value else pkgs.stdenv.hostPlatform.system;
  # Nix systems -> systemd's architecture names (repart's --architecture=).
  architectures = {
    x86_64-linux = "x86-64";
    aarch64-linux = "arm64";
  };
  architecture =
    architectures.${imageSystem}
      or (throw "makeDiskImage.repart: images are built for ${lib.concatStringsSep ", " (lib.attrNames architectures)}, not ${imageSystem}");

  partition =
    _name: p:
    {
      inherit (p) repartConfig;
      contents = lib.mapAttrs (_target: c: { source = "${c.source}"; }) p.contents;
      nixStorePrefix = if p.stripNixStorePrefix or false then "/" else toString (p.nixStorePrefix or "/nix/store");
    }
    // lib.optionalAttrs (p.storePaths != [ ]) {
      closureInfo = "${pkgs.closureInfo { rootPaths = p.storePaths; }}";
    };

  spec = pkgs.writeText "image-repart.json" (
    builtins.toJSON (
      {
      inherit (cfg)
        name
        version
        imageFileBasename
        seed
        split
        sectorSize
        mkfsOptions
        ;
      imageSize = cfg.imageSize or null;
      compression = {
        inherit (cfg.compression) enable algorithm level;
      };
      inherit architecture format nixDatabase;
      partitions = lib.mapAttrs partition cfg.partitions;
    }
      // lib.optionalAttrs (bootLoader != null) {
        installBootLoader = {
          toplevel = "${config.system.build.toplevel}";
          inherit (bootLoader) mountPoints grubDevices;
        };
      }
    )
  );

  # What the build VM's step reads: partitions by number (definitions are ordered by
  # name, as attrNames lists them).
  numbers = lib.listToAttrs (
    lib.imap1 (i: name: lib.nameValuePair name (toString i)) (lib.attrNames cfg.partitions)
  );
  guestPlan = pkgs.writeText "image-repart-boot-loader.json" (
    builtins.toJSON {
      toplevel = "${config.system.build.toplevel}";
      mounts = lib.listToAttrs (
        lib.mapAttrsToList (name: lib.nameValuePair numbers.${name}) bootLoader.mountPoints
      );
      inherit (bootLoader) grubDevices;
    }
  );

  binPath = lib.makeBinPath (
    [ engine ]
    ++ import ./engine-tools.nix pkgs
    ++ [
      # installBootLoader's step in the build VM.
      pkgs.nixos-enter
      pkgs.systemdMinimal
    ]
    ++ pkgs.stdenv.initialPath
  );
  name = if cfg.version != null then "${cfg.name}-${cfg.version}" else cfg.name;
  passthru = {
    inherit spec engine;
    inherit (cfg) imageFile;
  };
  plain = pkgs.runCommand name { inherit passthru; } ''
    export PATH=${binPath}:$PATH
    make-disk-image-repart ${spec} --out $out
  '';
  # installBootLoader: the image is built before the VM, the system's
  # switch-to-configuration installs its boot loader in the VM (the image is its
  # /dev/vda), the outputs are written after it. As default.nix, without the `kvm`
  # feature: the VM falls back to TCG.
  withBootLoader = lib.overrideDerivation (pkgs.vmTools.runInLinuxVM (
    pkgs.runCommand name {
      inherit passthru;
      memSize = 1024;
      preVM = ''
        export PATH=${binPath}:$PATH
        make-disk-image-repart ${spec} --stage image --work $PWD/repart-work
        diskImage=repart-work/${cfg.imageFileBasename}.raw
      '';
      postVM = ''
        export PATH=${binPath}:$PATH
        make-disk-image-repart ${spec} --stage output --work $PWD/repart-work --out $out
      '';
    } ''
      export PATH=${binPath}:$PATH
      make-disk-image-repart --install-boot-loader ${guestPlan}
    ''
  )) (old: {
    requiredSystemFeatures = lib.remove "kvm" (old.requiredSystemFeatures or [ ]);
  });
in
if bootLoader == null then plain else withBootLoader
