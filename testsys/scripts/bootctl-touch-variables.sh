#!@busybox@/bin/sh
# Whether `bootctl install` of systemd >= 257 would write EFI variables here: its
# touch_variables() (src/bootctl/bootctl.c) without --variables= or --root, as NixOS'
# systemd-boot builder runs it when boot.loader.efi.canTouchEfiVariables is set.
# Exit 0 when it would; otherwise print bootctl's notice and exit 1.
#
# bootctl asks is_efi_boot(), which is false in a container (detect_container(),
# src/basic/virt.c) or without /sys/firmware/efi. Since systemd 257 detect_container()
# ends with running_in_pidns(): a PID namespace other than the initial one (whose
# inode is always 0xEFFFFFFC) counts as an unknown container, and nixos-enter runs its
# command in a new PID namespace. With @detectVirt@ set (a host systemd >= 257 in the
# closure), systemd-detect-virt --container decides, which is that same function;
# otherwise the checks below follow it in order.
export PATH=@busybox@/bin
detectVirt="@detectVirt@"

detect_container() {
    if [ -n "$detectVirt" ]; then
        "$detectVirt" --container --quiet
        return
    fi
    # OpenVZ: /proc/vz without /proc/bc.
    if [ -e /proc/vz ] && [ ! -e /proc/bc ]; then return 0; fi
    # WSL.
    if grep -q -e Microsoft -e WSL /proc/sys/kernel/osrelease 2>/dev/null; then return 0; fi
    # proot traces the process.
    tracer=$(awk '$1 == "TracerPid:" { print $2 }' /proc/self/status 2>/dev/null)
    if [ -n "$tracer" ] && [ "$tracer" != 0 ]; then
        case $(cat "/proc/$tracer/comm" 2>/dev/null) in
            proot*) return 0 ;;
        esac
    fi
    # What a container manager says.
    if [ -s /run/host/container-manager ]; then return 0; fi
    if [ "$$" = 1 ]; then
        # PID 1's own $container is authoritative when set (empty: no container).
        if [ "${container+set}" = set ]; then
            [ -n "$container" ]
            return
        fi
    else
        if [ -s /run/systemd/container ]; then return 0; fi
        # Readable with CAP_SYS_PTRACE only; systemd ignores a failure too.
        if { tr '\0' '\n' </proc/1/environ; } 2>/dev/null | grep -q '^container='; then
            return 0
        fi
    fi
    # Well-known files.
    if [ -e /run/.containerenv ] || [ -e /.dockerenv ]; then return 0; fi
    # systemd 257: a non-initial PID namespace.
    [ "$(stat -L -c %i /proc/self/ns/pid 2>/dev/null)" != 4026531836 ]
}

if detect_container || [ ! -d /sys/firmware/efi ]; then
    echo "Not booted with EFI or running in a container, skipping EFI variable modifications." >&2
    exit 1
fi
exit 0
