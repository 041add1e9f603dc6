# users.users and users.groups, as nixpkgs' nixos/modules/config/users-groups.nix
# declares them (the options the image's /etc/passwd and /etc/group are made of), with
# its two per-user assertions. Unlike NixOS, the stand-in allocates no ids: every user
# and group the system writes needs an explicit uid / gid (top-level.nix says so).
{ config, lib, ... }:
let
  inherit (lib) mkOption mkDefault types;
  cfg = config.users;

  userOpts =
    { name, config, ... }:
    {
      options = {
        name = mkOption {
          type = types.passwdEntry types.str;
          default = name;
          description = "The name of the user account.";
        };
        description = mkOption {
          type = types.passwdEntry types.str;
          default = "";
          description = "A short description of the user account.";
        };
        uid = mkOption {
          type = with types; nullOr int;
          default = null;
          description = "The account UID.";
        };
        isSystemUser = mkOption {
          type = types.bool;
          default = false;
          description = "Indicates if the user is a system user or not.";
        };
        isNormalUser = mkOption {
          type = types.bool;
          default = false;
          description = "Indicates whether this is an account for a real user.";
        };
        group = mkOption {
          type = types.str;
          apply = x: assert (lib.stringLength x < 32 || abort "Group name '${x}' is longer than 31 characters which is not allowed!"); x;
          default = "";
          description = "The user's primary group.";
        };
        extraGroups = mkOption {
          type = types.listOf types.str;
          default = [ ];
          description = "The user's auxiliary groups.";
        };
        home = mkOption {
          type = types.passwdEntry types.path;
          default = "/var/empty";
          description = "The user's home directory.";
        };
        createHome = mkOption {
          type = types.bool;
          default = false;
          description = "Whether to create the home directory and ensure ownership as well as permissions to match the user.";
        };
      };
      config = lib.mkIf config.isNormalUser {
        group = mkDefault "users";
        createHome = mkDefault true;
        home = mkDefault "/home/${config.name}";
      };
    };

  groupOpts =
    { name, ... }:
    {
      options = {
        name = mkOption {
          type = types.passwdEntry types.str;
          default = name;
          description = "The name of the group.";
        };
        gid = mkOption {
          type = with types; nullOr int;
          default = null;
          description = "The group GID.";
        };
        members = mkOption {
          type = with types; listOf (passwdEntry str);
          default = [ ];
          description = "The user names of the group members, added to the `/etc/group` file.";
        };
      };
    };
in
{
  options.users = {
    users = mkOption {
      default = { };
      type = with types; attrsOf (submodule userOpts);
      description = "Additional user accounts to be created automatically by the system.";
    };
    groups = mkOption {
      default = { };
      type = with types; attrsOf (submodule groupOpts);
      description = "Additional groups to be created automatically by the system.";
    };
  };

  config = {
    # ids.nix's fixed ids for what NixOS always defines.
    users.users.root = {
      uid = 0;
      description = "System administrator";
      home = "/root";
      group = "root";
    };
    users.groups = {
      root.gid = 0;
      wheel.gid = 1;
      users.gid = 100;
      nogroup.gid = 65534;
    };

    assertions = lib.flatten (
      lib.mapAttrsToList (_: user: [
        {
          assertion =
            let
              # root, or a uid below 1000, counts as a system user.
              isEffectivelySystemUser = user.isSystemUser || (user.uid != null && user.uid < 1000);
            in
            lib.xor isEffectivelySystemUser user.isNormalUser;
          message = ''
            Exactly one of users.users.${user.name}.isSystemUser and users.users.${user.name}.isNormalUser must be set.
          '';
        }
        {
          assertion = user.group != "";
          message = ''
            users.users.${user.name}.group is unset. This used to default to
            nogroup, but this is unsafe. For example you can create a group
            for this user with:
            users.users.${user.name}.group = "${user.name}";
            users.groups.${user.name} = {};
          '';
        }
      ]) cfg.users
    );
  };
}
