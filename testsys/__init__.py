"""A NixOS-shaped test system and the qemu boot checks that prove images boot.

`testsys.system` builds the system as real store paths with the host's Nix (no
nixpkgs needed), `testsys/bin/nixos-enter` stands in for nixpkgs' nixos-enter, and
`testsys.boot` boots a built image under SeaBIOS or OVMF and reads what its initramfs
reports. `python3 -m testsys.demo OUTDIR` shows all of it end to end.
"""
