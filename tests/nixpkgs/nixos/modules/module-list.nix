# The stand-in's NixOS modules, at the paths nixpkgs has them under nixos/modules
# (so `modulesPath + "/image/file-options.nix"` resolves as with nixpkgs).
[
  ./config/networking.nix
  ./config/users-groups.nix
  ./image/images.nix
  ./misc/assertions.nix
  ./misc/nixpkgs.nix
  ./misc/version.nix
  ./system/activation/top-level.nix
  ./system/boot/loader.nix
  ./system/build.nix
  ./tasks/filesystems.nix
]
