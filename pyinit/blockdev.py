"""What a block device is, as root= matching and the storage handlers see it: its sysfs
identity (numbers, partition, disk) and the properties libblkid finds on it, under udev's
names (ID_FS_UUID, ID_FS_LABEL, ID_FS_TYPE, ID_PART_ENTRY_UUID, ID_PART_ENTRY_NAME), with
ID_PATH derived from sysfs for PCI disks. No udev needed; udevd's properties are used when
it runs.
"""

from __future__ import annotations

import os
import re
from typing import Any

from pyinit import syscalls

_BLKID_TO_UDEV = {
    "TYPE": "ID_FS_TYPE",
    "UUID": "ID_FS_UUID",
    "UUID_SUB": "ID_FS_UUID_SUB",
    "VERSION": "ID_FS_VERSION",
    "LABEL": "ID_FS_LABEL",
    "USAGE": "ID_FS_USAGE",
    "PTTYPE": "ID_PART_TABLE_TYPE",
    "PTUUID": "ID_PART_TABLE_UUID",
    "PART_ENTRY_UUID": "ID_PART_ENTRY_UUID",
    "PART_ENTRY_NAME": "ID_PART_ENTRY_NAME",
    "PART_ENTRY_NUMBER": "ID_PART_ENTRY_NUMBER",
    "PART_ENTRY_TYPE": "ID_PART_ENTRY_TYPE",
}
SHOWN = ("ID_FS_TYPE", "ID_FS_UUID", "ID_FS_LABEL", "ID_PART_ENTRY_UUID", "ID_PART_ENTRY_NAME",
         "ID_PATH", "DM_NAME")
_PCI_ADDRESS = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
BY_PATH = "/dev/disk/by-path/"


def path_id(sys_path: str) -> str | None:
    """udev's ID_PATH for PCI-attached disks (virtio-blk, nvme), from the sysfs path alone:
    ``pci-0000:00:04.0`` (nvme: ``-nvme-N`` added). None for other buses."""
    parts = os.path.realpath(sys_path).split("/")
    pci = [p for p in parts if _PCI_ADDRESS.match(p)]
    if not pci:
        return None
    ident = f"pci-{pci[-1]}"
    if any(p.startswith("nvme") for p in parts):
        nsid = re.search(r"nvme\d+n(\d+)", sys_path)
        if nsid:
            ident += f"-nvme-{nsid.group(1)}"
    return ident


class BlockDevice:
    """A block device as root= matching sees it: sysfs identity plus probed tags."""

    def __init__(self, node: str, devnum: tuple[int, int], devtype: str, disk: str,
                 partnum: int | None, props: dict[str, str] | None = None,
                 probe_error: str | None = None, links: tuple[str, ...] = (),
                 sys_path: str = "") -> None:
        self.node = node
        self.sys_path = sys_path
        self.devnum = devnum
        self.devtype = devtype
        self.disk = disk
        self.partnum = partnum
        self.props = {} if props is None else props
        self.probe_error = probe_error
        self.links = links  # udev's DEVLINKS, when udevd runs

    def __repr__(self) -> str:
        return f"BlockDevice({self.summary()})"

    @property
    def fstype(self) -> str:
        return self.props.get("ID_FS_TYPE", "")

    def holders(self) -> list[str]:
        """The devices built on this one (dm, md): non-empty once it is in use."""
        try:
            return sorted(os.listdir(os.path.join(self.sys_path, "holders")))
        except OSError:
            return []

    def summary(self) -> str:
        fields = [f"{k.removeprefix('ID_').removeprefix('FS_')}={self.props[k]}"
                  for k in SHOWN if self.props.get(k)]
        if self.probe_error:
            fields.append(f"probe failed: {self.probe_error}")
        return f"{self.node} ({self.devnum[0]}:{self.devnum[1]}) " + (
            " ".join(fields) or "no filesystem or partition signature"
        )


def from_sysfs(sys_path: str, node: str | None = None) -> BlockDevice | None:
    """A block device as sysfs describes it (numbers, partition, its disk); not probed.
    None when SYS_PATH is no block device."""
    try:
        with open(os.path.join(sys_path, "dev"), encoding="ascii") as fh:
            major, minor = (int(x) for x in fh.read().strip().split(":"))
    except (OSError, ValueError):
        return None
    name = os.path.basename(os.path.realpath(sys_path))
    node = node or f"/dev/{name}"
    partnum: int | None = None
    disk = node
    try:
        with open(os.path.join(sys_path, "partition"), encoding="ascii") as fh:
            partnum = int(fh.read().strip() or 0)
        disk = "/dev/" + os.path.basename(os.path.dirname(os.path.realpath(sys_path)))
    except (OSError, ValueError):
        pass
    return BlockDevice(node, (major, minor), "partition" if partnum is not None else "disk",
                       disk, partnum, sys_path=sys_path)


def _probe(dev: BlockDevice, sys_path: str) -> BlockDevice:
    """Fill in libblkid's properties and the sysfs-derived ID_PATH."""
    try:
        dev.props = probe_properties(dev.node)
    except OSError as err:
        dev.probe_error = err.strerror or str(err)
    _finish(dev, sys_path)
    return dev


def _finish(dev: BlockDevice, sys_path: str) -> None:
    if "ID_PART_ENTRY_NUMBER" in dev.props and dev.partnum is None:
        dev.partnum = int(dev.props["ID_PART_ENTRY_NUMBER"])
    _add_path_id(dev, sys_path)
    for key, name in (("DM_NAME", "dm/name"), ("DM_UUID", "dm/uuid")):
        try:
            with open(os.path.join(sys_path, name), encoding="utf-8") as fh:
                value = fh.read().strip()
        except OSError:
            continue
        if value:
            dev.props.setdefault(key, value)


def scan_sysfs(sys_block: str = "/sys/class/block") -> list[BlockDevice]:
    """Every block device the kernel has, read from sysfs and probed (no udev needed)."""
    try:
        names = sorted(os.listdir(sys_block))
    except OSError:
        return []
    paths = [os.path.join(sys_block, n) for n in names]
    return [_probe(dev, path) for path in paths if (dev := from_sysfs(path)) is not None]


class Probed:
    """The block devices probed so far in this boot, by node: a later discovery (verity's
    data and hash devices, then the root, /usr, the overlay's partition) takes them from
    here instead of probing again. An entry holds only while the device is the same one:
    its numbers and the kernel's DISKSEQ (new on every attach of a loop device or disk)
    unchanged; an add or change uevent probes it again. Only a probe that found a
    filesystem or a partition table is kept (dm and loop devices have none until their
    table or file), and none survives a console (forget_all): a mkfs there sends no uevent
    when no udevd runs."""

    generation = 0  # of every instance: forget_all() makes each entry stale

    def __init__(self) -> None:
        self.devices: dict[str, tuple[tuple[int, str | None, int], BlockDevice]] = {}

    @staticmethod
    def _identity(device: Any) -> tuple[int, str | None, int]:
        return device.device_number, device.properties.get("DISKSEQ"), Probed.generation

    def get(self, device: Any) -> BlockDevice | None:
        entry = self.devices.get(device.device_node or "")
        return entry[1] if entry is not None and entry[0] == self._identity(device) else None

    def keep(self, device: Any, probed: BlockDevice) -> None:
        signed = "ID_FS_TYPE" in probed.props or "ID_PART_TABLE_TYPE" in probed.props
        if signed and probed.probe_error is None:
            self.devices[probed.node] = (self._identity(device), probed)
        else:
            self.devices.pop(probed.node, None)

    @classmethod
    def forget_all(cls) -> None:
        """After a console: whatever was typed there may have rewritten any device."""
        cls.generation += 1


def probe_properties(node: str) -> dict[str, str]:
    """libblkid's view of a device, under udev's property names."""
    values = syscalls.probe_block(node)
    return {_BLKID_TO_UDEV[k]: v for k, v in values.items() if k in _BLKID_TO_UDEV}


def block_device(device: Any, udev_props: bool) -> BlockDevice:
    """A pyudev block Device -> BlockDevice, probed when udevd did not do it for us (or
    has not yet: a device enumerated before udev processed it has no ID_FS_* yet)."""
    dev = from_sysfs(device.sys_path, device.device_node)
    if dev is None:  # gone already (a remove raced the add): describe it from the event
        number = device.device_number
        node = device.device_node or "/dev/" + device.sys_name
        dev = BlockDevice(node, (os.major(number), os.minor(number)),
                          device.device_type or "disk", node, None)
    if udev_props and device.properties.get("ID_FS_TYPE") is not None:
        dev.props = {k: device.properties[k] for k in (*_BLKID_TO_UDEV.values(), "ID_PATH")
                     if k in device.properties}
        dev.links = tuple(device.properties.get("DEVLINKS", "").split())
        _finish(dev, device.sys_path)
        return dev
    return _probe(dev, device.sys_path)


def _add_path_id(dev: BlockDevice, sys_path: str) -> None:
    if "ID_PATH" not in dev.props:
        ident = path_id(sys_path)
        if ident:
            dev.props["ID_PATH"] = ident + (f"-part{dev.partnum}" if dev.partnum else "")


