#!/bin/bash
# Placeholder until testsys/bin/nixos-enter lands.
set -euo pipefail
root=/mnt
system=/nix/var/nix/profiles/system
command=()
while [ $# -gt 0 ]; do
    case "$1" in
        --root) root=$2; shift 2 ;;
        --system) system=$2; shift 2 ;;
        --silent) shift ;;
        -c|--command) command=(/bin/sh -c "$2"); shift 2 ;;
        --) shift; command=("$@"); break ;;
        *) echo "nixos-enter: unknown option $1" >&2; exit 1 ;;
    esac
done
for fs in dev proc sys; do
    mkdir -p "$root/$fs"
    mount --rbind "/$fs" "$root/$fs"
done
trap 'umount -R "$root/dev" "$root/proc" "$root/sys" 2>/dev/null || true' EXIT
mkdir -p "$root/run" "$root/tmp"
if [ -x "$root$system/activate" ]; then
    IN_NIXOS_ENTER=1 chroot "$root" "$system/activate" 1>&2 || true
fi
if [ ${#command[@]} -eq 0 ]; then command=(/bin/sh); fi
PATH=/run/current-system/sw/bin:/bin exec chroot "$root" "${command[@]}"
