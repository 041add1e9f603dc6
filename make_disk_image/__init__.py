"""NixOS disk images: a typed re-implementation of nixpkgs' make-disk-image.nix."""
