# The tools the engine's native phases run (prepare, finish, repart's build), named once
# for default.nix and nix/repart-image.nix; each adds what only its own builder needs.
pkgs: [
  pkgs.util-linux
  pkgs.parted
  pkgs.e2fsprogs
  pkgs.dosfstools
  pkgs.mtools
  pkgs.btrfs-progs
  pkgs.xfsprogs
  pkgs.erofs-utils
  pkgs.squashfsTools
  pkgs.qemu-utils
  pkgs.zstd
  pkgs.xz
  pkgs.nix
]
