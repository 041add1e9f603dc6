# fileSystems, as nixpkgs' nixos/modules/tasks/filesystems.nix declares it (the
# attribute set form), with stage-1.nix's assertion that there is a root file system.
{ config, lib, ... }:
let
  inherit (lib) mkOption types;
  fileSystemOpts =
    { name, ... }:
    {
      options = {
        mountPoint = mkOption {
          example = "/mnt/usb";
          type = types.nonEmptyStr;
          default = name;
          description = "Location of the mounted file system.";
        };
        device = mkOption {
          default = null;
          example = "/dev/sda";
          type = types.nullOr types.nonEmptyStr;
          description = "Location of the device.";
        };
        label = mkOption {
          default = null;
          example = "root-partition";
          type = types.nullOr types.nonEmptyStr;
          description = "Label of the device (if any).";
        };
        fsType = mkOption {
          default = "auto";
          example = "ext3";
          type = types.nonEmptyStr;
          description = "Type of the file system.";
        };
        options = mkOption {
          default = [ "defaults" ];
          example = [ "data=journal" ];
          type = types.nonEmptyListOf types.nonEmptyStr;
          description = "Options used to mount the file system.";
        };
        autoResize = mkOption {
          default = false;
          type = types.bool;
          description = "If set, the filesystem is grown to its maximum size before being mounted.";
        };
      };
    };
in
{
  options.fileSystems = mkOption {
    default = { };
    type = types.attrsOf (types.submodule fileSystemOpts);
    description = "The file systems to be mounted.";
  };

  config.assertions = [
    {
      assertion = lib.any (fs: fs.mountPoint == "/") (lib.attrValues config.fileSystems);
      message = "The ‘fileSystems’ option does not specify your root file system.";
    }
  ];
}
