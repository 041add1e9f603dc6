{
  # A nixpkgs-shaped flake for testing the project's flake offline:
  #   nix flake check --override-input nixpkgs 'path:REPO?dir=tests/nixpkgs'
  # (loaded from the whole checkout: vmTools uses REPO/make_disk_image/vm.py).
  description = "Offline nixpkgs stand-in (tests only)";

  outputs =
    { self }:
    let
      lib = import ./lib.nix;
      legacyPackages = lib.genAttrs lib.systems.flakeExposed (system: import ./pkgs.nix { inherit system; });
    in
    {
      lib = lib // {
        nixosSystem =
          {
            system ? "x86_64-linux",
            ...
          }@args:
          import ./nixos {
            pkgs = legacyPackages.${args.pkgs.system or system};
            inherit lib;
          } (removeAttrs args [ "system" ]);
      };
      inherit legacyPackages;
    };
}
