# The packages a NixOS image of another system needs on this builder (default.nix
# `guestPkgs`, nix/guest.nix; docs/aarch64.md), as binary packages of that system:
# with real nixpkgs they are substituted from the binary cache, here they are Debian's
# packages of its architecture, fetched and unpacked by derivations of the builder.
# Nothing is compiled and nothing of that system runs on the builder.
#
# The packages come from a list (`config.foreignDebianPackages`, a JSON file written by
# `python3 -m testsys.guestroot --lock FILE`): each package's version, file and sha256,
# so that each file is a fixed-output derivation.
{
  lib,
  buildSystem,
  hostPath,
  platform,
  lockFile,
}:
let
  lock =
    if lockFile == null then
      throw (
        "tests/nixpkgs: the ${platform.system} package set on ${buildSystem} unpacks Debian's "
        + "packages of that architecture: set nixpkgs.config.foreignDebianPackages to the "
        + "file `python3 -m testsys.guestroot --lock FILE` writes"
      )
    else
      builtins.fromJSON (builtins.readFile lockFile);

  debianFile =
    package:
    let
      entry =
        lock.packages.${package}
          or (throw "tests/nixpkgs: ${toString lockFile} lists no Debian package ${package}");
    in
    derivation {
      name = "${package}_${lock.arch}.deb";
      system = buildSystem;
      builder = "/bin/bash";
      args = [ ./build-support/debian-fetch.sh ];
      inherit package;
      inherit (entry) version file;
      inherit (lock) arch cache;
      outputHashMode = "flat";
      outputHashAlgo = "sha256";
      outputHash = entry.sha256;
      preferLocalBuild = true;
    };

  unpacked =
    {
      pname,
      debianPackages,
      libs ? null,
      postUnpack ? "",
      passthru ? { },
    }:
    derivation {
      name = "${pname}-debian-${lock.arch}";
      system = buildSystem;
      builder = "/bin/bash";
      args = [ ./build-support/debian-unpack.sh ];
      PATH = hostPath;
      debs = map debianFile debianPackages;
      libs = if libs == null then "" else libs;
      inherit postUnpack;
      preferLocalBuild = true;
    }
    // passthru
    // {
      inherit pname;
    };

  # The C library and every library the programs below load (nixpkgs' glibc and the
  # libraries each package would take).
  libs = unpacked {
    pname = "libs";
    debianPackages = [
      "libc6"
      "libacl1"
      "libattr1"
      "libaudit1"
      "libblkid1"
      "libbz2-1.0"
      "libcap-ng0"
      "libcap2"
      "libcrypt1"
      "libexpat1"
      "libfdisk1"
      "libffi8"
      "libgcrypt20"
      "libgmp10"
      "libgpg-error0"
      "liblz4-1"
      "liblzma5"
      "libmount1"
      "libncursesw6"
      "libpam0g"
      "libpcre2-8-0"
      "libreadline8"
      "libselinux1"
      "libsmartcols1"
      "libsqlite3-0"
      "libssl3"
      "libsystemd0"
      "libtinfo6"
      "libudev1"
      "libuuid1"
      "libzstd1"
      "zlib1g"
    ];
  };
  package =
    pname: debianPackages: extra:
    unpacked ({ inherit pname debianPackages libs; } // extra);

  python = lock.python;
  pythonVersion = lib.removePrefix "python" python;
  sitePackages = "lib/${python}/site-packages";

  # nixpkgs' python3 and its packages carry byte code, which Debian's maintainer scripts
  # (py3compile) would write; the host's interpreter of the same version writes it here.
  # Hash-checked: the store resets every file's time. Exit status 1 is the standard
  # library's test files that do not compile on purpose.
  compilePython = dir: ''
    if command -v ${python} >/dev/null; then
      ${python} -m compileall -q --invalidation-mode checked-hash "${dir}" || [ $? = 1 ]
    fi
  '';

  python3 = package "python3" [ "${python}-minimal" "lib${python}-minimal" "lib${python}-stdlib" "python3-minimal" ] {
    postUnpack = compilePython "$out/lib/${python}";
    passthru = {
      inherit pythonVersion sitePackages;
      interpreter = "${python3}/bin/python3";
      pkgs = python3Packages;
      meta.mainProgram = "python3";
    };
  };

  # pyudev loads libudev through ctypes' find_library, which finds nothing in a store
  # path (no ldconfig cache there): it is given libudev's path, as nixpkgs' pyudev is.
  pyudev = package "pyudev" [ "python3-pyudev" ] {
    postUnpack = ''
      mkdir -p "$out/${sitePackages}"
      mv "$out/lib/python3/dist-packages/pyudev" "$out/${sitePackages}/"
      utils="$out/${sitePackages}/pyudev/_ctypeslib/utils.py"
      grep -q 'library_name = find_library(name)$' "$utils"
      sed -i "s|library_name = find_library(name)$|&\n        if name == \"udev\" and not library_name:\n            library_name = \"$(echo ${libs}/lib/*-linux-gnu/libudev.so.1)\"|" "$utils"
      ${compilePython "$out/${sitePackages}"}
    '';
  };
  python3Packages = {
    python = python3;
    inherit pyudev;
  };

  # nixpkgs' linux: the kernel image under the platform's name (`Image`, uncompressed,
  # as boot loaders load it) and lib/modules with its modules.dep.
  linux = package "linux" [ lock.kernel ] {
    postUnpack = ''
      for modules in "$out"/lib/modules/*; do
        version=''${modules##*/}
        depmod -b "$out" "$version"
        image="$out/boot/vmlinuz-$version"
        if gzip -t "$image" 2>/dev/null; then
          gzip -dc "$image" > "$out/${platform.kernelFile}"
        else
          cp "$image" "$out/${platform.kernelFile}"
        fi
      done
    '';
    passthru = {
      version = lib.removePrefix "linux-image-" lock.kernel;
    };
  };

  # nixpkgs' busybox is dynamically linked (Debian's busybox package); pkgsStatic's is
  # Debian's busybox-static.
  busybox = package "busybox" [ "busybox" ] { };
in
{
  inherit
    linux
    python3
    python3Packages
    busybox
    ;
  pkgsStatic.busybox = package "busybox-static" [ "busybox-static" ] { };
  bash = package "bash" [ "bash" ] { };
  coreutils = package "coreutils" [ "coreutils" ] { };
  util-linux = package "util-linux" [ "util-linux" "mount" "fdisk" ] { };
}
