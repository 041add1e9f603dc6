#!/usr/bin/env bash
# The reference's staging, before it measures anything: the first half of
# `prepareImage` in ../../shared/seed/make-disk-image.seed.txt, re-typed to run here
# with Debian's Nix (2.8) instead of inside a Nix build. It fills BUILD_DIR the way
# the reference's build directory looks when its auto-size `find .` runs:
#
#   BUILD_DIR/xchg/saved-env   vmTools.runInLinuxVM's `export > xchg/saved-env`
#   BUILD_DIR/root/            contents (rsync), then nixos-install's store copy
#   BUILD_DIR/state/           NIX_STATE_DIR=$TMPDIR/state with the closure's
#                              registration loaded (nix-store --load-db)
#
# nixos-install is replaced by the commands it runs for
# `nixos-install --root $root --no-bootloader --no-root-passwd --system TOPLEVEL
#  (--channel CHANNEL | --no-channel-copy) --substituters ""`:
# `nix-env --store $root -p .../profiles/system --set`, the channel profile and
# .nix-defexpr link, `touch $root/etc/NIXOS`.
#
# Usage:
#   seed_stage.sh BUILD_DIR TOPLEVEL CLOSURE_INFO CHANNEL|- [SOURCE TARGET MODE]...
#
# CHANNEL "-" means copyChannel = false. Each contents entry is three arguments,
# MODE "" for none (user/group are applied later by the reference, in the VM).
# Then: seed_oracle.sh TYPE auto ... BUILD_DIR IMAGE measures it as the reference does.
set -euo pipefail

if [[ $# -lt 4 || $(( ($# - 4) % 3 )) -ne 0 ]]; then
  echo "usage: $0 BUILD_DIR TOPLEVEL CLOSURE_INFO CHANNEL|- [SOURCE TARGET MODE]..." >&2
  exit 2
fi
buildDir=$(realpath -m "$1")
system=$2
closureInfo=$3
channel=$4
shift 4
sources_=()
targets_=()
modes_=()
while [[ $# -gt 0 ]]; do
  sources_+=("$1")
  targets_+=("$2")
  modes_+=("$3")
  shift 3
done

export PATH=/usr/sbin:/sbin:/usr/bin:/bin:$PATH
mkdir -p "$buildDir"
cd "$buildDir"
export TMPDIR=$buildDir

# vmTools.runInLinuxVM, before preVM: the saved environment sits in the build dir.
mkdir -p xchg
export >xchg/saved-env

root="$PWD/root"
mkdir -p "$root"

# The reference's contents loop (rsync; ownership is set later, in the VM).
for ((i = 0; i < ${#targets_[@]}; i++)); do
  source="${sources_[$i]}"
  target="${targets_[$i]}"
  mode="${modes_[$i]}"
  if [ -n "$mode" ]; then
    rsync_chmod_flags="--chmod=$mode"
  else
    rsync_chmod_flags=""
  fi
  rsync_flags="-a --no-o --no-g $rsync_chmod_flags"
  if [[ "$source" =~ '*' ]]; then
    mkdir -p "$root/$target"
    for fn in $source; do
      # shellcheck disable=SC2086
      rsync $rsync_flags "$fn" "$root/$target/"
    done
  else
    mkdir -p "$root/$(dirname "$target")"
    if [ -e "$root/$target" ]; then
      echo "duplicate entry $target -> $source"
      exit 1
    elif [ -d "$source" ]; then
      # shellcheck disable=SC2086
      rsync $rsync_flags "$source/" "$root/$target"
    else
      # shellcheck disable=SC2086
      rsync $rsync_flags "$source" "$root/$target"
    fi
  fi
done

export HOME=$TMPDIR
export NIX_STATE_DIR=$TMPDIR/state
nix-store --load-db <"$closureInfo/registration"

chmod 755 "$TMPDIR"

# --- nixos-install --root $root --no-bootloader --no-root-passwd --system ... -------
umask 0022
tmpdir="$(mktemp -d -p "$root")"
trap 'rm -rf "$tmpdir"' EXIT
sub="auto?trusted=1"
nixFlags=(--substituters "")
if [[ $channel != - ]]; then
  mkdir -p "$root"/nix/var/nix/profiles/per-user/root
  nix-env --store "$root" "${nixFlags[@]}" --extra-substituters "$sub" \
    -p "$root"/nix/var/nix/profiles/per-user/root/channels --set "$channel" --quiet
  install -m 0700 -d "$root"/root/.nix-defexpr
  ln -sfn /nix/var/nix/profiles/per-user/root/channels "$root"/root/.nix-defexpr/channels
fi
nix-env --store "$root" "${nixFlags[@]}" --extra-substituters "$sub" \
  -p "$root"/nix/var/nix/profiles/system --set "$system"
mkdir -m 0755 -p "$root/etc"
touch "$root/etc/NIXOS"
