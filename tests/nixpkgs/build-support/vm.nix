# The stand-in's vmTools.runInLinuxVM, shaped as nixpkgs' pkgs/build-support/vm:
# the derivation requires the `kvm` system feature; its builder becomes a script that
# saves the environment to xchg/saved-env, runs preVM, boots a qemu guest
# (`-machine accel=... -cpu max`, `-smp` when enableParallelBuilding) with `$diskImage`
# as virtio /dev/vda, an empty tmpfs root and the store (read-write) and ./xchg (at
# /tmp/xchg) shared in, runs the original builder there under `set -euo pipefail` with
# the saved environment, reads its exit status back from xchg/in-vm-exit (none: the
# builder failed), then runs postVM. The guest is testsys/vmtools.py: the host's
# kernel instead of a NixOS kernel and initrd, and, since the stand-in's packages are
# links to Debian's binaries and the host's Python, the host's /usr (with the
# merged-/usr links, /etc/ld.so.cache, /etc/alternatives) and that Python's prefix,
# read-only, in that root; nothing else of the host.
{
  lib,
  bash,
  coreutils,
  python3,
  qemu,
  kmod,
  vmRunner,
  writeText,
  storeDir,
  # nixpkgs' qemu-kvm asks for "kvm:tcg". This machine kind's /dev/kvm is a nested
  # software layer in which a guest crawls (shared/notes), so the stand-in's default is
  # TCG; see docs/nix.md, "Differences between the stand-in and nixpkgs".
  accel ? "tcg",
}:
rec {
  # Runs in the guest (after the runner chroots into its root): restore the build's
  # environment, run the original builder, record its status for the host.
  stage2Init = writeText "vm-run-stage2" ''
    set -euo pipefail
    source /tmp/xchg/saved-env
    export NIX_STORE=${storeDir}
    export NIX_BUILD_TOP=/tmp
    export TMPDIR=/tmp TMP=/tmp TEMP=/tmp TEMPDIR=/tmp
    export PATH=/empty
    cd "$NIX_BUILD_TOP"
    source "$stdenv/setup"
    exec < /dev/null
    # As nixpkgs: under `set -e` a failing builder ends this script here, so no exit
    # code is written and the host reports "Virtual machine didn't produce an exit code".
    "$origBuilder" $origArgs
    echo $? > /tmp/xchg/in-vm-exit
  '';

  # The runner builds its initramfs with modprobe (module order) and runs qemu.
  qemuCommandLinux = ''
    # HOME is /homeless-shelter, which must not come to exist (Nix refuses to build
    # without a sandbox then): the runner caches its initramfs in the build directory.
    PATH=${qemu}/bin:${kmod}/bin:${coreutils}/bin XDG_CACHE_HOME="$NIX_BUILD_TOP/.cache" \
    PYTHONPATH=${vmRunner} ${python3}/bin/python3 -m testsys.vmtools \
      --share ${storeDir}:${storeDir}:rw \
      --share "$NIX_BUILD_TOP/xchg:/tmp/xchg:rw" \
      ''${diskImage:+--disk "$diskImage"} \
      --mem "$memSize" \
      --qemu-opts "$QEMU_OPTS" \
      --accel ${accel} --like-qemu \
      --host-path /usr --host-path /bin --host-path /sbin --host-path /lib \
      --host-path /lib64 --host-path /etc/ld.so.cache --host-path /etc/alternatives \
      --host-path "$hostPythonPrefix" \
      --cwd /tmp \
      -- ${bash}/bin/bash ${stage2Init}
  '';

  vmRunCommand =
    qemuCommand:
    writeText "vm-run" ''
      ${coreutils}/bin/mkdir xchg
      export > xchg/saved-env
      source $stdenv/setup

      eval "$preVM"

      # The stand-in's python3 links to the host interpreter (build-support/host-python.sh):
      # its prefix joins the host paths in the guest's otherwise empty root.
      hostPythonPrefix=$(${coreutils}/bin/readlink -f ${python3}/bin/python3)
      hostPythonPrefix=''${hostPythonPrefix%/bin/*}

      if [ "''${enableParallelBuilding:-}" = 1 ]; then
        QEMU_NR_VCPUS="''${NIX_BUILD_CORES:-0}"
        if [ "$QEMU_NR_VCPUS" = 0 ]; then QEMU_NR_VCPUS="$(${coreutils}/bin/nproc)"; fi
        if [ "$QEMU_NR_VCPUS" -gt 255 ]; then QEMU_NR_VCPUS=255; fi
        QEMU_OPTS+=" -smp cpus=$QEMU_NR_VCPUS"
      fi

      # ./run-vm: the guest's command line, kept with the build directory by
      # `nix-build -K` so a failed build's VM can be started again by hand.
      ${coreutils}/bin/cat > ./run-vm <<EOF
      #! ${bash}/bin/sh
      ''${diskImage:+diskImage=$diskImage}
      ${qemuCommand}
      EOF

      ${coreutils}/bin/chmod +x ./run-vm
      source ./run-vm

      if ! test -e xchg/in-vm-exit; then
        echo "Virtual machine didn't produce an exit code."
        exit 1
      fi

      exitCode="$(${coreutils}/bin/cat xchg/in-vm-exit)"
      if [ "$exitCode" != "0" ]; then
        exit "$exitCode"
      fi

      eval "$postVM"
    '';

  runInLinuxVM =
    drv:
    lib.overrideDerivation drv (
      {
        memSize ? 512,
        QEMU_OPTS ? "",
        args,
        builder,
        ...
      }:
      {
        requiredSystemFeatures = [ "kvm" ];
        builder = "${bash}/bin/sh";
        args = [
          "-e"
          (vmRunCommand qemuCommandLinux)
        ];
        origArgs = args;
        origBuilder = builder;
        # nixpkgs adds "-m memSize" to QEMU_OPTS; the runner takes the size as --mem.
        inherit memSize QEMU_OPTS;
        # The guest cannot see files in the host's build directory, so the build
        # script travels in the environment (saved-env), as in nixpkgs.
        passAsFile = [ ];
      }
    );
}
