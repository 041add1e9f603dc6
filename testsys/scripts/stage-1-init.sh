#!/bin/busybox sh
# Stage 1 of the make-disk-image test system (the initramfs' /init).
#
# Like NixOS' stage 1 it finds the root file system by the label on the kernel command
# line and mounts it; before switching to it, it reports what it found on the serial
# console, one "MDI-REPORT KEY VALUE..." line each, for testsys/boot.py to check:
# firmware, the root's partition (table type, number, GUIDs), the ext4 label and UUID
# read from the superblock, /etc/NIXOS, the system profile, the store's entries and
# owner/mode of every file outside the store. Then it runs the system's stage 2
# (which powers off). The root is mounted read-only: booting does not change the image.
export PATH=/bin
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
exec </dev/console >/dev/console 2>&1
# Kernel messages would interleave with the report lines.
echo 1 >/proc/sys/kernel/printk

report() {
    echo "MDI-REPORT $*"
}
fail() {
    report "error $*"
    sync
    poweroff -f
}
hex() {
    od -An -tx1 -v | tr -d ' \n'
}
read_hex() { # read_hex FILE OFFSET BYTES
    dd if="$1" bs=1 skip="$2" count="$3" 2>/dev/null | hex
}
read_u() { # read_u FILE OFFSET BYTES: little-endian unsigned integer
    dd if="$1" bs=1 skip="$2" count="$3" 2>/dev/null | od -An -tu"$3" | tr -d ' \n'
}

while read -r module; do
    # "File exists" and missing CPU features (crc32c-intel under TCG) are fine.
    insmod "/lib/modules/$(uname -r)/$module" 2>/dev/null
done </lib/modules/load-order

report begin
report cmdline "$(cat /proc/cmdline)"
report machine "$(uname -m)"
root=
init=
for arg in $(cat /proc/cmdline); do
    case $arg in
        root=*) root=${arg#root=} ;;
        init=*) init=${arg#init=} ;;
    esac
done

if [ -d /sys/firmware/efi ]; then
    report firmware efi
    mount -t efivarfs efivarfs /sys/firmware/efi/efivars
    for variable in BootCurrent LoaderEntrySelected LoaderInfo; do
        for file in /sys/firmware/efi/efivars/"$variable"-*; do
            [ -e "$file" ] && report efivar "$variable" "$(dd if="$file" bs=1 skip=4 2>/dev/null | hex)"
        done
    done
else
    report firmware bios
fi

case $root in
    LABEL=*) label=${root#LABEL=} ;;
    *) fail "root=$root is not LABEL=...; the test system mounts its root by label" ;;
esac
device=
tries=0
while [ $tries -lt 100 ]; do
    device=$(findfs "LABEL=$label" 2>/dev/null) && break
    tries=$((tries + 1))
    sleep 0.1
done
[ -n "$device" ] || fail "no file system labelled $label"
report root-device "$device"

name=${device#/dev/}
disk=$(readlink -f "/sys/class/block/$name")
disk=${disk%/*}
disk=/dev/${disk##*/}
if [ -e "/sys/class/block/$name/partition" ]; then
    partition=$(cat "/sys/class/block/$name/partition")
    report root-partition-number "$partition"
    if [ "$(dd if="$disk" bs=8 skip=64 count=1 2>/dev/null)" = "EFI PART" ]; then
        report partition-table gpt
        report disk-guid "$(read_hex "$disk" $((512 + 56)) 16)"
        entries_lba=$(read_u "$disk" $((512 + 72)) 8)
        entry_size=$(read_u "$disk" $((512 + 84)) 4)
        entry=$((entries_lba * 512 + (partition - 1) * entry_size))
        report root-partition-type-guid "$(read_hex "$disk" $entry 16)"
        report root-partition-guid "$(read_hex "$disk" $((entry + 16)) 16)"
    else
        report partition-table dos
        report disk-signature "$(read_hex "$disk" 440 4)"
        report root-partition-type "$(read_hex "$disk" $((446 + (partition - 1) * 16 + 4)) 1)"
    fi
else
    report partition-table none
fi
label_at() { # label_at OFFSET BYTES
    dd if="$device" bs=1 skip="$1" count="$2" 2>/dev/null | tr -d '\000'
}
# The superblock's type, UUID, label and size in 4 KiB blocks: ext4 (at 1 KiB), xfs
# (at 0, big-endian), btrfs (at 64 KiB).
if [ "$(read_hex "$device" 0 4)" = 58465342 ]; then
    report fs-type xfs
    report fs-uuid "$(read_hex "$device" 32 16)"
    report fs-label "$(label_at 108 12)"
    report fs-blocks $((0x$(read_hex "$device" 8 8)))
elif [ "$(dd if="$device" bs=1 skip=65600 count=8 2>/dev/null)" = _BHRfS_M ]; then
    report fs-type btrfs
    report fs-uuid "$(read_hex "$device" $((65536 + 32)) 16)"
    report fs-label "$(label_at $((65536 + 299)) 256)"
    report fs-blocks $(($(read_u "$device" $((65536 + 112)) 8) / 4096))
else
    [ "$(read_hex "$device" $((1024 + 56)) 2)" = 53ef ] && report fs-type ext4
    report fs-uuid "$(read_hex "$device" $((1024 + 104)) 16)"
    report fs-label "$(label_at $((1024 + 120)) 16)"
    report fs-blocks "$(read_u "$device" $((1024 + 4)) 4)"
fi
# Sizes as the kernel sees them: a grown image's partition and filesystem.
report root-sectors "$(cat "/sys/class/block/$name/size")"

R=/mnt-root
mkdir -p $R
mount -o ro "$device" $R || fail "cannot mount $device"
[ -f $R/etc/NIXOS ] && report etc-nixos yes || report etc-nixos no
for link in $R/nix/var/nix/profiles/system $R/nix/var/nix/profiles/system-*-link; do
    [ -L "$link" ] && report profile-link "${link#$R}" "$(readlink "$link")"
done
for path in $R/nix/store/*; do
    [ -e "$path" ] && report store "${path##*/}"
done
cd $R
find . -xdev -path ./nix/store -prune -o -print | while read -r path; do
    # uid gid raw-mode(hex) path
    report stat "$(stat -c '%u %g %f' "$path")" "${path#.}"
done
cd /
for db in passwd group; do
    while read -r line; do
        report "$db" "$line"
    done <$R/etc/$db
done
report end
sync

if [ -n "$init" ] && [ -e "$R$init" ]; then
    exec switch_root $R "$init"
fi
fail "no stage 2 init (init=$init) in the root file system"
