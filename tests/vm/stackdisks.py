"""The storage test disks: recipes for tests/vm/provision.py (LUKS1/LUKS2, LVM, mdraid,
btrfs, stacked), their UUIDs, passphrase and key file. The storage tests boot them; the
boot benchmark boots Debian's layout (LVM on LUKS) with the key file."""

from __future__ import annotations

from tests.vm import provision

PASSPHRASE = "correct horse"
KEY = bytes(range(64))  # the key file's contents
KEY_PATH = "/etc/keys/root.key"
ROOT_UUID = "7e57f00d-0000-4000-8000-000000000001"
LUKS_UUID = "7e57f00d-0000-4000-8000-0000000000a1"
LUKS1_UUID = "7e57f00d-0000-4000-8000-0000000000a2"
INNER_LUKS_UUID = "7e57f00d-0000-4000-8000-0000000000a3"
STACK_LUKS_UUID = "7e57f00d-0000-4000-8000-0000000000a4"
ARGON = "--pbkdf argon2id --pbkdf-memory 32768 --pbkdf-force-iterations 4"


def luks_format(device: str, uuid: str, version: int = 2) -> str:
    kdf = ARGON if version == 2 else "--pbkdf-force-iterations 1000"
    return (f"echo -n '{PASSPHRASE}' | /sbin/cryptsetup luksFormat --batch-mode --type "
            f"luks{version} {kdf} --uuid {uuid} {device} -\n"
            f"echo -n '{PASSPHRASE}' | /sbin/cryptsetup luksAddKey --batch-mode "
            f"{kdf if version == 2 else ''} --key-file - {device} /root.key\n")


def luks_open(device: str, name: str) -> str:
    return f"/sbin/cryptsetup open --key-file /root.key {device} {name}\n"


def root_input(tree: str) -> provision.Input:
    """The ext4 root every stack carries: the test root (harness.make_test_root)."""
    return provision.ext4_input(tree, 40, ROOT_UUID, "stackroot")


def recipe(name: str, disks: list[provision.Disk], script: str,
           root_input: provision.Input) -> provision.Recipe:
    return provision.Recipe(name, disks, script, [root_input], {"/root.key": KEY})


def raid1_recipe(root_input: provision.Input) -> provision.Recipe:
    return recipe("raid1", [provision.Disk("a", 48), provision.Disk("b", 48)],
                  "/sbin/mdadm --create /dev/md0 --run --level=1 --raid-devices=2 "
                  "--metadata=1.2 --assume-clean /dev/vda /dev/vdb\n"
                  "/bin/busybox dd if=/dev/vdc of=/dev/md0 bs=1M\n"
                  "/sbin/mdadm --stop /dev/md0\n", root_input)


def raid1_luks_lvm(root_input: provision.Input) -> provision.Recipe:
    """RAID1 of two disks, LUKS2 on the array, VG stackvg with LV root on that."""
    return recipe("raid1-luks-lvm", [provision.Disk("a", 100), provision.Disk("b", 100)],
                  "/sbin/mdadm --create /dev/md0 --run --level=1 --raid-devices=2 "
                  "--metadata=1.2 --assume-clean /dev/vda /dev/vdb\n"
                  + luks_format("/dev/md0", STACK_LUKS_UUID) + luks_open("/dev/md0", "mdcrypt")
                  + "/sbin/lvm pvcreate -y /dev/mapper/mdcrypt\n"
                  "/sbin/lvm vgcreate -y stackvg /dev/mapper/mdcrypt\n"
                  "/sbin/lvm lvcreate -y -L 48M -n root stackvg\n"
                  "/bin/busybox dd if=/dev/vdc of=/dev/stackvg/root bs=1M\n"
                  "/sbin/lvm vgchange -an stackvg\n/sbin/cryptsetup close mdcrypt\n"
                  "/sbin/mdadm --stop /dev/md0\n", root_input)


def debian_layout(root_input: provision.Input) -> provision.Recipe:
    """Debian's "guided, encrypted LVM": a LUKS partition, VG debian-vg, LVs root, swap_1."""
    return recipe("debian-layout", [provision.Disk("d", 300, [("cryptlvm", 0)])],
                  luks_format("/dev/vda1", LUKS_UUID) + luks_open("/dev/vda1", "vda1_crypt")
                  + "/sbin/lvm pvcreate -y /dev/mapper/vda1_crypt\n"
                  "/sbin/lvm vgcreate -y debian-vg /dev/mapper/vda1_crypt\n"
                  "/sbin/lvm lvcreate -y -L 48M -n root debian-vg\n"
                  "/sbin/lvm lvcreate -y -l 100%FREE -n swap_1 debian-vg\n"
                  "/bin/busybox dd if=/dev/vdb of=/dev/debian-vg/root bs=1M\n"
                  "/sbin/mkswap /dev/debian-vg/swap_1\n"
                  "/sbin/lvm vgchange -an debian-vg\n/sbin/cryptsetup close vda1_crypt\n",
                  root_input)


def recipes(root_input: provision.Input) -> list[provision.Recipe]:
    """Every recipe the storage tests boot on the 7.x kernel."""
    return [
        recipe("luks2", [provision.Disk("d", 64)],
               luks_format("/dev/vda", LUKS_UUID) + luks_open("/dev/vda", "r")
               + "/bin/busybox dd if=/dev/vdb of=/dev/mapper/r bs=1M\n"
               "/sbin/cryptsetup close r\n", root_input),
        recipe("luks1", [provision.Disk("d", 64)],
               luks_format("/dev/vda", LUKS1_UUID, 1) + luks_open("/dev/vda", "r")
               + "/bin/busybox dd if=/dev/vdb of=/dev/mapper/r bs=1M\n"
               "/sbin/cryptsetup close r\n", root_input),
        debian_layout(root_input),
        recipe("luks-on-lvm", [provision.Disk("d", 96)],
               "/sbin/lvm pvcreate -y /dev/vda\n/sbin/lvm vgcreate -y vg0 /dev/vda\n"
               "/sbin/lvm lvcreate -y -L 64M -n cryptroot vg0\n"
               + luks_format("/dev/vg0/cryptroot", INNER_LUKS_UUID)
               + luks_open("/dev/vg0/cryptroot", "inner")
               + "/bin/busybox dd if=/dev/vdb of=/dev/mapper/inner bs=1M\n"
               "/sbin/cryptsetup close inner\n/sbin/lvm vgchange -an vg0\n", root_input),
        raid1_recipe(root_input),
        # RAID0: with a member missing it cannot run even degraded.
        recipe("raid0", [provision.Disk("a", 32), provision.Disk("b", 32)],
               "/sbin/mdadm --create /dev/md0 --run --level=0 --raid-devices=2 "
               "--metadata=1.2 /dev/vda /dev/vdb\n"
               "/bin/busybox dd if=/dev/vdc of=/dev/md0 bs=1M\n"
               "/sbin/mdadm --stop /dev/md0\n", root_input),
        raid1_luks_lvm(root_input),
        # A btrfs whose top level holds only subvolumes: the root is in @, as on Ubuntu.
        recipe("btrfs-subvol", [provision.Disk("d", 160), provision.Disk("e", 130),
                                provision.Disk("f", 130)],
               "/sbin/mkfs.btrfs -q -f -L subvolroot /dev/vda\n"
               "/sbin/mkfs.btrfs -q -f -L tworoot -d raid1 -m raid1 /dev/vdb /dev/vdc\n"
               "/bin/btrfs device scan\n"
               "/bin/busybox mount -t ext4 -o ro /dev/vdd /tmp\n"
               "/bin/busybox mount -t btrfs /dev/vda /mnt\n"
               "/bin/btrfs -q subvolume create /mnt/@\n/bin/busybox cp -a /tmp/. /mnt/@/\n"
               "/bin/busybox umount /mnt\n"
               "/bin/busybox mount -t btrfs /dev/vdb /mnt\n/bin/busybox cp -a /tmp/. /mnt/\n"
               "/bin/busybox umount /mnt\n/bin/busybox umount /tmp\n", root_input),
    ]
