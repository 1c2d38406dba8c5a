"""The kernel's uevents read without udev: datagrams parsed as pyudev's Device reads them,
block devices enumerated from sysfs, and lost events reported again."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from pyinit import coldplug as coldplug_module
from pyinit import kernelevents, uevents

ADD_VDA = (b"add@/devices/pci0000:00/0000:00:04.0/virtio2/block/vda\0ACTION=add\0"
           b"DEVPATH=/devices/pci0000:00/0000:00:04.0/virtio2/block/vda\0SUBSYSTEM=block\0"
           b"MAJOR=254\0MINOR=0\0DEVNAME=vda\0DEVTYPE=disk\0DISKSEQ=1\0SEQNUM=1234\0")


def test_a_kernel_datagram_reads_as_pyudev_reads_a_device() -> None:
    event = kernelevents.parse(ADD_VDA)
    assert event is not None
    assert (event.action, event.subsystem, event.device_node, event.device_type) == (
        "add", "block", "/dev/vda", "disk")
    assert event.device_number == os.makedev(254, 0)
    assert event.sys_path == "/sys/devices/pci0000:00/0000:00:04.0/virtio2/block/vda"
    assert event.sys_name == "vda"
    assert event.properties["SEQNUM"] == "1234"


@pytest.mark.parametrize("message", [
    b"libudev\0\xfe\xed\xca\xfe" + ADD_VDA[3:],  # udevd's processed events: not the kernel's
    b"add@/devices/x\0DEVPATH=/devices/x\0",  # no ACTION
    b"add@/devices/x\0ACTION=add\0",  # no DEVPATH
    b"no header\0ACTION=add\0DEVPATH=/devices/x\0",
    b"",
])
def test_other_datagrams_are_not_events(message: bytes) -> None:
    assert kernelevents.parse(message) is None


def test_a_device_without_a_node_or_numbers() -> None:
    event = kernelevents.parse(b"add@/devices/virtual/net/lo\0ACTION=add\0"
                               b"DEVPATH=/devices/virtual/net/lo\0SUBSYSTEM=net\0MAJOR=x\0")
    assert event is not None
    assert (event.device_node, event.device_number, event.device_type) == (None, 0, None)


def fake_sysfs(top: Path) -> Path:
    """TOP/class/block with vda (a disk) and vda1 (its partition) linked into devices/."""
    sys_block = top / "class" / "block"
    sys_block.mkdir(parents=True)
    for rel, lines in (("devices/virtio2/block/vda", "MAJOR=254\nMINOR=0\nDEVNAME=vda\n"
                        "DEVTYPE=disk\n"),
                       ("devices/virtio2/block/vda/vda1", "MAJOR=254\nMINOR=1\nDEVNAME=vda1\n"
                        "DEVTYPE=partition\nPARTN=1\n")):
        (top / rel).mkdir(parents=True)
        (top / rel / "uevent").write_text(lines)
        (sys_block / Path(rel).name).symlink_to(top / rel)
    (sys_block / "gone").symlink_to(top / "devices" / "gone")  # removed while listing
    return sys_block


def test_block_devices_are_enumerated_from_sysfs(tmp_path: Path) -> None:
    found = kernelevents.block_devices(str(fake_sysfs(tmp_path)))
    assert [(d.action, d.subsystem, d.device_node, d.device_type) for d in found] == [
        (None, "block", "/dev/vda", "disk"), (None, "block", "/dev/vda1", "partition")]
    assert found[1].sys_path.endswith("/devices/virtio2/block/vda/vda1")  # the link resolved
    assert found[1].properties["PARTN"] == "1"
    assert kernelevents.block_devices(str(tmp_path / "absent")) == []


class Kernel:
    """A kernel socket whose buffer overflowed once, then had nothing."""

    def __init__(self) -> None:
        self.overflowed = 0
        self.closed = False

    def poll(self, timeout: float) -> kernelevents.Event | None:
        if self.overflowed == 0:
            self.overflowed = 1
        return None

    def close(self) -> None:
        self.closed = True


def test_lost_events_load_modules_again_and_report_every_block_device(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sys_block = str(fake_sysfs(tmp_path))
    monkeypatch.setattr(kernelevents, "SYS_BLOCK", sys_block)
    coldplugged: list[Any] = []

    def coldplug(loader: Any, seen: Any = None) -> tuple[int, int]:
        coldplugged.append(loader)
        return 0, 0

    monkeypatch.setattr(coldplug_module, "coldplug", coldplug)
    hotplug = object.__new__(uevents.Hotplug)
    hotplug.loader = "loader"  # type: ignore[assignment]
    hotplug.udev, hotplug.events, hotplug.rescan = None, 0, []
    hotplug.kernel, hotplug.context, hotplug.monitor = Kernel(), None, None  # type: ignore[assignment]
    first = hotplug.next_event(0.1)
    second = hotplug.next_event(0.1)
    assert coldplugged == ["loader"]
    assert [(e.action, e.device_node) for e in (first, second)] == [
        ("change", "/dev/vda"), ("change", "/dev/vda1")]
    assert hotplug.next_event(0.1) is None  # nothing lost since
    assert coldplugged == ["loader"]
    hotplug.close()
    with pytest.raises(RuntimeError, match="the listener was closed"):
        hotplug.next_event(0.1)
