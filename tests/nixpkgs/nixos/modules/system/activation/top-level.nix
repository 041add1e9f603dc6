# system.build.toplevel of the stand-in NixOS (with activate and
# bin/switch-to-configuration, as NixOS' toplevel has; a real store path whose closure
# of busybox, etc and system-path runs inside the image's chroot), and
# system.build.nixos-install. As nixpkgs' top-level.nix, the toplevel fails with the
# failed assertions and prints the warnings.
{
  pkgs,
  lib,
  config,
  ...
}:
let
  inherit (pkgs) busybox runCommand writeText;

  # NixOS allocates missing ids at activation; the stand-in cannot, so it asks.
  idOf =
    kind: name: id:
    if id == null then
      throw "tests/nixpkgs: ${kind} ${name} has no ${
        if kind == "user" then "uid" else "gid"
      }; the stand-in allocates none, set users.${kind}s.${name}.${
        if kind == "user" then "uid" else "gid"
      }"
    else
      toString id;
  groupOf =
    user:
    config.users.groups.${user.group}
      or (throw "tests/nixpkgs: users.users.${user.name}.group: no group ${user.group} in users.groups");

  passwd = lib.concatStrings (
    lib.mapAttrsToList (
      name: user:
      "${name}:x:${idOf "user" name user.uid}:${idOf "group" user.group (groupOf user).gid}::${user.home}:/run/current-system/sw/bin/sh\n"
    ) config.users.users
  );
  group = lib.concatStrings (
    lib.mapAttrsToList (
      name: g: "${name}:x:${idOf "group" name g.gid}:${lib.concatStringsSep "," g.members}\n"
    ) config.users.groups
  );

  failedAssertions = map (x: x.message) (lib.filter (x: !x.assertion) config.assertions);
  checkedSystem =
    system:
    if failedAssertions != [ ] then
      throw "\nFailed assertions:\n${lib.concatStringsSep "\n" (map (x: "- ${x}") failedAssertions)}"
    else
      lib.showWarnings config.warnings system;

  etc = runCommand "etc" { } ''
    mkdir -p $out/etc
    cp ${writeText "passwd" passwd} $out/etc/passwd
    cp ${writeText "group" group} $out/etc/group
    echo ${config.networking.hostName} > $out/etc/hostname
    cat > $out/etc/os-release <<EOF
    NAME=NixOS
    ID=nixos
    VERSION_ID="${config.system.nixos.release}"
    BUILD_ID="${config.system.nixos.version}"
    EOF
  '';

  system-path = runCommand "system-path" { } ''
    mkdir -p $out/bin
    for applet in ${busybox}/bin/*; do
      ln -s $applet $out/bin/
    done
    # nixos-enter -c runs sw/bin/bash; busybox's sh stands in for it.
    printf '#!%s\nexec %s "$@"\n' ${busybox}/bin/sh ${busybox}/bin/sh > $out/bin/bash
    chmod +x $out/bin/bash
  '';

  grub = config.boot.loader.grub;
  limine = config.boot.loader.limine;
  bootDevices =
    lib.optionals grub.enable grub.devices
    ++ lib.optional (limine.enable && limine.biosSupport) limine.biosDevice;

  # What `switch-to-configuration boot` does here: record the boot loader installation
  # on /boot, and fail as grub-install would when a configured device is missing.
  installBootLoader = ''
    if [ "$action" = boot ] || [ "$action" = switch ]; then
      mkdir -p /boot
      {
        echo "system=$systemConfig"
        echo "install=''${NIXOS_INSTALL_BOOTLOADER:-}"
        for device in ${lib.concatStringsSep " " (map (d: "'${d}'") bootDevices)}; do
          if [ "$device" != nodev ] && ! [ -b "$device" ]; then
            echo "switch-to-configuration: boot device $device is not a block device" >&2
            exit 1
          fi
          echo "device=$device"
        done
      } > /boot/nixos-standin-bootloader
    fi
  '';
  toplevel = runCommand "nixos-system-${config.networking.hostName}-${config.system.nixos.label}" { } ''
    mkdir -p $out/bin
    ln -s ${etc}/etc $out/etc
    ln -s ${system-path} $out/sw
    echo -n ${config.system.nixos.version} > $out/nixos-version

    cat > $out/activate <<EOF
    #!${busybox}/bin/sh
    systemConfig=$out
    export PATH=${busybox}/bin
    mkdir -p /etc /bin /proc /run /tmp /var /root
    [ -e /proc/self ] || mount -t proc proc /proc
    grep -q " /run " /proc/mounts || mount -t tmpfs -o mode=0755 tmpfs /run
    for f in hostname os-release; do ln -sfn ${etc}/etc/\$f /etc/\$f; done
    cat ${etc}/etc/passwd > /etc/passwd
    cat ${etc}/etc/group > /etc/group
    ln -sfn ${busybox}/bin/sh /bin/sh
    ln -sfn \$systemConfig /run/current-system
    EOF

    cat > $out/bin/switch-to-configuration <<EOF
    #!${busybox}/bin/sh
    set -e
    systemConfig=$out
    action=\$1
    export PATH=${busybox}/bin
    ${lib.replaceStrings [ "$" ] [ "\\$" ] installBootLoader}
    EOF
    chmod +x $out/activate $out/bin/switch-to-configuration
  '';

  # NixOS' installer tool; the engine fills the image without it.
  nixos-install = runCommand "nixos-install" { } ''
    mkdir -p $out/bin
    cat > $out/bin/nixos-install <<'EOF'
    #!${pkgs.bash}/bin/bash
    echo "nixos-install is not part of the offline nixpkgs stand-in" >&2
    exit 1
    EOF
    chmod +x $out/bin/nixos-install
  '';
in
{
  options.system.build.toplevel = lib.mkOption {
    type = lib.types.unspecified;
    readOnly = true;
    description = "The built system: the store path activation and boot loaders start from.";
  };

  config.system.build = {
    inherit etc system-path nixos-install;
    toplevel = checkedSystem toplevel;
  };
}
