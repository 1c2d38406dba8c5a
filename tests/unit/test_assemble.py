"""The assembly loop (pyinit.assemble.Discovery) with a fake clock, a fake device source and
fake handlers: new dm/md devices go round again, the degraded start at 2/3 of the time, and
the whole picture when time is up."""

from __future__ import annotations

import os
from typing import cast

import pytest

from pyinit.assemble import Discovery
from pyinit.blockdev import BlockDevice, Probed
from pyinit.match import DiscoveryError
from pyinit.rootspec import parse_root
from pyinit.uevents import Hotplug

ROOT_UUID = "0a1b2c3d-0000-4000-8000-0000000000aa"
LUKS_UUID = "0123abcd-0000-4000-8000-00000000000a"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Device:
    """What block_device() reads from a pyudev Device, with udevd's properties."""

    def __init__(self, name: str, devnum: tuple[int, int], **props: str) -> None:
        self.sys_name = name
        self.sys_path = f"/nonexistent/sys/class/block/{name}"  # no sysfs: the event's data
        self.device_node = f"/dev/{name}"
        self.device_number = os.makedev(*devnum)
        self.device_type = "disk"
        self.properties = props
        self.action = "add"
        self.subsystem = "block"


class Source:
    """Block devices that appear at given times, each with its add event; waiting for an
    event moves the clock on."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.udev = object()  # udevd runs: the devices' properties are its
        self.appearing: list[tuple[float, Device]] = []
        self.queue: list[tuple[float, Device]] = []
        self.waits: list[float] = []
        self.probed = Probed()

    def appear(self, at: float, device: Device) -> None:
        self.appearing.append((at, device))
        self.queue.append((at, device))
        self.queue.sort(key=lambda item: item[0])

    def block_devices(self) -> list[Device]:
        return [d for at, d in self.appearing if at <= self.clock.now]

    def next_event(self, timeout: float, block: bool = True) -> Device | None:
        until = self.clock.now + (timeout if block else 0.0)
        if block:
            self.waits.append(timeout)
        if self.queue and self.queue[0][0] <= until:
            at, device = self.queue.pop(0)
            self.clock.now = max(self.clock.now, at)
            return device
        self.clock.now = until
        return None


class Maker:
    """A handler that, offered a device of its type, makes the next device (unlocks,
    activates, assembles); or, with degraded=, makes it only when started degraded."""

    def __init__(self, kind: str, source: Source, makes: Device | None = None,
                 degraded: Device | None = None, picture: tuple[str, ...] = ()) -> None:
        self.types: tuple[str, ...] = (kind,)
        self.source = source
        self.makes = makes
        self.degraded = degraded
        self.lines = list(picture)
        self.offered: list[tuple[float, str]] = []
        self.degrades: list[float] = []

    def offer(self, dev: BlockDevice) -> bool:
        self.offered.append((self.source.clock.now, dev.node))
        if self.makes is None:
            return False
        self.source.appear(self.source.clock.now, self.makes)
        return True

    def degrade(self) -> bool:
        self.degrades.append(self.source.clock.now)
        if self.degraded is None:
            return False
        self.source.appear(self.source.clock.now, self.degraded)
        return True

    def ready(self, dev: BlockDevice) -> bool:
        return True

    def picture(self) -> list[str]:
        return self.lines


def discovery(source: Source, clock: Clock, handlers: list[Maker],
              events: list[tuple[str, dict[str, object]]] | None = None) -> Discovery:
    def emit(event: str, **fields: object) -> None:
        if events is not None:
            events.append((event, fields))

    return Discovery(parse_root(f"UUID={ROOT_UUID}"), cast(Hotplug, source), 30.0,
                     emit=emit, handlers=handlers, clock=clock)


def test_a_device_a_handler_makes_goes_round_again_until_root_matches() -> None:
    clock = Clock()
    source = Source(clock)
    # LVM on LUKS: the disk appears as a uevent, the LUKS handler makes the PV, the LVM
    # handler the root LV.
    source.appear(1.5, Device("vda2", (254, 2), ID_FS_TYPE="crypto_LUKS", ID_FS_UUID=LUKS_UUID))
    pv = Device("dm-0", (253, 0), ID_FS_TYPE="LVM2_member", ID_FS_UUID="pv-uuid")
    root = Device("dm-1", (253, 1), ID_FS_TYPE="ext4", ID_FS_UUID=ROOT_UUID)
    lvm = Maker("LVM2_member", source, makes=root)
    luks = Maker("crypto_LUKS", source, makes=pv)
    found = discovery(source, clock, [luks, lvm]).run()
    assert found.node == "/dev/dm-1" and found.props["ID_FS_UUID"] == ROOT_UUID
    assert luks.offered == [(1.5, "/dev/vda2")] and lvm.offered == [(1.5, "/dev/dm-0")]
    assert clock.now == 1.5 and luks.degrades == lvm.degrades == []


def test_at_two_thirds_of_the_time_the_handlers_degrade_once() -> None:
    clock = Clock()
    source = Source(clock)
    source.appear(0.0, Device("vda1", (254, 1), ID_FS_TYPE="linux_raid_member",
                              ID_FS_UUID="a1b2c3d4-e5f6-0718-293a-4b5c6d7e8f90"))
    array = Device("md127", (9, 127), ID_FS_TYPE="ext4", ID_FS_UUID=ROOT_UUID)
    raid = Maker("linux_raid_member", source, degraded=array)
    other = Maker("crypto_LUKS", source)
    events: list[tuple[str, dict[str, object]]] = []
    found = discovery(source, clock, [raid, other], events).run()
    assert found.node == "/dev/md127"
    assert raid.degrades == other.degrades == [20.0]  # every handler, once, at 2/3 of 30 s
    assert raid.offered == [(0.0, "/dev/vda1")] and other.offered == []
    assert [e for e, _ in events] == ["waiting_for_root"] * 3  # at 5, 10 and 15 s
    assert events[0][1]["seen"] == ("/dev/vda1 (254:1) TYPE=linux_raid_member "
                                    "UUID=a1b2c3d4-e5f6-0718-293a-4b5c6d7e8f90")


def test_at_the_timeout_the_message_has_the_whole_picture() -> None:
    clock = Clock()
    source = Source(clock)
    source.appear(0.0, Device("vda2", (254, 2), ID_FS_TYPE="crypto_LUKS", ID_FS_UUID=LUKS_UUID))
    source.appear(3.0, Device("vdb", (254, 16), ID_FS_TYPE=""))  # blank (udevd probed it)
    source.appear(4.0, Device("vdc1", (254, 33), ID_FS_TYPE="linux_raid_member",
                              ID_FS_UUID="a1b2c3d4-e5f6-0718-293a-4b5c6d7e8f90"))
    luks = Maker("crypto_LUKS", source, picture=(
        f"LUKS devices still locked: /dev/vda2 (UUID={LUKS_UUID}) (none is named: add "
        "rd.luks.uuid=, or rd.auto)",))
    raid = Maker("linux_raid_member", source, picture=(
        "arrays inactive: md? (UUID a1b2c3d4e5f60718293a4b5c6d7e8f90, members seen: "
        "/dev/vdc1)",))
    lvm = Maker("LVM2_member", source)  # waits for nothing: no line
    with pytest.raises(DiscoveryError) as err:
        discovery(source, clock, [luks, raid, lvm]).run()
    assert clock.now == 30.0
    assert luks.degrades == raid.degrades == lvm.degrades == [20.0]
    assert str(err.value) == (
        f"no device matched root=UUID={ROOT_UUID} (the device with UUID={ROOT_UUID}) within "
        f"30 s; block devices seen: /dev/vda2 (254:2) TYPE=crypto_LUKS UUID={LUKS_UUID}; "
        "/dev/vdb (254:16) no filesystem or partition signature; /dev/vdc1 (254:33) "
        "TYPE=linux_raid_member UUID=a1b2c3d4-e5f6-0718-293a-4b5c6d7e8f90; "
        f"LUKS devices still locked: /dev/vda2 (UUID={LUKS_UUID}) (none is named: add "
        "rd.luks.uuid=, or rd.auto); arrays inactive: md? (UUID "
        "a1b2c3d4e5f60718293a4b5c6d7e8f90, members seen: /dev/vdc1)")


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The node of every device the discoveries probe, in order."""
    from pyinit import assemble, blockdev

    seen: list[str] = []
    real = blockdev.block_device

    def counted(device: Device, udev_props: bool) -> BlockDevice:
        seen.append(device.device_node)
        return real(device, udev_props)

    monkeypatch.setattr(assemble, "block_device", counted)
    return seen


def test_a_later_discovery_takes_what_an_earlier_one_probed(probes: list[str]) -> None:
    # verity's data and hash devices, then the root: each device is probed once per boot,
    # and the later discovery still offers it to its own handlers.
    clock = Clock()
    source = Source(clock)
    source.queue = []  # present from the start, no events left to read
    data = Device("vda", (254, 0), ID_FS_TYPE="squashfs", DISKSEQ="1")
    blank = Device("loop0", (7, 0), DISKSEQ="2")  # no signature: probed every time
    source.appearing = [(0.0, data), (0.0, blank)]
    Discovery(parse_root("/dev/vda"), cast(Hotplug, source), 30.0).run()
    assert probes.count("/dev/vda") == 1 and probes.count("/dev/loop0") >= 1
    blank_probes = probes.count("/dev/loop0")
    squash = Maker("squashfs", source)
    assert Discovery(parse_root("/dev/vda"), cast(Hotplug, source), 30.0,
                     handlers=[squash]).run().fstype == "squashfs"
    assert probes.count("/dev/vda") == 1  # taken from the first discovery
    assert probes.count("/dev/loop0") > blank_probes  # nothing to keep: probed again
    assert squash.offered == [(0.0, "/dev/vda")]
    # The same node, another device (a new DISKSEQ, as a re-attached loop or disk gets):
    # probed again.
    source.appearing = [(0.0, Device("vda", (254, 0), ID_FS_TYPE="erofs", DISKSEQ="3"))]
    found = Discovery(parse_root("/dev/vda"), cast(Hotplug, source), 30.0).run()
    assert found.fstype == "erofs" and probes[-1] == "/dev/vda"


def test_a_console_or_a_bare_partition_is_probed_again(probes: list[str]) -> None:
    # A mkfs typed at the console sends no uevent without udevd: nothing probed before a
    # console is taken afterwards, nor a partition without a filesystem on it.
    clock = Clock()
    source = Source(clock)
    root = Device("vda1", (254, 1), ID_FS_TYPE="ext4", ID_FS_UUID=ROOT_UUID)
    empty = Device("vda2", (254, 2), ID_PART_ENTRY_UUID="0a1b2c3d-0000-4000-8000-0000000000bb")
    source.appearing = [(0.0, root), (0.0, empty)]

    def run() -> None:
        Discovery(parse_root(f"UUID={ROOT_UUID}"), cast(Hotplug, source), 30.0).run()

    run()
    run()
    assert probes.count("/dev/vda1") == 1 and probes.count("/dev/vda2") >= 2
    Probed.forget_all()  # as rescue.open_console does when a console ends
    run()
    assert probes.count("/dev/vda1") == 2
