# What a booted guest must see for each bootable partitionTableType: the partition
# table kind, which partition holds the root filesystem, and which vfat partitions
# are mounted where (by filesystem label, as make-disk-image names them).
# Partition numbers follow the reference's partitionDiskScript.
{
  legacy = {
    partitionTable = "dos";
    rootPartition = 1;
    bootFileSystems = [ ];
  };
  "legacy+boot" = {
    partitionTable = "dos";
    rootPartition = 2;
    bootFileSystems = [
      {
        mountPoint = "/boot";
        label = "BOOT";
        partition = 1;
      }
    ];
  };
  "legacy+gpt" = {
    # Partition 1 is the bios_grub partition: GRUB's core image, no filesystem.
    partitionTable = "gpt";
    rootPartition = 2;
    bootFileSystems = [ ];
  };
  efi = {
    partitionTable = "gpt";
    rootPartition = 2;
    bootFileSystems = [
      {
        mountPoint = "/boot";
        label = "ESP";
        partition = 1;
      }
    ];
  };
  efixbootldr = {
    # The ESP holds only the boot manager; kernels and entries live on XBOOTLDR.
    partitionTable = "gpt";
    rootPartition = 3;
    bootFileSystems = [
      {
        mountPoint = "/efi";
        label = "ESP";
        partition = 1;
      }
      {
        mountPoint = "/boot";
        label = "BOOT";
        partition = 2;
      }
    ];
  };
  hybrid = {
    # Partition 2 is the bios_grub partition (made after the ESP, placed before it).
    partitionTable = "gpt";
    rootPartition = 3;
    bootFileSystems = [
      {
        mountPoint = "/boot";
        label = "ESP";
        partition = 1;
      }
    ];
  };
}
