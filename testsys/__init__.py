"""A NixOS-shaped test system and the qemu boot checks that prove images boot.

`testsys.system` builds the system as real store paths with the host's Nix (no
nixpkgs needed), `testsys/bin/nixos-enter` stands in for nixpkgs' nixos-enter, and
`testsys.boot` boots a built image under SeaBIOS or OVMF and reads what its initramfs
reports (`testsys.guest_report`), `testsys.report_check` compares that with the image's
spec, and `testsys.efi_vars` and `testsys.esp_loaders` read what an image holds for UEFI.
`python3 -m testsys.demo OUTDIR` shows all of it end to end.
"""
