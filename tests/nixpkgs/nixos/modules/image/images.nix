# As nixpkgs' nixos/modules/image/images.nix (what `nixos-rebuild build-image` reads):
# image.modules, each an extension of the system whose system.build.image becomes
# system.build.images.NAME. The stand-in brings no image builders of its own.
{
  config,
  lib,
  extendModules,
  ...
}:
let
  inherit (lib) types;
  imageConfigs = lib.mapAttrs (
    name: module:
    extendModules {
      modules = [ module ];
    }
  ) config.image.modules;
in
{
  options = {
    system.build = {
      images = lib.mkOption {
        type = types.lazyAttrsOf types.raw;
        readOnly = true;
        description = ''
          Different target images generated for this NixOS configuration.
        '';
      };
    };
    image.modules = lib.mkOption {
      type = types.attrsOf types.deferredModule;
      default = { };
      description = ''
        image-specific NixOS Modules used for `system.build.images`.
      '';
    };
  };

  config.system.build.images = lib.mkIf (!config.system.build ? image) (
    lib.mapAttrs (
      name: nixos:
      let
        inherit (nixos) config;
        inherit (config.image) filePath;
        builder =
          config.system.build.image
            or (throw "Module for `system.build.images.${name}` misses required `system.build.image` option.");
      in
      lib.recursiveUpdate builder {
        passthru = {
          inherit config filePath;
        };
      }
    ) imageConfigs
  );
}
