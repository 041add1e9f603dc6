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
    builtins.toJSON {
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
  );

  binPath = lib.makeBinPath (
    [
      engine
      pkgs.util-linux
      pkgs.e2fsprogs
      pkgs.dosfstools
      pkgs.mtools
      pkgs.erofs-utils
      pkgs.squashfsTools
      pkgs.qemu-utils
      pkgs.zstd
      pkgs.xz
      pkgs.nix
    ]
    ++ pkgs.stdenv.initialPath
  );
in
pkgs.runCommand (if cfg.version != null then "${cfg.name}-${cfg.version}" else cfg.name)
  {
    passthru = {
      inherit spec engine;
      inherit (cfg) imageFile;
    };
  }
  ''
    export PATH=${binPath}:$PATH
    make-disk-image-repart ${spec} --out $out
  ''
