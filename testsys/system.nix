# The NixOS-shaped test system: real store paths built by Nix 2.8 without nixpkgs.
#
# Every derivation is a plain `derivation` with /bin/sh as builder (the sandbox is off,
# so builders may read host files and run host tools). Host inputs that end up in the
# image (kernel, initramfs, busybox, GRUB, systemd-boot, scripts) are imported with
# builtins.path, so their contents, not their host paths, decide the store paths.
#
# `configFile` is a JSON file written by testsys/system.py (see TestSystemConfig there).
#
# An aarch64 system is made the same way on an x86_64 builder, as with a binary cache:
# its inputs are Debian's arm64 files (testsys/guestroot.py), copied, never run here.
# The derivations are the builder's (`system`); the system they make is `cfg.system`.
{ configFile }:
let
  cfg = builtins.fromJSON (builtins.readFile configFile);
  system = "x86_64-linux";

  hostFile = name: path: builtins.path { inherit name; path = /. + path; };
  script = name: hostFile name "${cfg.scriptsDir}/${name}";

  run = name: env: builderScript:
    derivation ({
      inherit name system;
      builder = "/bin/sh";
      args = [ "-e" "-c" builderScript ];
      PATH = "/usr/bin:/bin:/usr/sbin:/sbin";
    } // env);

  # Static busybox: the interpreter of every script that runs inside the image.
  # Its applets are listed by testsys/system.py: a busybox of another architecture
  # cannot run here to list them.
  busybox = run "busybox-static" {
    src = hostFile "busybox" cfg.busybox;
    applets = builtins.concatStringsSep " " cfg.busyboxApplets;
  } ''
    mkdir -p $out/bin
    cp $src $out/bin/busybox
    chmod 0555 $out/bin/busybox
    for applet in $applets; do
      [ "$applet" = busybox ] || ln -s busybox "$out/bin/$applet"
    done
  '';

  # Host (Debian) dynamic programs made runnable inside the image: the binaries, every
  # library ldd names and the dynamic loader go into the store path, and bin/NAME runs
  # the binary through that loader with that library directory only.
  hostTools = run "testsys-host-tools" {
    programs = map (p: hostFile (baseNameOf p) p) cfg.hostPrograms;
    inherit busybox;
  } ''
    mkdir -p $out/bin $out/libexec $out/lib
    for program in $programs; do
      name=''${program#*-}
      cp $program $out/libexec/$name
      chmod 0555 $out/libexec/$name
      ldd $program | awk '/=> \// { print $3 } /^[[:space:]]*\/.*ld-linux/ { print $1 }' |
        while read -r lib; do cp -L -n "$lib" $out/lib/; done
      printf '#!%s/bin/sh\nexec %s/lib/ld-linux-x86-64.so.2 --library-path %s/lib %s "$@"\n' \
        $busybox $out $out $out/libexec/$name > $out/bin/$name
      chmod 0555 $out/bin/$name
    done
  '';

  grubModules = hostFile "grub-${cfg.grubTarget}-modules" cfg.grubModules;
  systemdBoot = hostFile "systemd-boot${cfg.efiArch}.efi" cfg.systemdBootEfi;

  # GRUB for UEFI (grub.efiSupport): one EFI image with the modules the test system's
  # grub.cfg needs, its prefix /grub on the partition it is loaded from. The builder's
  # grub-mkimage writes images of any target from that target's modules.
  grubEfi = run "grub-${cfg.grubTarget}-image" { inherit grubModules; } ''
    mkdir $out
    grub-mkimage --directory=$grubModules --format=${cfg.grubTarget} --prefix=/grub \
      --output=$out/grub.efi part_gpt part_msdos fat ext2 normal linux configfile echo \
      search search_label gzio
  '';
  grubEfiPath = if cfg.bootLoader.grubEfi then "${grubEfi}/grub.efi" else "";

  kernel = run "linux-${cfg.kernelVersion}" { src = hostFile "vmlinuz" cfg.kernelImage; } ''
    mkdir $out
    cp $src $out/${cfg.kernelFile}
  '';

  initrd = run "initrd-testsys-${cfg.kernelVersion}" { src = hostFile "initrd.gz" cfg.initrd; } ''
    mkdir $out
    cp $src $out/initrd
  '';

  # The tools a shell in the system finds on PATH (nixos-enter's `-c` runs sw/bin/bash).
  systemPath = run "system-path" { inherit busybox; } ''
    mkdir -p $out/bin
    for applet in $busybox/bin/*; do ln -s $applet $out/bin/; done
    printf '#!%s/bin/sh\nexec %s/bin/sh "$@"\n' $busybox $busybox > $out/bin/bash
    chmod 0555 $out/bin/bash
  '';

  etc = run "etc" {
    inherit (cfg) passwd group hostName nixosVersion;
  } ''
    mkdir -p $out/etc
    printf '%s' "$passwd" > $out/etc/passwd
    printf '%s' "$group" > $out/etc/group
    printf '%s\n' "$hostName" > $out/etc/hostname
    printf 'NAME=NixOS\nID=nixos\nVERSION_ID="%s"\nPRETTY_NAME="NixOS %s (test system)"\n' \
      "$nixosVersion" "$nixosVersion" > $out/etc/os-release
  '';

  toplevel = run "nixos-system-${cfg.hostName}-${cfg.nixosVersion}" {
    inherit busybox hostTools grubModules systemdBoot kernel initrd systemPath etc;
    inherit (cfg) kernelParams nixosVersion efiArch;
    imageSystem = cfg.system;
    grubEfi = grubEfiPath;
    grubDevices = builtins.concatStringsSep " " cfg.bootLoader.grubDevices;
    systemdBootEnable = if cfg.bootLoader.systemdBoot then "1" else "";
    canTouchEfiVariables = if cfg.bootLoader.canTouchEfiVariables then "1" else "";
    efiSysMountPoint = cfg.bootLoader.efiSysMountPoint;
    xbootldrMountPoint = cfg.bootLoader.xbootldrMountPoint;
    bootctlSystemd = toString cfg.bootLoader.bootctlSystemd;
    detectVirt = if cfg.bootLoader.detectVirt then "${hostTools}/bin/systemd-detect-virt" else "";
    bootctlScript = script "bootctl-touch-variables.sh";
    activateScript = script "activate.sh";
    initScript = script "stage-2-init.sh";
    switchScript = script "switch-to-configuration.sh";
  } ''
    mkdir -p $out/bin
    ln -s $kernel/${cfg.kernelFile} $out/kernel
    ln -s $initrd/initrd $out/initrd
    ln -s $etc/etc $out/etc
    ln -s $systemPath $out/sw
    printf '%s' "$kernelParams" > $out/kernel-params
    printf '%s' "$nixosVersion" > $out/nixos-version
    printf '%s' "$imageSystem" > $out/system
    # The substitutions nixpkgs' substituteAll would make: @name@ -> value.
    subst() {
      sed -e "s|@out@|$out|g" -e "s|@busybox@|$busybox|g" -e "s|@hostTools@|$hostTools|g" \
        -e "s|@grubModules@|$grubModules|g" -e "s|@systemdBoot@|$systemdBoot|g" \
        -e "s|@etc@|$etc|g" -e "s|@grubDevices@|$grubDevices|g" \
        -e "s|@systemdBootEnable@|$systemdBootEnable|g" \
        -e "s|@canTouchEfiVariables@|$canTouchEfiVariables|g" \
        -e "s|@efiSysMountPoint@|$efiSysMountPoint|g" \
        -e "s|@xbootldrMountPoint@|$xbootldrMountPoint|g" \
        -e "s|@bootctlSystemd@|$bootctlSystemd|g" -e "s|@detectVirt@|$detectVirt|g" \
        -e "s|@grubEfi@|$grubEfi|g" -e "s|@efiArch@|$efiArch|g" "$1" > "$2"
      chmod 0555 "$2"
    }
    mkdir -p $out/libexec
    subst $bootctlScript $out/libexec/bootctl-touch-variables
    subst $activateScript $out/activate
    subst $initScript $out/init
    subst $switchScript $out/bin/switch-to-configuration
  '';

  channel = run "nixos-${cfg.nixosVersion}" { inherit (cfg) nixosVersion; } ''
    mkdir -p $out/nixos
    printf '{ ... }: throw "the make-disk-image test channel holds no nixpkgs"\n' \
      > $out/nixos/default.nix
    printf '%s' "$nixosVersion" > $out/nixos/.version
    printf '.test' > $out/nixos/.version-suffix
  '';
in
{
  inherit toplevel channel busybox;
}
