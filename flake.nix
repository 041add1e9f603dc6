{
  description = "make-disk-image: NixOS disk images built by a typed Python engine, a drop-in for nixpkgs' make-disk-image.nix";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      # The images `nix flake check` builds: a small NixOS configuration (see
      # nix/check-configuration.nix) on a BIOS and a UEFI layout, through the VM.
      imageChecks =
        pkgs:
        let
          configWith =
            bootLoader:
            (lib.nixosSystem {
              inherit (pkgs.stdenv.hostPlatform) system;
              modules = [
                ./nix/check-configuration.nix
                bootLoader
              ];
            }).config;
          grub.boot.loader.grub = {
            enable = true;
            device = "/dev/vda";
          };
          systemd-boot.boot.loader = {
            grub.enable = false;
            systemd-boot.enable = true;
            efi.canTouchEfiVariables = true;
          };
          image =
            bootLoader: args:
            self.lib.makeDiskImage (
              {
                inherit pkgs lib;
                config = configWith bootLoader;
              }
              // args
            );
        in
        # BIOS boot (GRUB i386-pc) exists on x86 only, as in nixos-tests/.
        lib.optionalAttrs pkgs.stdenv.hostPlatform.isx86 {
          image-legacy-raw = image grub {
            partitionTableType = "legacy";
            format = "raw";
          };
        }
        // {
          image-efi-qcow2 = image systemd-boot {
            partitionTableType = "efi";
            format = "qcow2";
            touchEFIVars = true;
          };
          # No boot loader is installed; GRUB is only the configuration's.
          image-nix-store = image grub {
            onlyNixStore = true;
            installBootLoader = false;
            partitionTableType = "none";
          };
        };
    in
    {
      # Same arguments as nixpkgs' nixos/lib/make-disk-image.nix:
      #   makeDiskImage { inherit pkgs lib; config = nixosConfiguration.config; format = "qcow2"; }
      lib.makeDiskImage = import ./default.nix;

      # pkgs.makeDiskImage (the same arguments but pkgs and lib, which are the overlaid
      # set's) and the engine as pkgs.make-disk-image.
      overlays.default = final: prev: {
        make-disk-image = final.callPackage ./nix/package.nix { };
        makeDiskImage = args: import ./default.nix ({ pkgs = final; inherit (final) lib; } // args);
      };

      # makeDiskImage's arguments as options `makeDiskImage.*`, the image as
      # config.system.build.diskImage (and the image variant `make-disk-image` where
      # nixpkgs has image.modules). See nix/module.nix.
      nixosModules.default = {
        _file = ./nix/module.nix;
        imports = [ ./nix/module.nix ];
      };

      packages = forAllSystems (pkgs: {
        default = pkgs.callPackage ./nix/package.nix { };
      });

      checks = forAllSystems (
        pkgs:
        {
          # Its check phase is a smoke test; the unit tests run from the checkout.
          package = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        }
        // imageChecks pkgs
        # The NixOS VM tests need real nixpkgs (testers.runNixOSTest); the offline
        # stand-in in tests/nixpkgs has none.
        // lib.optionalAttrs (pkgs ? testers.runNixOSTest) (
          import ./nixos-tests {
            inherit pkgs;
            inherit (self.lib) makeDiskImage;
          }
        )
      );

      formatter = forAllSystems (pkgs: pkgs.nixfmt-tree);
    };
}
