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
          description = "Login name of the account (defaults to the attribute name).";
        };
        description = mkOption {
          type = types.passwdEntry types.str;
          default = "";
          description = "Free-text comment field (GECOS) of the account.";
        };
        uid = mkOption {
          type = with types; nullOr int;
          default = null;
          description = "Numeric user id; the stand-in allocates none, so a user the image has needs one.";
        };
        isSystemUser = mkOption {
          type = types.bool;
          default = false;
          description = "A service account (exactly one of this and isNormalUser must hold).";
        };
        isNormalUser = mkOption {
          type = types.bool;
          default = false;
          description = "A person's account: group users and a home under /home unless set otherwise.";
        };
        group = mkOption {
          type = types.str;
          apply = x: assert (lib.stringLength x < 32 || abort "Group name '${x}' is longer than 31 characters which is not allowed!"); x;
          default = "";
          description = "Name of the account's primary group (must be set).";
        };
        extraGroups = mkOption {
          type = types.listOf types.str;
          default = [ ];
          description = "Names of further groups the account belongs to.";
        };
        home = mkOption {
          type = types.passwdEntry types.path;
          default = "/var/empty";
          description = "Home directory path of the account.";
        };
        createHome = mkOption {
          type = types.bool;
          default = false;
          description = "Whether activation makes the home directory, owned by the account.";
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
          description = "Name of the group (defaults to the attribute name).";
        };
        gid = mkOption {
          type = with types; nullOr int;
          default = null;
          description = "Numeric group id; the stand-in allocates none, so a group the image has needs one.";
        };
        members = mkOption {
          type = with types; listOf (passwdEntry str);
          default = [ ];
          description = "Accounts listed as members of the group in /etc/group.";
        };
      };
    };
in
{
  options.users = {
    users = mkOption {
      default = { };
      type = with types; attrsOf (submodule userOpts);
      description = "User accounts of the system, by name (root is always there).";
    };
    groups = mkOption {
      default = { };
      type = with types; attrsOf (submodule groupOpts);
      description = "Groups of the system, by name (root, wheel, users and nogroup are always there).";
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
          message = "users.users.${user.name}.group is unset: name its primary group (e.g. \"${user.name}\", declared in users.groups.${user.name}).";
        }
      ]) cfg.users
    );
  };
}
