# The image.* file name options nixpkgs' image modules import
# (modulesPath + "/image/file-options.nix"): baseName.extension is fileName, found at
# filePath under the image's $out.
{
  lib,
  config,
  pkgs,
  ...
}:
let
  inherit (lib) mkOption types literalExpression;
  cfg = config.image;
in
{
  options.image = {
    baseName = mkOption {
      type = types.str;
      default = "nixos-image-${config.system.nixos.label}-${pkgs.stdenv.hostPlatform.system}";
      defaultText = literalExpression "nixos-image-\${config.system.nixos.label}-\${pkgs.stdenv.hostPlatform.system}";
      description = "File name of the image, without extension.";
    };
    extension = mkOption {
      type = types.str;
      description = "What follows the base name and a dot, e.g. `qcow2` (set by the image's module).";
    };
    fileName = mkOption {
      type = types.str;
      default = "${cfg.baseName}.${cfg.extension}";
      defaultText = literalExpression "\${config.image.baseName}.\${config.image.extension}";
      description = "Base name and extension.";
    };
    filePath = mkOption {
      type = types.str;
      default = cfg.fileName;
      defaultText = literalExpression "config.image.fileName";
      description = "Where the image file lies inside the output of system.build.image.";
    };
  };
}
