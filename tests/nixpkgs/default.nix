# The offline nixpkgs stand-in, called like nixpkgs: `import ./tests/nixpkgs { }`.
# See docs/nix.md.
{
  system ? builtins.currentSystem,
  config ? { },
  overlays ? [ ],
  ...
}:
import ./pkgs.nix { inherit system overlays config; }
