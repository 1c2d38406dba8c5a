"""Which kernel modules an image carries.

Host-only: the modules the running system needs for its root filesystem, found by walking
sysfs from the root's block device (and, for dm/md, its slaves) up through every parent,
collecting each one's driver and MODALIAS, plus the root filesystem's own module.
Generic: a documented set for unknown hardware (see GENERIC), of which the modules the
kernel has are taken.
"""

from __future__ import annotations

import os

from pyinit.builder.kmodules import ModuleTree

# Storage and filesystems for booting on hardware the builder has never seen.
GENERIC = (
    # virtual machines
    "virtio_blk", "virtio_scsi", "virtio_pci", "virtio_mmio",
    # NVMe, SATA/AHCI and SCSI disks
    "nvme", "ahci", "ata_piix", "sd_mod", "sr_mod", "mptsas", "mpt3sas", "megaraid_sas",
    "hv_storvsc", "xen_blkfront", "vmw_pvscsi",
    # USB storage and its host controllers
    "usb_storage", "uas", "xhci_pci", "ehci_pci", "ohci_pci", "uhci_hcd",
    # SD/MMC
    "mmc_block", "sdhci_pci", "sdhci_acpi",
    # filesystems
    "ext4", "xfs", "btrfs", "vfat", "squashfs", "erofs", "overlay", "isofs",
    # device mapper and software RAID
    "dm_mod", "dm_crypt", "dm_verity", "md_mod", "raid0", "raid1", "raid10", "raid456",
)


class HostOnlyError(ValueError):
    """The root device of this host cannot be walked in sysfs."""


def root_mount(mountinfo: str = "/proc/self/mountinfo") -> tuple[tuple[int, int], str, str]:
    """(major, minor), filesystem type and source of the mount at /."""
    with open(mountinfo, encoding="utf-8") as fh:
        for line in fh:
            fields = line.split()
            if fields[4] == "/":
                sep = fields.index("-")
                major, minor = (int(x) for x in fields[2].split(":"))
                return (major, minor), fields[sep + 1], fields[sep + 2]
    raise HostOnlyError(f"{mountinfo}: expected a mount at /, found none")


def _block_sysfs(devnum: tuple[int, int], sys: str) -> str:
    link = os.path.join(sys, "dev/block", f"{devnum[0]}:{devnum[1]}")
    if not os.path.exists(link):
        raise HostOnlyError(f"root device {devnum[0]}:{devnum[1]}: expected {link}, found "
                            "none (is / on a block device?)")
    return os.path.realpath(link)


def device_chain(devnum: tuple[int, int], sys: str = "/sys") -> tuple[list[str], list[str]]:
    """MODALIAS values and driver module names from the block device up to the root of
    sysfs, following dm/md slaves. Returns (modaliases, drivers), each in walk order."""
    modaliases: list[str] = []
    drivers: list[str] = []
    todo = [_block_sysfs(devnum, sys)]
    seen: set[str] = set()
    devices_root = os.path.join(sys, "devices")
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        slaves = os.path.join(path, "slaves")
        if os.path.isdir(slaves):
            todo.extend(os.path.realpath(os.path.join(slaves, s)) for s in os.listdir(slaves))
        node = path
        while node.startswith(devices_root) and node != devices_root:
            try:
                with open(os.path.join(node, "modalias"), encoding="ascii") as fh:
                    alias = fh.read().strip()
                if alias and alias not in modaliases:
                    modaliases.append(alias)
            except OSError:
                pass
            module = os.path.join(node, "driver", "module")
            if os.path.islink(module):
                name = os.path.basename(os.path.realpath(module))
                if name not in drivers:
                    drivers.append(name)
            node = os.path.dirname(node)
    return modaliases, drivers


def hostonly_modules(tree: ModuleTree, sys: str = "/sys",
                     mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """The module names (or builtins) the root of this host needs, for TREE's kernel."""
    devnum, fstype, _source = root_mount(mountinfo)
    modaliases, drivers = device_chain(devnum, sys)
    wanted: list[str] = []
    for name in drivers:
        if tree.resolve(name):
            wanted.append(name)
    for alias in modaliases:  # drivers built in need nothing from the image
        wanted.extend(m for m in tree.resolve(alias) if m not in tree.builtin)
    fs = tree.resolve(f"fs-{fstype}") or tree.resolve(fstype)
    wanted.extend(fs)
    return list(dict.fromkeys(wanted))


def generic_modules(tree: ModuleTree, names: tuple[str, ...] = GENERIC) -> list[str]:
    """The part of NAMES this kernel has (as modules or built in)."""
    return [n for n in names if tree.resolve(n)]
