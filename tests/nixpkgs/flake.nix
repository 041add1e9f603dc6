{
  # A nixpkgs-shaped flake for testing the project's flake offline:
  #   nix flake check --override-input nixpkgs 'git+file://REPO?dir=tests/nixpkgs'
  # (loaded from the whole checkout: vmTools uses REPO/testsys/vmtools.py and make_disk_image/).
  description = "Offline nixpkgs stand-in (tests only)";

  outputs =
    { self }:
    let
      # The stand-in's lib, or a real nixpkgs lib (selected-lib.nix).
      lib0 = import ./selected-lib.nix;
      legacyPackages = lib0.genAttrs lib0.systems.flakeExposed (
        system: import ./pkgs.nix { inherit system; }
      );
    in
    {
      # As nixpkgs' flake: lib extended with nixosSystem, which is eval-config.nix with
      # `system = null` (the system comes from the modules, nixpkgs.hostPlatform or
      # nixpkgs.system, unless the caller passes one) and a version suffix module.
      lib = lib0.extend (
        final: prev: {
          nixosSystem =
            args:
            import ./nixos/lib/eval-config.nix (
              {
                lib = final;
                system = null;
              }
              // args
              // {
                modules = args.modules ++ [
                  {
                    system.nixos.versionSuffix = ".${
                      final.substring 0 8 (self.lastModifiedDate or "19700101")
                    }.${self.shortRev or "dirty"}";
                  }
                ];
              }
            );
        }
      );
      inherit legacyPackages;
    };
}
