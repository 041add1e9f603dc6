# The small NixOS configuration the flake's image checks install: a root file system
# by label and a normal user. The boot loader is chosen per image in flake.nix.
{
  fileSystems."/" = {
    device = "/dev/disk/by-label/nixos";
    fsType = "ext4";
  };
  users.users.alice = {
    isNormalUser = true;
    uid = 1000;
    group = "users";
  };
  system.stateVersion = "25.11";
}
