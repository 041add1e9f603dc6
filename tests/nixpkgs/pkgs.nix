# The stand-in's package set: nixpkgs' attribute names, signatures and semantics for
# what default.nix, flake.nix and the tests use, built by this host's Nix 2.8 offline.
# Tool packages are links to Debian's binaries (see build-support/debian-package.sh).
{
  system ? builtins.currentSystem,
  # nixpkgs' overlays: each `final: prev: { ... }` is applied in order over the set.
  overlays ? [ ],
  # nixpkgs' config. The stand-in reads only `foreignDebianPackages` (cross.nix).
  config ? { },
}:
let
  # The stand-in's lib (./lib), or a real nixpkgs lib (selected-lib.nix).
  lib = import ./selected-lib.nix;
  inherit (lib) optionalString;

  storeDir = builtins.storeDir;

  # The system this Nix builds on. A set of another system (an aarch64 image's guest
  # on this x86_64 builder) takes the packages its image needs from ./cross.nix:
  # derivations of this system that unpack binary packages of that one.
  # Pure evaluation (flakes) has no currentSystem: the set is then its own builder's.
  buildSystem = builtins.currentSystem or system;
  kernelFile = if lib.hasPrefix "aarch64-" system then "Image" else "bzImage";
  # Without the package list (config.foreignDebianPackages) such a set is what it was
  # before: derivations of that system, evaluated (flake checks, drvPaths), never built.
  foreignPackages = lib.optionalAttrs (config ? foreignDebianPackages && system != buildSystem) (
    import ./cross.nix {
      inherit lib buildSystem hostPath;
      platform = { inherit system kernelFile; };
      lockFile = config.foreignDebianPackages;
    }
  );

  # Host programs the bootstrap derivations run with before any stand-in package exists.
  hostPath = "/usr/bin:/bin:/usr/sbin:/sbin";

  # A package of links to the executables (and Python modules) of Debian packages.
  debianPackage =
    {
      pname,
      debianPackages ? [ pname ],
      optionalDebianPackages ? [ ],
      # NAME=TARGET links added to bin/ (e.g. nixpkgs' bash also provides sh)
      extraLinks ? [ ],
      passthru ? { },
      meta ? { },
    }:
    derivation {
      name = "${pname}-debian";
      inherit
        system
        debianPackages
        optionalDebianPackages
        extraLinks
        ;
      builder = "/bin/bash";
      args = [ ./build-support/debian-package.sh ];
      PATH = hostPath;
      preferLocalBuild = true;
    }
    // passthru
    // {
      inherit pname meta;
    };

  bash = debianPackage {
    pname = "bash";
    extraLinks = [ "sh=/bin/bash" ];
    meta.mainProgram = "bash";
  };
  coreutils = debianPackage { pname = "coreutils"; };
  findutils = debianPackage { pname = "findutils"; };
  diffutils = debianPackage { pname = "diffutils"; };
  gnused = debianPackage {
    pname = "gnused";
    debianPackages = [ "sed" ];
  };
  gnugrep = debianPackage {
    pname = "gnugrep";
    debianPackages = [ "grep" ];
  };
  gawk = debianPackage {
    pname = "gawk";
    debianPackages = [ ];
    # Debian's default awk (mawk) under nixpkgs' names.
    extraLinks = [
      "awk=/usr/bin/awk"
      "gawk=/usr/bin/awk"
    ];
  };
  gnutar = debianPackage {
    pname = "gnutar";
    debianPackages = [ "tar" ];
  };
  gzip = debianPackage { pname = "gzip"; };
  bzip2 = debianPackage { pname = "bzip2"; };
  xz = debianPackage {
    pname = "xz";
    debianPackages = [ "xz-utils" ];
  };

  stdenvInitialPath = [
    coreutils
    findutils
    diffutils
    gnused
    gnugrep
    gawk
    gnutar
    gzip
    bzip2
    xz
    bash
  ];

  # The store path sourced as `$stdenv/setup`.
  stdenvSetup = derivation {
    name = "stdenv-linux";
    inherit system;
    builder = "/bin/bash";
    PATH = hostPath;
    setupTemplate = ./stdenv/setup.sh;
    shell = "${bash}/bin/bash";
    initialPath = stdenvInitialPath;
    args = [
      "-c"
      ''
        set -eu
        mkdir -p "$out"
        sed -e "s|@shell@|$shell|" -e "s|@initialPath@|$initialPath|" "$setupTemplate" > "$out/setup"
      ''
    ];
  };

  # nixpkgs' mkDerivation, reduced to what the stand-in needs: attributes become the
  # environment, `passthru`/`meta` stay on the Nix value, the builder runs genericBuild.
  mkDerivation =
    {
      name ? "${attrs.pname}-${attrs.version}",
      passthru ? { },
      meta ? { },
      ...
    }@attrs:
    let
      drvAttrs = removeAttrs attrs [
        "passthru"
        "meta"
        "pname"
        "version"
      ];
      drv = derivation (
        {
          inherit system name;
          builder = "${bash}/bin/bash";
          args = [
            "-e"
            ./stdenv/default-builder.sh
          ];
          stdenv = stdenvSetup;
        }
        // drvAttrs
      );
    in
    drv
    // passthru
    // {
      inherit meta passthru;
    }
    // lib.optionalAttrs (attrs ? pname) { inherit (attrs) pname; }
    // lib.optionalAttrs (attrs ? version) { inherit (attrs) version; };

  stdenv = {
    inherit mkDerivation system;
    initialPath = stdenvInitialPath;
    shell = "${bash}/bin/bash";
    isLinux = true;
    # nixpkgs' platform description (isx86, isAarch64, efiArch, ...), from its lib.
    hostPlatform = lib.systems.elaborate system;
    buildPlatform = stdenv.hostPlatform;
    outPath = stdenvSetup.outPath;
  };

  # nixpkgs' runCommandWith/runCommand: the script passed as a file (passAsFile).
  runCommandWith =
    {
      name,
      derivationArgs ? { },
      ...
    }:
    buildCommand:
    mkDerivation (
      {
        enableParallelBuilding = true;
        inherit buildCommand name;
        passAsFile = [ "buildCommand" ] ++ (derivationArgs.passAsFile or [ ]);
      }
      // removeAttrs derivationArgs [ "passAsFile" ]
    );
  runCommand =
    name: env:
    runCommandWith {
      inherit name;
      derivationArgs = env;
    };
  runCommandLocal = name: env: runCommand name ({ preferLocalBuild = true; } // env);

  # nixpkgs' writeTextFile and its short forms.
  writeTextFile =
    {
      name,
      text,
      executable ? false,
      destination ? "",
      checkPhase ? "",
      meta ? { },
      passthru ? { },
    }:
    runCommand name
      {
        inherit
          text
          executable
          checkPhase
          meta
          passthru
          ;
        passAsFile = [ "text" ];
        preferLocalBuild = true;
        allowSubstitutes = false;
      }
      ''
        target=$out${destination}
        mkdir -p "$(dirname "$target")"
        if [ -e "$textPath" ]; then
          mv "$textPath" "$target"
        else
          echo -n "$text" > "$target"
        fi
        if [ -n "$executable" ]; then
          chmod +x "$target"
        fi
        eval "$checkPhase"
      '';
  writeText = name: text: writeTextFile { inherit name text; };
  writeScript =
    name: text:
    writeTextFile {
      inherit name text;
      executable = true;
    };
  writeShellScript =
    name: text:
    writeScript name ''
      #!${bash}/bin/bash
      ${text}
    '';
  writeShellScriptBin =
    name: text:
    writeTextFile {
      inherit name;
      executable = true;
      destination = "/bin/${name}";
      text = ''
        #!${bash}/bin/bash
        ${text}
      '';
      meta.mainProgram = name;
    };

  # nixpkgs' closureInfo: Nix exports the reference graph of rootPaths, the builder
  # turns it into store-paths and a registration for `nix-store --load-db`.
  closureInfo =
    { rootPaths }:
    derivation {
      name = "closure-info";
      inherit system;
      __structuredAttrs = true;
      exportReferencesGraph.closure = rootPaths;
      preferLocalBuild = true;
      builder = "${python3}/bin/python3";
      args = [ ./build-support/closure-info.py ];
    };

  busybox = derivation {
    name = "busybox-static-debian";
    inherit system;
    builder = "/bin/bash";
    PATH = hostPath;
    # A copy, not a link: the stand-in NixOS closure must run inside the image's chroot,
    # where only the store closure exists.
    args = [
      "-c"
      ''
        set -eu
        mkdir -p "$out/bin"
        cp /bin/busybox "$out/bin/busybox"
        for applet in $("$out/bin/busybox" --list); do
          [ "$applet" = busybox ] || ln -s busybox "$out/bin/$applet"
        done
      ''
    ];
  };

  python3 =
    derivation {
      name = "python3-host";
      inherit system;
      builder = "/bin/bash";
      args = [ ./build-support/host-python.sh ];
      PATH = hostPath;
    }
    // {
      pythonVersion = "3.11";
      sitePackages = "lib/python3.11/site-packages";
      interpreter = "${python3}/bin/python3";
      pkgs = python3Packages;
      meta.mainProgram = "python3";
    };

  # A Python package as the stand-in's python3 imports it (from the host's install).
  hostPythonPackage =
    pname: modules:
    derivation {
      name = "${pname}-host-python";
      inherit system modules;
      python = "${python3}/bin/python3";
      builder = "/bin/bash";
      args = [ ./build-support/python-module.sh ];
      PATH = hostPath;
    }
    // {
      inherit pname;
    };

  python3Packages = {
    python = python3;
    pyparted = hostPythonPackage "pyparted" [
      "parted"
      "_ped"
    ];
    pyudev = hostPythonPackage "pyudev" [ "pyudev" ];
    pytest = hostPythonPackage "pytest" [
      "pytest"
      "_pytest"
    ];
    setuptools = hostPythonPackage "setuptools" [ "setuptools" ];

    # nixpkgs' buildPythonApplication for a setuptools (setup.cfg) project: the check
    # phase runs after installation, as nixpkgs runs it as installCheckPhase.
    buildPythonApplication =
      {
        pname,
        version,
        src,
        pyproject ? null,
        format ? null,
        build-system ? [ ],
        dependencies ? [ ],
        propagatedBuildInputs ? [ ],
        nativeCheckInputs ? [ ],
        doCheck ? true,
        checkPhase ? null,
        meta ? { },
        passthru ? { },
        ...
      }@attrs:
      mkDerivation (
        removeAttrs attrs [
          "pyproject"
          "format"
          "build-system"
          "dependencies"
          "checkPhase"
          "doCheck"
        ]
        // {
          name = "${pname}-${version}";
          nativeBuildInputs = [ python3 ] ++ build-system;
          dependencies = dependencies ++ propagatedBuildInputs;
          propagatedBuildInputs = dependencies ++ propagatedBuildInputs;
          inherit nativeCheckInputs;
          phases = "unpackPhase installPhase installCheckPhase";
          installPhase = ''
            runHook preInstall
            ${python3}/bin/python3 ${./build-support/python-application.py} ${python3}/bin/python3
            runHook postInstall
          '';
          doInstallCheck = doCheck;
          installCheckPhase = ''
            export PYTHONPATH=$out/${python3.sitePackages}''${PYTHONPATH:+:$PYTHONPATH}
            export PATH=$out/bin:$PATH
            export HOME=$TMPDIR
          ''
          + (if checkPhase != null then checkPhase else "runHook preCheck; runHook postCheck");
          inherit meta passthru;
        }
      );
  };

  e2fsprogs = debianPackage { pname = "e2fsprogs"; };
  dosfstools = debianPackage { pname = "dosfstools"; };
  mtools = debianPackage { pname = "mtools"; };
  # fsType = "btrfs", "xfs", "erofs", "squashfs" (make_disk_image/filesystems/).
  btrfs-progs = debianPackage { pname = "btrfs-progs"; };
  xfsprogs = debianPackage { pname = "xfsprogs"; };
  erofs-utils = debianPackage { pname = "erofs-utils"; };
  squashfsTools = debianPackage {
    pname = "squashfs-tools";
    debianPackages = [ "squashfs-tools" ];
  };
  gptfdisk = debianPackage {
    pname = "gptfdisk";
    debianPackages = [ "gdisk" ];
  };
  util-linux = debianPackage {
    pname = "util-linux";
    # nixpkgs' util-linux holds what Debian splits into three packages.
    debianPackages = [
      "util-linux"
      "fdisk"
      "mount"
    ];
  };
  parted = debianPackage { pname = "parted"; };
  qemu-utils = debianPackage { pname = "qemu-utils"; };
  # format = "raw-zstd" (make_disk_image/formats.py runs `zstd`).
  zstd = debianPackage { pname = "zstd"; };
  qemu = debianPackage {
    pname = "qemu";
    debianPackages = [
      "qemu-system-x86"
      "qemu-utils"
    ];
    # qemu-system-aarch64, for the guests of aarch64 images (nixpkgs' qemu has every
    # system's emulator).
    optionalDebianPackages = [ "qemu-system-arm" ];
  };
  nix = debianPackage {
    pname = "nix";
    debianPackages = [ "nix-bin" ];
  };
  kmod = debianPackage { pname = "kmod"; };
  systemdMinimal = debianPackage {
    pname = "systemd-minimal";
    debianPackages = [
      "systemd"
      "systemd-boot"
    ];
    # udevadm: libparted runs `udevadm settle` (and does without it).
    optionalDebianPackages = [ "udev" ];
  };
  jq = debianPackage { pname = "jq"; };

  # nixpkgs' linux: the kernel image under the name stdenv.hostPlatform.linux-kernel.target
  # gives it and lib/modules, the host's Debian ones. For another system: cross.nix.
  linux = derivation {
    name = "linux-debian";
    inherit system kernelFile;
    builder = "/bin/bash";
    PATH = hostPath;
    args = [
      "-c"
      ''
        set -eu
        version=$(ls /lib/modules | sort -V | tail -n 1)
        mkdir -p "$out/lib"
        cp "/boot/vmlinuz-$version" "$out/$kernelFile"
        ln -s "/lib/modules" "$out/lib/modules"
      ''
    ];
  };
  # nixpkgs' static package set, for what needs no C library (busybox in an initramfs);
  # Debian's busybox-static is already static.
  pkgsStatic = { inherit busybox; };

  # nixpkgs' OVMF: the `fd` output holds FV/OVMF_CODE.fd and FV/OVMF_VARS.fd, and
  # firmware/variables name them. Debian's 4 MiB builds without secure boot need no SMM.
  # For aarch64, as nixpkgs' edk2 names them: FV/AAVMF_CODE.fd and FV/AAVMF_VARS.fd
  # (Debian's qemu-efi-aarch64, padded to qemu's 64 MiB flash banks).
  OVMF =
    let
      prefix = if lib.hasPrefix "aarch64-" system then "AAVMF" else "OVMF";
      debianFiles =
        if prefix == "AAVMF" then
          {
            code = "/usr/share/AAVMF/AAVMF_CODE.fd";
            variables = "/usr/share/AAVMF/AAVMF_VARS.fd";
          }
        else
          {
            code = "/usr/share/OVMF/OVMF_CODE_4M.fd";
            variables = "/usr/share/OVMF/OVMF_VARS_4M.fd";
          };
      # Files of the image's system, copied by the builder (for any system).
      fd =
        derivation {
          name = "OVMF-debian-fd";
          system = buildSystem;
          builder = "/bin/bash";
          PATH = hostPath;
          args = [
            "-c"
            ''
              set -eu
              mkdir -p "$out/FV"
              cp ${debianFiles.code} "$out/FV/${prefix}_CODE.fd"
              cp ${debianFiles.variables} "$out/FV/${prefix}_VARS.fd"
            ''
          ];
        }
        // passthru;
      passthru = {
        firmware = "${fd}/FV/${prefix}_CODE.fd";
        variables = "${fd}/FV/${prefix}_VARS.fd";
        systemManagementModeRequired = false;
      };
    in
    fd // { inherit fd; };

  # The guest runner of runInLinuxVM is the project's own qemu TCG runner as the tests
  # use it (testsys/vmtools.py driving make_disk_image/runner.py with the host's
  # kernel), taken from the checkout this stand-in lives in.
  vmRunnerSource = ../..;
  vmRunner =
    if builtins.pathExists (vmRunnerSource + "/testsys/vmtools.py") then
      runCommand "make-disk-image-vm-runner" { } ''
        mkdir -p $out/testsys
        cp -r ${builtins.path {
          path = vmRunnerSource + "/make_disk_image";
          name = "make_disk_image";
          filter = path: _type: baseNameOf path != "__pycache__";
        }} $out/make_disk_image
        cp ${vmRunnerSource + "/testsys/__init__.py"} $out/testsys/__init__.py
        cp ${vmRunnerSource + "/testsys/vmtools.py"} $out/testsys/vmtools.py
      ''
    else
      throw "tests/nixpkgs: vmTools needs testsys/vmtools.py two directories up; load the stand-in from a checkout of the project (path:REPO?dir=tests/nixpkgs for flakes)";

  vmTools = import ./build-support/vm.nix {
    inherit
      lib
      bash
      coreutils
      python3
      qemu
      kmod
      vmRunner
      writeText
      storeDir
      ;
  };

  # nixos-enter with nixpkgs' interface: the one testsys/ provides for the project's
  # tests (it needs the checkout, as vmTools does).
  # A script for any system (`#!/usr/bin/env bash`), copied by the builder.
  nixosEnterScript = ../../testsys/bin/nixos-enter;
  nixos-enter =
    if builtins.pathExists nixosEnterScript then
      derivation {
        name = "nixos-enter";
        system = buildSystem;
        builder = "/bin/bash";
        PATH = hostPath;
        script = nixosEnterScript;
        args = [
          "-c"
          "mkdir -p $out/bin && cp $script $out/bin/nixos-enter && chmod +x $out/bin/nixos-enter"
        ];
      }
      // {
        meta.mainProgram = "nixos-enter";
      }
    else
      throw "tests/nixpkgs: nixos-enter comes from testsys/bin/nixos-enter two directories up; load the stand-in from a checkout of the project";

  # A formatter package for flake.nix's `formatter` output: there is no nixfmt on
  # Debian 12, so running it says so.
  nixfmt-tree = writeShellScriptBin "treefmt" ''
    echo "nixfmt is not available in the offline nixpkgs stand-in" >&2
    exit 1
  '';

  callPackage =
    fn: overrides:
    let
      f = if builtins.isFunction fn then fn else import fn;
      wanted = builtins.functionArgs f;
      available = lib.filterAttrs (name: _: builtins.hasAttr name final) wanted;
    in
    f ((builtins.mapAttrs (name: _: final.${name}) available) // overrides);

  pkgs = {
    inherit
      lib
      system
      stdenv
      bash
      coreutils
      findutils
      diffutils
      gnused
      gnugrep
      gawk
      gnutar
      gzip
      bzip2
      xz
      busybox
      pkgsStatic
      linux
      python3
      python3Packages
      e2fsprogs
      dosfstools
      mtools
      btrfs-progs
      xfsprogs
      erofs-utils
      squashfsTools
      gptfdisk
      util-linux
      parted
      qemu-utils
      zstd
      qemu
      nix
      kmod
      systemdMinimal
      jq
      OVMF
      runCommand
      runCommandWith
      runCommandLocal
      writeTextFile
      writeText
      writeScript
      writeShellScript
      writeShellScriptBin
      closureInfo
      vmTools
      nixos-enter
      nixfmt-tree
      callPackage
      ;
    stdenvNoCC = stdenv;
    systemd = systemdMinimal;
    python3Minimal = python3;
    path = ./.;
    pkgs = final;
    inherit config;
    # What lib.types.pkgs (the type of NixOS' nixpkgs.pkgs) checks for.
    _type = "pkgs";
  };

  # The packages of another system replace the builder's. Its python3Packages keeps the
  # attributes cross.nix does not give (buildPythonApplication, ...): evaluable, as in
  # nixpkgs (flake.nix's aarch64-linux checks evaluate the engine's package).
  pkgs' =
    pkgs
    // foreignPackages
    // lib.optionalAttrs (foreignPackages ? python3Packages) {
      python3Packages = pkgs.python3Packages // foreignPackages.python3Packages;
    };

  # The overlays, as nixpkgs applies them: each sees the final set and the one before.
  # (Unlike nixpkgs, the stand-in's own packages do not see what an overlay replaces.)
  final = builtins.foldl' (prev: overlay: prev // overlay final prev) pkgs' overlays;
in
final
