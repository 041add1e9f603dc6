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
          description = "Where it is mounted (defaults to the attribute name).";
        };
        device = mkOption {
          default = null;
          example = "/dev/sda";
          type = types.nullOr types.nonEmptyStr;
          description = "Device path to mount, e.g. a /dev/disk/by-label link.";
        };
        label = mkOption {
          default = null;
          example = "root-partition";
          type = types.nullOr types.nonEmptyStr;
          description = "File system label to find the device by, instead of device.";
        };
        fsType = mkOption {
          default = "auto";
          example = "ext3";
          type = types.nonEmptyStr;
          description = "File system type passed to mount.";
        };
        options = mkOption {
          default = [ "defaults" ];
          example = [ "data=journal" ];
          type = types.nonEmptyListOf types.nonEmptyStr;
          description = "Mount options.";
        };
        autoResize = mkOption {
          default = false;
          type = types.bool;
          description = "Whether to grow the file system to fill its device before mounting.";
        };
      };
    };
in
{
  options.fileSystems = mkOption {
    default = { };
    type = types.attrsOf (types.submodule fileSystemOpts);
    description = "The system's mounts, by mount point.";
  };

  config.assertions = [
    {
      assertion = lib.any (fs: fs.mountPoint == "/") (lib.attrValues config.fileSystems);
      message = "The ‘fileSystems’ option does not specify your root file system.";
    }
  ];
}
