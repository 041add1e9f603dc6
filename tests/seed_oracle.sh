#!/usr/bin/env bash
# The reference's partitioning and sizing shell logic (nixpkgs make-disk-image.nix,
# see ../../shared/seed/make-disk-image.seed.txt: `prepareImage` and
# `partitionDiskScript`), re-typed as a standalone script so the engine can be
# compared with it side by side (tests/test_seed_parity.py).
#
# Usage:
#   seed_oracle.sh PARTITION_TABLE_TYPE DISK_SIZE BOOT_SIZE ADDITIONAL_SPACE \
#                  DETERMINISTIC ROOT_GPUID STAGING_DIR IMAGE [LABEL]
#
#   DISK_SIZE       "auto" or an integer in MiB (the seed's `diskSize`)
#   BOOT_SIZE       numfmt --from=iec string, e.g. 256M (the seed's `bootSize`)
#   ADDITIONAL_SPACE numfmt --from=iec string, e.g. 512M
#   DETERMINISTIC   true or false
#   STAGING_DIR     the directory the seed runs `find .` in when diskSize is auto
#                   (the seed measures its build directory: ./root plus whatever
#                   else sits there); ignored for a fixed size
#   IMAGE           the raw image to create (must not exist)
#   LABEL           ext4 label, default nixos
#
# The commands (truncate, parted, sgdisk, partx, mkfs.ext4 -E offset) and the
# arithmetic are the seed's, unchanged, including its quirks: round_to_nearest
# always adds one unit, the 31-digit disk GUID literal, `--partition-guid=3:` on the
# two-partition legacy+gpt table, and random MBR signatures. Nothing is copied into the
# filesystem (the seed uses cptofs for that; parity is about the layout).
#
# stdout: KEY=VALUE lines (sizes in bytes, root partition START/SECTORS in sectors)
# for the test to compare with `make-disk-image plan`; tool chatter goes to stderr.
# Environment: SEED_ORACLE_MKFS=0 stops after the partition table (no mkfs.ext4).
# SEED_ORACLE_BIOS_GRUB_END replaces hybrid's "1024KiB" (tests/conftest.py says why).
set -euo pipefail

if [[ $# -lt 8 || $# -gt 9 ]]; then
  echo "usage: $0 TYPE DISK_SIZE BOOT_SIZE ADDITIONAL_SPACE DETERMINISTIC ROOT_GPUID STAGING_DIR IMAGE [LABEL]" >&2
  exit 2
fi

partitionTableType=$1
diskSizeArg=$2
bootSizeArg=$3
additionalSpaceArg=$4
deterministic=$5
rootGPUID=$6
stagingDir=$7
diskImage=$(realpath -m "$8")
label=${9:-nixos}

export PATH=/usr/sbin:/sbin:/usr/bin:/bin:$PATH
blockSize=$((4 * 1024))

case $partitionTableType in
  legacy) rootPartition=1 ;;
  legacy+boot | legacy+gpt | efi) rootPartition=2 ;;
  efixbootldr | hybrid) rootPartition=3 ;;
  none) rootPartition= ;;
  *)
    echo "unknown partitionTableType: $partitionTableType" >&2
    exit 2
    ;;
esac
if [[ -e $diskImage ]]; then
  echo "refusing to overwrite $diskImage" >&2
  exit 2
fi

# --- the seed's helpers, as in prepareImage -------------------------------------
sectorsToKilobytes() {
  echo $((("$1" * 512) / 1024))
}

sectorsToBytes() {
  echo $(("$1" * 512))
}

sum_lines() {
  local acc=0
  while read -r number; do
    acc=$((acc + number))
  done
  echo "$acc"
}

mebibyte=$((1024 * 1024))

compute_fudge() {
  echo $(($1 * 52 / 1000))
}

round_to_nearest() {
  echo $((($1 / $2 + 1) * $2))
}

bootSize=$(round_to_nearest "$(numfmt --from=iec "$bootSizeArg")" $mebibyte)
bootSizeMiB=$((bootSize / 1024 / 1024))MiB

# --- disk size ---------------------------------------------------------------
if [[ $diskSizeArg == auto ]]; then
  case $partitionTableType in
    efi | efixbootldr | hybrid)
      gptSpace=$((512 * 34 * 1))
      reservedSpace=$((gptSpace + bootSize))
      ;;
    legacy+gpt)
      gptSpace=$((512 * 34 * 1))
      reservedSpace=$((gptSpace + 2 * mebibyte))
      ;;
    legacy) reservedSpace=$((mebibyte)) ;;
    legacy+boot) reservedSpace=$((bootSize)) ;;
    *) reservedSpace=0 ;;
  esac
  additionalSpace=$(($(numfmt --from=iec "$additionalSpaceArg") + reservedSpace))

  # The seed measures its current directory (the build directory holding ./root).
  pushd "$stagingDir" >/dev/null
  diskUsage=$(find . ! -type d -print0 | du --files0-from=- --apparent-size --count-links --block-size "$blockSize" | cut -f1 | sum_lines)
  numInodes=$(find . | wc -l)
  popd >/dev/null
  closureBlocks=$diskUsage
  diskUsage=$(((diskUsage + 2 * numInodes) * blockSize))
  fudge=$(compute_fudge $diskUsage)
  requiredFilesystemSpace=$((diskUsage + fudge))
  requiredFilesystemSpace=$(round_to_nearest $requiredFilesystemSpace $blockSize)
  diskSize=$((requiredFilesystemSpace + additionalSpace))
  diskSize=$(round_to_nearest $diskSize $mebibyte)
  truncate -s "$diskSize" "$diskImage"
  {
    echo "CLOSURE_BLOCKS=$closureBlocks"
    echo "NUM_INODES=$numInodes"
    echo "DISK_USAGE=$diskUsage"
    echo "FUDGE=$fudge"
    echo "REQUIRED_FILESYSTEM_SPACE=$requiredFilesystemSpace"
    echo "RESERVED_SPACE=$reservedSpace"
    echo "ADDITIONAL_SPACE=$additionalSpace"
  }
else
  truncate -s "${diskSizeArg}M" "$diskImage"
fi
echo "BOOT_SIZE=$bootSize"
echo "DISK_SIZE=$(stat -c %s "$diskImage")"

# --- partitionDiskScript -------------------------------------------------------
# The disk GUID literal below has 31 hex digits, exactly as in the seed.
seedDiskGUID=97FD5997-D90B-4AA3-8D16-C1723AEA73C
{
  case $partitionTableType in
    legacy)
      parted --script "$diskImage" -- \
        mklabel msdos \
        mkpart primary ext4 1MiB 100% \
        print
      ;;
    legacy+boot)
      parted --script "$diskImage" -- \
        mklabel msdos \
        mkpart primary fat32 1MiB $bootSizeMiB \
        set 1 boot on \
        mkpart primary ext4 $bootSizeMiB 100% \
        print
      ;;
    legacy+gpt)
      parted --script "$diskImage" -- \
        mklabel gpt \
        mkpart no-fs 1MiB 2MiB \
        set 1 bios_grub on \
        mkpart primary ext4 2MiB 100% \
        align-check optimal 2 \
        print
      if [[ $deterministic == true ]]; then
        sgdisk \
          --disk-guid=$seedDiskGUID \
          --partition-guid=1:1C06F03B-704E-4657-B9CD-681A087A2FDC \
          --partition-guid=2:970C694F-AFD0-4B99-B750-CDB7A329AB6F \
          --partition-guid=3:"$rootGPUID" \
          "$diskImage"
      fi
      ;;
    efi)
      parted --script "$diskImage" -- \
        mklabel gpt \
        mkpart ESP fat32 8MiB $bootSizeMiB \
        set 1 boot on \
        align-check optimal 1 \
        mkpart primary ext4 $bootSizeMiB 100% \
        align-check optimal 2 \
        print
      if [[ $deterministic == true ]]; then
        sgdisk \
          --disk-guid=$seedDiskGUID \
          --partition-guid=1:1C06F03B-704E-4657-B9CD-681A087A2FDC \
          --partition-guid=2:"$rootGPUID" \
          "$diskImage"
      fi
      ;;
    efixbootldr)
      parted --script "$diskImage" -- \
        mklabel gpt \
        mkpart ESP fat32 8MiB 100MiB \
        set 1 boot on \
        align-check optimal 1 \
        mkpart BOOT fat32 100MiB $bootSizeMiB \
        set 2 bls_boot on \
        align-check optimal 2 \
        mkpart ROOT ext4 $bootSizeMiB 100% \
        align-check optimal 3 \
        print
      if [[ $deterministic == true ]]; then
        sgdisk \
          --disk-guid=$seedDiskGUID \
          --partition-guid=1:1C06F03B-704E-4657-B9CD-681A087A2FDC \
          --partition-guid=2:970C694F-AFD0-4B99-B750-CDB7A329AB6F \
          --partition-guid=3:"$rootGPUID" \
          "$diskImage"
      fi
      ;;
    hybrid)
      parted --script "$diskImage" -- \
        mklabel gpt \
        mkpart ESP fat32 8MiB $bootSizeMiB \
        set 1 boot on \
        align-check optimal 1 \
        mkpart no-fs 0 "${SEED_ORACLE_BIOS_GRUB_END:-1024KiB}" \
        set 2 bios_grub on \
        mkpart primary ext4 $bootSizeMiB 100% \
        align-check optimal 3 \
        print
      if [[ $deterministic == true ]]; then
        sgdisk \
          --disk-guid=$seedDiskGUID \
          --partition-guid=1:1C06F03B-704E-4657-B9CD-681A087A2FDC \
          --partition-guid=2:970C694F-AFD0-4B99-B750-CDB7A329AB6F \
          --partition-guid=3:"$rootGPUID" \
          "$diskImage"
      fi
      ;;
    none) ;;
  esac

  if [[ $partitionTableType != none ]]; then
    eval "$(partx "$diskImage" -o START,SECTORS --nr $rootPartition --pairs)"
  fi
} >&2
if [[ $partitionTableType != none ]]; then
  echo "ROOT_PARTITION=$rootPartition"
  echo "ROOT_START=$START"
  echo "ROOT_SECTORS=$SECTORS"
fi

# --- the root filesystem (empty: the seed fills it with cptofs afterwards) -------
# SEED_ORACLE_MKFS=0 skips it when only the layout is compared.
if [[ ${SEED_ORACLE_MKFS:-1} != 0 ]]; then
  {
    if [[ $partitionTableType != none ]]; then
      mkfs.ext4 -b $blockSize -F -L "$label" "$diskImage" -E offset="$(sectorsToBytes "$START")" "$(sectorsToKilobytes "$SECTORS")K"
    else
      mkfs.ext4 -b $blockSize -F -L "$label" "$diskImage"
    fi
  } >&2
  echo "MKFS=done"
fi
