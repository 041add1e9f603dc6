# Platform descriptions: lib.systems.elaborate "aarch64-linux" and what the project
# reads of the result (system, the CPU predicates, efiArch, linuxArch, qemuArch).
{ lib }:
let
  # Per CPU: its family, word size and the names tools give it.
  cpus = {
    x86_64 = {
      family = "x86";
      bits = 64;
      efiArch = "x64";
      linuxArch = "x86_64";
      qemuArch = "x86_64";
    };
    i686 = {
      family = "x86";
      bits = 32;
      efiArch = "ia32";
      linuxArch = "i386";
      qemuArch = "i386";
    };
    aarch64 = {
      family = "arm";
      bits = 64;
      efiArch = "aa64";
      linuxArch = "arm64";
      qemuArch = "aarch64";
    };
    armv7l = {
      family = "arm";
      bits = 32;
      efiArch = "arm";
      linuxArch = "arm";
      qemuArch = "arm";
    };
    armv6l = {
      family = "arm";
      bits = 32;
      efiArch = "arm";
      linuxArch = "arm";
      qemuArch = "arm";
    };
    riscv64 = {
      family = "riscv";
      bits = 64;
      efiArch = "riscv64";
      linuxArch = "riscv";
      qemuArch = "riscv64";
    };
    powerpc64le = {
      family = "power";
      bits = 64;
      efiArch = null;
      linuxArch = "powerpc";
      qemuArch = "ppc64";
    };
  };

  elaborate =
    platform:
    let
      args = if builtins.isString platform then { system = platform; } else platform;
      parts = builtins.match "([^-]+)-(.+)" args.system;
      cpuName =
        if parts == null then throw "lib.systems.elaborate: `${args.system}' is not CPU-KERNEL" else builtins.head parts;
      kernel = builtins.elemAt parts 1;
      cpu =
        cpus.${cpuName}
          or (throw "lib.systems.elaborate: the stand-in lib knows no CPU `${cpuName}' (lib/systems.nix)");
    in
    args
    // {
      inherit (args) system;
      inherit (cpu) efiArch linuxArch qemuArch;
      parsed = {
        cpu = {
          name = cpuName;
          inherit (cpu) family bits;
        };
        kernel.name = kernel;
      };
      isLinux = kernel == "linux";
      isDarwin = kernel == "darwin";
      isx86 = cpu.family == "x86";
      isx86_64 = cpuName == "x86_64";
      isx86_32 = cpuName == "i686";
      isi686 = cpuName == "i686";
      isAarch = cpu.family == "arm";
      isAarch64 = cpuName == "aarch64";
      isAarch32 = cpu.family == "arm" && cpu.bits == 32;
      isRiscV = cpu.family == "riscv";
      isPower = cpu.family == "power";
      is64bit = cpu.bits == 64;
      is32bit = cpu.bits == 32;
      isEfi = cpu.efiArch != null;
    };
in
{
  inherit elaborate;
  # The systems nixpkgs' flake exposes packages for.
  flakeExposed = [
    "x86_64-linux"
    "aarch64-linux"
    "x86_64-darwin"
    "armv6l-linux"
    "armv7l-linux"
    "i686-linux"
    "aarch64-darwin"
    "powerpc64le-linux"
    "riscv64-linux"
    "x86_64-freebsd"
  ];
}
