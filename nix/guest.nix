# The guest of an image of another system (docs/aarch64.md): what runs in its build VM,
# taken from the image's own package set `guestPkgs` (with real nixpkgs: packages the
# binary cache has, nothing cross-compiled), assembled by derivations of the builder
# (`pkgs`), which only write links and a script, so no builder of the image's system is
# needed.
{
  pkgs,
  guestPkgs,
  lib,
  platform,
  engineSource,
}:
let
  system = guestPkgs.stdenv.hostPlatform.system;
  python3 = guestPkgs.python3;
  source = builtins.path {
    path = engineSource;
    name = "make_disk_image";
    filter = path: _type: baseNameOf path != "__pycache__";
  };
  # What the guest phase and nixos-enter run.
  tools = [
    guestPkgs.bash
    guestPkgs.coreutils
    guestPkgs.util-linux
    guestPkgs.nixos-enter
  ];
in
rec {
  # The image system's kernel: `platform.kernelFile` (Image on aarch64) and its modules.
  kernel = guestPkgs.linux;

  # The engine for the guest: the same pure-Python source, run by the image system's
  # python3 with its pyudev.
  # Its byte code is written by the builder's python3 when that is the guest's version
  # (byte code depends on nothing else); otherwise the guest compiles the engine at every
  # start, under TCG where the systems differ. Hash-checked: the store resets file times.
  engine = pkgs.runCommand "make-disk-image-guest-${system}" { } ''
    mkdir -p $out/bin $out/lib
    cp -r ${source} $out/lib/make_disk_image
    chmod -R u+w $out/lib/make_disk_image
    ${lib.optionalString (pkgs.python3.pythonVersion == python3.pythonVersion) ''
      ${pkgs.python3.interpreter} -m compileall -q --invalidation-mode checked-hash \
        $out/lib/make_disk_image
    ''}
    cat > $out/bin/make-disk-image <<EOF
    #!${python3}/bin/python3
    import sys
    sys.path[:0] = ["$out/lib", "${guestPkgs.python3Packages.pyudev}/${python3.sitePackages}"]
    from make_disk_image.cli import main
    sys.exit(main())
    EOF
    chmod 0555 $out/bin/make-disk-image
  '';

  # The build VM's root for make_disk_image.vm --root, with boot/vmlinuz-VERSION and
  # lib/modules/VERSION (the kernel it boots) and busybox (its initramfs), which
  # default.nix passes as --kernel, --modules and --busybox, and the tools on the usual
  # paths. The store is shared into the guest, so links suffice. busybox is the set's
  # dynamically linked one, which Hydra builds for every system (pkgsStatic.busybox it
  # does not: docs/aarch64.md); the initramfs carries its interpreter and libraries.
  root = pkgs.runCommand "make-disk-image-guest-root-${system}" { } ''
    mkdir -p $out/boot $out/lib $out/bin $out/usr/bin
    for version in $(ls ${kernel}/lib/modules); do
      ln -s ${kernel}/${platform.kernelFile} $out/boot/vmlinuz-$version
    done
    ln -s ${kernel}/lib/modules $out/lib/modules
    ln -s ${guestPkgs.busybox}/bin/busybox $out/bin/busybox
    for dir in ${lib.concatMapStringsSep " " (p: "${p}/bin") tools}; do
      for tool in "$dir"/*; do
        ln -sf "$tool" $out/usr/bin/
      done
    done
    ln -sf ${python3}/bin/python3 $out/usr/bin/python3
    ln -s bash $out/usr/bin/sh
    ln -s usr/bin/sh $out/bin/sh
  '';
}
