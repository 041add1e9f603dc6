# The stand-in's `lib.nixosSystem`: a NixOS-shaped configuration without the module
# system. Modules are attribute sets, files holding one, or functions of
# { config, pkgs, lib, ... } returning one; they are merged recursively over defaults
# that mirror NixOS' defaults for the options make-disk-image reads.
# `system.build.toplevel` is a real store path whose closure (busybox, etc,
# system-path) runs inside the image's chroot.
{ pkgs, lib }:
{
  modules ? [ ],
  specialArgs ? { },
  ...
}:
let
  defaults = {
    boot.loader.grub = {
      enable = true;
      device = "";
      devices = [ ];
    };
    boot.loader.limine = {
      enable = false;
      biosSupport = false;
      biosDevice = "nodev";
    };
    boot.loader.systemd-boot.enable = false;
    networking.hostName = "nixos";
    system.nixos = {
      release = "25.11";
      versionSuffix = "pre-standin";
      version = "25.11pre-standin";
    };
    system.stateVersion = "25.11";
    users.users.root = {
      uid = 0;
      group = "root";
      home = "/root";
    };
    users.groups = {
      root.gid = 0;
      wheel.gid = 1;
      users.gid = 100;
    };
  };

  evaluated = lib.fix (
    config:
    let
      args = specialArgs // {
        inherit config pkgs lib;
        modulesPath = toString ./.;
      };
      declared = lib.foldl' lib.recursiveUpdate defaults (
        map (
          module:
          let
            # A module is a file, a function of the module arguments, or an attribute set.
            loaded = if builtins.isPath module || builtins.isString module then import module else module;
          in
          if builtins.isFunction loaded then loaded args else loaded
        ) modules
      );
    in
    declared
    // {
      # NixOS adds boot.loader.grub.device to boot.loader.grub.devices.
      boot = declared.boot // {
        loader = declared.boot.loader // {
          grub =
            declared.boot.loader.grub
            // {
              devices =
                declared.boot.loader.grub.devices
                ++ lib.optional ((declared.boot.loader.grub.device or "") != "") declared.boot.loader.grub.device;
            };
        };
      };
      system = declared.system // {
        build = (declared.system.build or { }) // import ./toplevel.nix { inherit pkgs lib config; };
      };
    }
  );
in
{
  config = evaluated;
  inherit pkgs;
  options = { };
  _type = "configuration";
}
