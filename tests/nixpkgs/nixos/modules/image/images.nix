# Image variants, with the interface of nixpkgs' nixos/modules/image/images.nix (what
# `nixos-rebuild build-image --image-variant NAME` builds): every module in
# image.modules.NAME extends this system, and that extension's system.build.image,
# with its config and image.filePath in passthru, is system.build.images.NAME.
# The stand-in declares no image builders of its own.
{
  config,
  lib,
  extendModules,
  ...
}:
let
  inherit (lib) mkOption types;

  variantOf =
    name: module:
    let
      variant = (extendModules { modules = [ module ]; }).config;
      image =
        variant.system.build.image
          or (throw "Module for `system.build.images.${name}` misses required `system.build.image` option.");
    in
    lib.recursiveUpdate image {
      passthru = {
        config = variant;
        inherit (variant.image) filePath;
      };
    };

  # A variant is itself an extension of this system: it builds no variants of its own.
  isVariant = config.system.build ? image;
in
{
  options.image.modules = mkOption {
    type = types.attrsOf types.deferredModule;
    default = { };
    description = "Per image variant, the modules that turn this system into that image.";
  };
  options.system.build.images = mkOption {
    type = types.lazyAttrsOf types.raw;
    readOnly = true;
    description = "Per image variant, its image (set through image.modules, not here).";
  };

  config.system.build.images = lib.mkIf (!isVariant) (lib.mapAttrs variantOf config.image.modules);
}
