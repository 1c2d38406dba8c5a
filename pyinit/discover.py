"""Find the root device: udev enumeration for what exists, uevents for what comes later.

Without udevd in the image the init is its own hotplug handler: it listens on the kernel's
uevent netlink socket through pyudev, loads the modules each new device's MODALIAS names,
and probes block devices with libblkid to learn the properties udev would have set
(ID_FS_UUID, ID_FS_LABEL, ID_FS_TYPE, ID_PART_ENTRY_UUID, ID_PART_ENTRY_NAME).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Container
from typing import Any

from pyinit import libfind, syscalls
from pyinit.kmod import Loader
from pyinit.rootspec import RootSpec
from pyinit.udevd import Udevd

_BLKID_TO_UDEV = {
    "TYPE": "ID_FS_TYPE",
    "UUID": "ID_FS_UUID",
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
         "ID_PATH")
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


class DiscoveryError(RuntimeError):
    """The root device was not found, or root= matched more than one device."""


class BlockDevice:
    """A block device as root= matching sees it: sysfs identity plus probed tags."""

    def __init__(self, node: str, devnum: tuple[int, int], devtype: str, disk: str,
                 partnum: int | None, props: dict[str, str] | None = None,
                 probe_error: str | None = None, links: tuple[str, ...] = ()) -> None:
        self.node = node
        self.devnum = devnum
        self.devtype = devtype
        self.disk = disk
        self.partnum = partnum
        self.props = {} if props is None else props
        self.probe_error = probe_error
        self.links = links  # udev's DEVLINKS, when udevd runs

    def __repr__(self) -> str:
        return f"BlockDevice({self.summary()})"

    def summary(self) -> str:
        fields = [f"{k.removeprefix('ID_').removeprefix('FS_')}={self.props[k]}"
                  for k in SHOWN if self.props.get(k)]
        if self.probe_error:
            fields.append(f"probe failed: {self.probe_error}")
        return f"{self.node} ({self.devnum[0]}:{self.devnum[1]}) " + (
            " ".join(fields) or "no filesystem or partition signature"
        )


def sysfs_modaliases(sys: str = "/sys", known: Container[str] = ()) -> dict[str, str]:
    """BUS/DEVICE -> modalias ("" for none) of every device on every bus, except KNOWN."""
    found: dict[str, str] = {}
    try:
        buses = sorted(os.listdir(f"{sys}/bus"))
    except OSError:
        return found
    for bus in buses:
        directory = f"{sys}/bus/{bus}/devices"
        try:
            devices = sorted(os.listdir(directory))
        except OSError:
            continue
        for device in devices:
            if f"{bus}/{device}" in known:
                continue
            try:
                with open(f"{directory}/{device}/modalias", encoding="ascii",
                          errors="replace") as fh:
                    found[f"{bus}/{device}"] = fh.read().strip()
            except OSError:
                found[f"{bus}/{device}"] = ""
    return found


def coldplug(loader: Loader, sys: str = "/sys") -> tuple[int, int]:
    """Load the modules every existing device's MODALIAS names, read straight from sysfs
    (a pyudev enumeration of every device costs ~0.4 s of guest time under TCG). A bus
    driver's probe adds devices on another bus (virtio_pci's on the virtio bus): the scan
    repeats, for the new devices only, while a pass loads modules, so their drivers load
    here instead of when their uevents come through.

    Returns (bus devices seen, devices with a MODALIAS)."""
    seen: dict[str, str] = {}
    while True:
        before = len(loader.loaded_here)
        fresh = sysfs_modaliases(sys, known=seen)
        seen.update(fresh)
        for modalias in fresh.values():
            if modalias:
                loader.load_for_modalias(modalias)
        if len(loader.loaded_here) == before:
            return len(seen), sum(1 for m in seen.values() if m)


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
                       disk, partnum)


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


def scan_sysfs(sys_block: str = "/sys/class/block") -> list[BlockDevice]:
    """Every block device the kernel has, read from sysfs and probed (no udev needed)."""
    try:
        names = sorted(os.listdir(sys_block))
    except OSError:
        return []
    paths = [os.path.join(sys_block, n) for n in names]
    return [_probe(dev, path) for path in paths if (dev := from_sysfs(path)) is not None]


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


def matches(spec: RootSpec, dev: BlockDevice) -> bool:
    props = dev.props
    if spec.kind == "path":
        if spec.value == dev.node or spec.value in dev.links:
            return True
        if spec.value.startswith(BY_PATH) and "ID_PATH" in props:
            return spec.value[len(BY_PATH):] == props["ID_PATH"]
        try:
            st = os.stat(spec.value)
        except OSError:
            return False
        return os.major(st.st_rdev) == dev.devnum[0] and os.minor(st.st_rdev) == dev.devnum[1]
    if spec.kind == "devnum":
        return spec.devnum == dev.devnum
    if spec.kind == "uuid":
        return props.get("ID_FS_UUID", "").lower() == spec.value
    if spec.kind == "label":
        return props.get("ID_FS_LABEL") == spec.value
    if spec.kind == "partuuid":
        return props.get("ID_PART_ENTRY_UUID", "").lower() == spec.value
    if spec.kind == "partlabel":
        return props.get("ID_PART_ENTRY_NAME") == spec.value
    return False


def find_root(spec: RootSpec, devices: dict[str, BlockDevice]) -> BlockDevice | None:
    """The one device root= names among DEVICES; DiscoveryError when it names several."""
    found = [d for d in devices.values() if matches(spec, d)]
    if spec.partnroff and found:
        base = found[0]
        want = (base.partnum or 0) + spec.partnroff
        found = [d for d in devices.values()
                 if d.disk == base.disk and d.partnum == want and d.devtype == "partition"]
    if len(found) > 1:
        names = ", ".join(d.summary() for d in sorted(found, key=lambda d: d.node))
        raise DiscoveryError(f"root={spec.text}: {spec.describe()} matches {len(found)} "
                             f"devices, refusing to guess: {names}")
    return found[0] if found else None


class Hotplug:
    """The uevent listener, started before coldplug so that no device falls in between.

    Without udevd it listens to the kernel's uevents and probes block devices itself; with
    udevd (``udev`` given) it listens to udev's processed events, whose properties (from
    udev's blkid builtin) and DEVLINKS (/dev/disk/by-*) it uses.
    """

    def __init__(self, loader: Loader, udev: Udevd | None = None) -> None:
        libfind.install()
        import pyudev  # imported here: only the stages that need devices pay for it

        self.loader = loader
        self.udev = udev
        self.context = pyudev.Context()
        source = "udev" if udev is not None else "kernel"
        self.monitor = pyudev.Monitor.from_netlink(self.context, source=source)
        self.monitor.start()
        self.events = 0

    def coldplug(self) -> tuple[int, int]:
        return coldplug(self.loader)

    def block_devices(self) -> list[Any]:
        return list(self.context.list_devices(subsystem="block"))

    def next_event(self, timeout: float, block: bool = True) -> Any:
        """The next uevent (its modules loaded already), or None after TIMEOUT seconds
        (at once with block=False when nothing is queued)."""
        device = self.monitor.poll(timeout=max(timeout, 0.01) if block else 0)
        if device is None:
            return None
        self.events += 1
        modalias = device.properties.get("MODALIAS")
        if modalias and device.action == "add":
            self.loader.load_for_modalias(modalias)
        return device

    def close(self) -> None:
        """Stop listening (and stop udevd) before the hand-over."""
        del self.monitor  # libudev closes the netlink socket with the last reference
        if self.udev is not None:
            self.udev.stop()


class Discovery:
    """Existing block devices first, then uevents until root= matches or time is up."""

    def __init__(self, spec: RootSpec, hotplug: Hotplug, timeout: float,
                 wait_forever: bool = False, emit: Callable[..., None] | None = None) -> None:
        self.spec = spec
        self.hotplug = hotplug
        self.timeout = timeout
        self.wait_forever = wait_forever
        self.emit: Callable[..., None] = emit or (lambda *a, **k: None)
        self.devices: dict[str, BlockDevice] = {}

    def run(self) -> BlockDevice:
        for device in self.hotplug.block_devices():
            self._add(device)
        found = find_root(self.spec, self.devices)
        deadline = time.monotonic() + self.timeout
        next_report = time.monotonic() + 5.0
        while found is None:
            now = time.monotonic()
            if not self.wait_forever and now >= deadline:
                raise DiscoveryError(self.not_found_message())
            if now >= next_report:
                self.emit("waiting_for_root", root=self.spec.describe(), seen=self.seen_text())
                next_report = now + 5.0
            limit = next_report - now
            if not self.wait_forever:
                limit = min(limit, deadline - now)
            if self._take(self.hotplug.next_event(limit)):
                found = find_root(self.spec, self.devices)
                if found is not None:
                    found = self._confirm()
        return found

    def _confirm(self) -> BlockDevice | None:
        """Before settling on a match, look at every block device the kernel has right now
        (one module load often creates several disks at once, whose events are still
        queued), so that root= matching two devices is reported, never raced past."""
        while (device := self.hotplug.next_event(0.0, block=False)) is not None:
            self._take(device)
        for device in self.hotplug.block_devices():
            if device.device_node not in self.devices:
                self._add(device)
        return find_root(self.spec, self.devices)

    def _take(self, device: Any) -> bool:
        """Record DEVICE when the event adds or changes a block device; True if it did."""
        if device is None or device.action not in ("add", "change"):
            return False
        if device.subsystem != "block" or not device.device_node:
            return False
        self._add(device)
        return True

    def _add(self, device: Any) -> None:
        dev = block_device(device, udev_props=self.hotplug.udev is not None)
        self.devices[dev.node] = dev

    def seen_text(self) -> str:
        if not self.devices:
            return "no block devices"
        return "; ".join(d.summary() for d in sorted(self.devices.values(), key=lambda d: d.node))

    def not_found_message(self) -> str:
        return (f"no device matched root={self.spec.text} ({self.spec.describe()}) within "
                f"{self.timeout:g} s; block devices seen: {self.seen_text()}")
