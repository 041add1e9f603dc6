#!@busybox@/bin/sh
# switch-to-configuration of the make-disk-image test system.
#
# `boot` installs the boot loader the way NixOS does for the configured loaders: GRUB
# for BIOS (grub-install on each of boot.loader.grub.devices, a grub.cfg with one
# entry per system generation, kernels copied to /boot/kernels) and systemd-boot for
# UEFI (the EFI binary on the ESP, loader entries and kernels on the XBOOTLDR
# partition when there is one, else on the ESP, and with canTouchEfiVariables a
# Boot#### variable written through efivarfs, unless the bootctl it follows is
# systemd >= 257's and finds itself in a container: libexec/bootctl-touch-variables). NIXOS_INSTALL_BOOTLOADER=1 forces the
# boot loader binaries to be (re)installed, as with NixOS.
#
# Everything it runs comes from the system's own closure (busybox, and Debian's
# grub-install and chattr with their libraries), because it runs chrooted in the image.
set -e
export PATH=@busybox@/bin:@hostTools@/bin

grubDevices="@grubDevices@"
# GRUB for UEFI: a GRUB EFI image made with the system (grub-mkimage, prefix /grub on
# the partition it is loaded from), installed as the removable-media loader like
# boot.loader.grub.efiInstallAsRemovable. Empty: GRUB for BIOS only.
grubEfi="@grubEfi@"
# UEFI's name of the system's architecture in loader file names: x64, aa64.
efiArch="@efiArch@"
EFIARCH=$(echo "$efiArch" | tr a-z A-Z)
systemdBootEnable="@systemdBootEnable@"
canTouchEfiVariables="@canTouchEfiVariables@"
efiSysMountPoint="@efiSysMountPoint@"
xbootldrMountPoint="@xbootldrMountPoint@"
# The systemd version whose bootctl this follows for EFI variables (see above).
bootctlSystemd="@bootctlSystemd@"
profiles=/nix/var/nix/profiles
efiGlobal=8be4df61-93ca-11d2-aa0d-00e098032b8c

die() {
    echo "switch-to-configuration: $*" >&2
    exit 1
}

# MAJ:MIN of the file system mounted exactly at $1; fails when $1 is no mount point.
mount_device() {
    awk -v m="$1" '$5 == m { d = $3 } END { if (d == "") exit 1; print d }' /proc/self/mountinfo
}

is_mount_point() {
    mount_device "$1" >/dev/null
}

# The generations of the system profile, oldest first.
generations() {
    for link in "$profiles"/system-*-link; do
        [ -L "$link" ] || continue
        number=${link#"$profiles"/system-}
        echo "${number%-link}"
    done | sort -n
}

# Copy $gen's $1 (kernel or initrd) to directory $2 under a name that is unique per
# store path, like NixOS does; print that name.
copy_boot_file() {
    file=$(readlink -f "$gen/$1")
    name=$(basename "$(dirname "$file")")-$(basename "$file")$3
    if [ ! -e "$2/$name" ]; then
        cp "$file" "$2/.$name.tmp"
        mv "$2/.$name.tmp" "$2/$name"
    fi
    echo "$name"
}

install_grub() {
    # GRUB reads kernels from the file system that holds /boot/grub; when /boot is its
    # own partition (legacy+boot, hybrid) paths are relative to that partition.
    prefix=/boot
    if is_mount_point /boot; then
        prefix=
    fi
    mkdir -p /boot/grub /boot/kernels
    {
        echo "# Written by the make-disk-image test system's switch-to-configuration."
        if [ -z "$grubEfi" ]; then
            echo "serial --unit=0 --speed=115200"
            echo "terminal_input serial console"
            echo "terminal_output serial console"
        fi
        echo "set timeout=0"
        echo "set default=0"
        for n in $(generations | sort -rn); do
            gen=$profiles/system-$n-link
            kernel=$(copy_boot_file kernel /boot/kernels)
            initrd=$(copy_boot_file initrd /boot/kernels)
            echo "menuentry \"NixOS - Generation $n ($(cat "$gen/nixos-version"))\" {"
            echo "    linux $prefix/kernels/$kernel init=$(readlink -f "$gen")/init $(cat "$gen/kernel-params")"
            echo "    initrd $prefix/kernels/$initrd"
            echo "}"
        done
    } >/boot/grub/.grub.cfg.tmp
    mv /boot/grub/.grub.cfg.tmp /boot/grub/grub.cfg

    if [ -n "$grubEfi" ]; then
        esp=$efiSysMountPoint
        is_mount_point "$esp" || die "the EFI system partition is not mounted at $esp"
        [ "$esp" = /boot ] || die "GRUB for UEFI expects the ESP at /boot (its prefix is /grub)"
        echo "installing GRUB for UEFI as $esp/EFI/BOOT/BOOT$EFIARCH.EFI..." >&2
        mkdir -p "$esp/EFI/BOOT"
        cp "$grubEfi" "$esp/EFI/BOOT/.BOOT$EFIARCH.EFI.tmp"
        mv "$esp/EFI/BOOT/.BOOT$EFIARCH.EFI.tmp" "$esp/EFI/BOOT/BOOT$EFIARCH.EFI"
    elif [ "$NIXOS_INSTALL_BOOTLOADER" = 1 ] || [ ! -e /boot/grub/i386-pc/core.img ]; then
        for device in $grubDevices; do
            [ "$device" = nodev ] && continue
            echo "installing the boot loader on $device..." >&2
            grub-install --target=i386-pc --boot-directory=/boot \
                --directory=@grubModules@ --locales= --fonts= --themes= "$device"
        done
    fi
}

le16() {
    printf "\\$(printf %03o $(($1 & 255)))\\$(printf %03o $((($1 >> 8) & 255)))"
}
le32() {
    le16 $(($1 & 65535))
    le16 $((($1 >> 16) & 65535))
}
le64() {
    le32 $(($1 & 4294967295))
    le32 $((($1 >> 32) & 4294967295))
}
# $1 as NUL-terminated UCS-2 (ASCII only), the string type of EFI load options.
ucs2() {
    rest=$1
    while [ -n "$rest" ]; do
        char=${rest%"${rest#?}"}
        rest=${rest#?}
        printf '%s\000' "$char"
    done
    printf '\000\000'
}
read_u() { # read_u FILE OFFSET BYTES: little-endian unsigned integer
    dd if="$1" bs=1 skip="$2" count="$3" 2>/dev/null | od -An -tu"$3" | tr -d ' \n'
}

# A Boot#### load option for systemd-boot on the ESP and first place in BootOrder, as
# `bootctl install` writes them when NixOS may touch EFI variables.
register_efi_boot_entry() {
    esp=$1
    efivars=/sys/firmware/efi/efivars
    [ -e "$efivars/BootOrder-$efiGlobal" ] || [ -n "$(ls "$efivars" 2>/dev/null)" ] ||
        die "canTouchEfiVariables is set but no EFI variables are mounted at $efivars"
    sys=/sys/dev/block/$(mount_device "$esp")
    [ -e "$sys/partition" ] || die "$esp is not mounted from a disk partition"
    partition=$(cat "$sys/partition")
    start=$(cat "$sys/start")
    size=$(cat "$sys/size")
    disk=$(readlink -f "$sys")
    disk=${disk%/*}
    disk=/dev/${disk##*/}
    [ "$(dd if="$disk" bs=8 skip=64 count=1 2>/dev/null)" = "EFI PART" ] ||
        die "the ESP's disk $disk has no GPT"
    entries_lba=$(read_u "$disk" $((512 + 72)) 8)
    entry_size=$(read_u "$disk" $((512 + 84)) 4)
    guid_offset=$((entries_lba * 512 + (partition - 1) * entry_size + 16))

    number=0
    while [ -e "$efivars/Boot$(printf %04X $number)-$efiGlobal" ]; do
        number=$((number + 1))
    done
    id=$(printf %04X $number)
    description="Linux Boot Manager"
    loader="\\EFI\\systemd\\systemd-boot$efiArch.efi"
    file_node_length=$((4 + 2 * (${#loader} + 1)))
    tmp=/run/switch-to-configuration.efivar
    {
        le32 7 # non-volatile, boot service and runtime access
        le32 1 # LOAD_OPTION_ACTIVE
        le16 $((42 + file_node_length + 4))
        ucs2 "$description"
        # media device path, hard drive: partition number, start, size, GPT signature
        le16 $((4 | 1 << 8))
        le16 42
        le32 "$partition"
        le64 "$start"
        le64 "$size"
        dd if="$disk" bs=1 skip="$guid_offset" count=16 2>/dev/null
        printf '\002\002'
        # media device path, file path
        le16 $((4 | 4 << 8))
        le16 "$file_node_length"
        ucs2 "$loader"
        # end of device path
        printf '\177\377\004\000'
    } >"$tmp"
    cat "$tmp" >"$efivars/Boot$id-$efiGlobal"

    order=$efivars/BootOrder-$efiGlobal
    old_order=
    if [ -e "$order" ]; then
        old_order=$(dd if="$order" bs=1 skip=4 2>/dev/null | od -An -tx2 -v)
        # efivarfs makes existing variables immutable against accidents.
        chattr -i "$order"
    fi
    {
        le32 7
        le16 $((0x$id))
        for entry in $old_order; do
            [ $((0x$entry)) -eq $((0x$id)) ] || le16 $((0x$entry))
        done
    } >"$tmp"
    cat "$tmp" >"$order"
    rm -f "$tmp"
    echo "created EFI boot entry Boot$id for $loader on $disk partition $partition" >&2
}

install_systemd_boot() {
    esp=$efiSysMountPoint
    boot=${xbootldrMountPoint:-$efiSysMountPoint}
    is_mount_point "$esp" || die "the EFI system partition is not mounted at $esp"
    is_mount_point "$boot" || die "the XBOOTLDR partition is not mounted at $boot"

    if [ "$NIXOS_INSTALL_BOOTLOADER" = 1 ] || [ ! -e "$esp/EFI/systemd/systemd-boot$efiArch.efi" ]; then
        mkdir -p "$esp/EFI/systemd" "$esp/EFI/BOOT"
        cp @systemdBoot@ "$esp/EFI/systemd/systemd-boot$efiArch.efi"
        cp @systemdBoot@ "$esp/EFI/BOOT/BOOT$EFIARCH.EFI"
        # As NixOS' builder runs `bootctl install`: systemd >= 257's bootctl decides
        # against EFI variables in a container, nixos-enter's PID namespace included.
        if [ -n "$canTouchEfiVariables" ] &&
            { [ "$bootctlSystemd" -lt 257 ] || @out@/libexec/bootctl-touch-variables; }; then
            register_efi_boot_entry "$esp"
        fi
    fi

    mkdir -p "$esp/loader" "$boot/loader/entries" "$boot/EFI/nixos"
    newest=
    for n in $(generations); do
        gen=$profiles/system-$n-link
        kernel=$(copy_boot_file kernel "$boot/EFI/nixos" .efi)
        initrd=$(copy_boot_file initrd "$boot/EFI/nixos" .efi)
        {
            echo "title NixOS"
            echo "version Generation $n $(cat "$gen/nixos-version")"
            echo "linux /EFI/nixos/$kernel"
            echo "initrd /EFI/nixos/$initrd"
            echo "options init=$(readlink -f "$gen")/init $(cat "$gen/kernel-params")"
        } >"$boot/loader/entries/.tmp"
        mv "$boot/loader/entries/.tmp" "$boot/loader/entries/nixos-generation-$n.conf"
        newest=$n
    done
    {
        echo "timeout 0"
        echo "default nixos-generation-$newest.conf"
        echo "console-mode keep"
    } >"$esp/loader/.loader.conf.tmp"
    mv "$esp/loader/.loader.conf.tmp" "$esp/loader/loader.conf"
}

action=$1
case $action in
    boot | switch) ;;
    test | dry-activate)
        echo "switch-to-configuration: $action: the test system has no services to switch" >&2
        exit 0
        ;;
    *) die "usage: switch-to-configuration boot|switch|test|dry-activate" ;;
esac

[ -n "$(generations)" ] || die "no system generations in $profiles (expected system-1-link)"
[ -z "$grubDevices$grubEfi" ] || install_grub
[ -z "$systemdBootEnable" ] || install_systemd_boot
if [ "$action" = switch ]; then
    @out@/activate
fi
