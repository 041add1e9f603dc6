# The stand-in's image.repart: the options of nixpkgs' nixos/modules/image/repart.nix
# (declared here anew, with the same names, types and defaults), imported by a
# configuration as `modulesPath + "/image/repart.nix"`. nixpkgs builds system.build.image
# with systemd-repart; the stand-in has no systemd, so its image fails saying so:
# makeDiskImage.repart.enable replaces it with the engine's.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib) mkOption types;
  cfg = config.image.repart;

  partitionOptions = {
    options = {
      storePaths = mkOption {
        type = types.listOf types.path;
        default = [ ];
        description = "Store paths whose closure goes into the partition.";
      };
      nixStorePrefix = mkOption {
        type = types.path;
        default = "/nix/store";
        description = "Where in the partition the store paths go.";
      };
      stripNixStorePrefix = mkOption {
        type = types.bool;
        default = false;
        description = "Older name: the store paths at the partition's root.";
      };
      contents = mkOption {
        type = types.attrsOf (
          types.submodule {
            options.source = mkOption {
              type = types.path;
              description = "The file or directory copied to the target.";
            };
          }
        );
        default = { };
        description = "Files copied into the partition, by target path.";
      };
      repartConfig = mkOption {
        type = types.attrsOf (
          types.oneOf [
            types.str
            types.int
            types.bool
          ]
        );
        description = "The partition's repart.d(5) [Partition] section.";
      };
    };
  };
in
{
  options.image.repart = {
    name = mkOption {
      type = types.str;
      description = "The image's name.";
    };
    version = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "The image's version, part of its file name.";
    };
    imageFileBasename = mkOption {
      type = types.str;
      readOnly = true;
      description = "The image's file name without extension.";
    };
    imageFile = mkOption {
      type = types.str;
      readOnly = true;
      description = "The image's file name.";
    };
    compression = {
      enable = mkOption {
        type = types.bool;
        default = false;
        description = "Compress the image.";
      };
      algorithm = mkOption {
        type = types.enum [
          "zstd"
          "xz"
        ];
        default = "zstd";
        description = "The compressor.";
      };
      level = mkOption {
        type = types.int;
        description = "The compression level.";
      };
    };
    seed = mkOption {
      type = types.nullOr types.str;
      default = "0867da16-f251-457d-a9e8-c31f9a3c220b";
      description = "The UUID the partition and filesystem UUIDs are derived from.";
    };
    split = mkOption {
      type = types.bool;
      default = false;
      description = "Also write each partition as a file of its own.";
    };
    sectorSize = mkOption {
      type = types.nullOr types.int;
      default = 512;
      description = "The image's sector size.";
    };
    imageSize = mkOption {
      type = types.nullOr (types.either types.str types.int);
      default = null;
      description = "The image's size; null: as small as the partitions allow.";
    };
    mkfsOptions = mkOption {
      type = types.attrsOf (types.listOf types.str);
      default = { };
      description = "More mkfs options per filesystem type.";
    };
    partitions = mkOption {
      type = types.attrsOf (types.submodule partitionOptions);
      default = { };
      description = "The partitions, by definition name (their order).";
    };
  };

  config.image.repart = {
    imageFileBasename = cfg.name + lib.optionalString (cfg.version != null) "_${cfg.version}";
    imageFile =
      cfg.imageFileBasename
      + ".raw"
      + lib.optionalString cfg.compression.enable
        {
          zstd = ".zst";
          xz = ".xz";
        }
        .${cfg.compression.algorithm};
    compression.level = lib.mkOptionDefault 3;
  };

  # nixpkgs' is a derivation that runs systemd-repart; the stand-in's fails, saying why.
  config.system.build.image = pkgs.runCommand "${cfg.name}-systemd-repart" { } ''
    echo "the nixpkgs stand-in has no systemd-repart; set makeDiskImage.repart.enable = true" >&2
    exit 1
  '';
}
