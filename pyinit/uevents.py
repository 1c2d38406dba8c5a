"""Where new devices come from: the kernel's uevent netlink socket, or udevd's processed
events when it runs; each new device's modules are loaded as its event arrives."""

from __future__ import annotations

from typing import Any

from pyinit import coldplug, kernelevents
from pyinit.blockdev import Probed
from pyinit.kmod import Loader
from pyinit.udevd import Udevd


class Hotplug:
    """The uevent listener, started before coldplug so that no device falls in between.

    Without udevd it listens to the kernel's uevents itself (pyinit.kernelevents: no pyudev
    on that path) and block devices are probed by the discovery; with udevd (``udev``
    given) it listens through pyudev to udev's processed events, whose properties (from
    udev's blkid builtin) and DEVLINKS (/dev/disk/by-*) it uses.
    """

    def __init__(self, loader: Loader, udev: Udevd | None = None) -> None:
        self.loader = loader
        self.udev = udev
        self.events = 0
        self.kernel: kernelevents.Monitor | None = None
        self.context: Any = None
        self.monitor: Any = None
        self.rescan: list[Any] = []  # devices to report again after lost events
        self.probed = Probed()  # shared by every discovery of this boot
        if udev is None:
            self.kernel = kernelevents.Monitor()
            return
        from pyinit import libfind  # imported here: only a boot with udevd pays for them

        libfind.install()
        import pyudev

        self.context = pyudev.Context()
        self.monitor = pyudev.Monitor.from_netlink(self.context, source="udev")
        self.monitor.start()

    def coldplug(self, seen: dict[str, str] | None = None) -> tuple[int, int]:
        return coldplug.coldplug(self.loader, seen=seen)

    def block_devices(self) -> list[Any]:
        if self.context is None:
            return list(kernelevents.block_devices())
        return list(self.context.list_devices(subsystem="block"))

    def next_event(self, timeout: float, block: bool = True) -> Any:
        """The next uevent (its modules loaded already), or None after TIMEOUT seconds
        (at once with block=False when nothing is queued)."""
        if self.rescan:
            return self.rescan.pop(0)
        if self.kernel is not None:
            lost = self.kernel.overflowed
            device = self.kernel.poll(max(timeout, 0.01) if block else 0)
            if device is None and self.kernel.overflowed != lost:
                return self._lost()
        elif self.monitor is not None:
            device = self.monitor.poll(timeout=max(timeout, 0.01) if block else 0)
        else:
            raise RuntimeError("uevents: the listener was closed")
        if device is None:
            return None
        self.events += 1
        modalias = device.properties.get("MODALIAS")
        if modalias and device.action == "add":
            self.loader.load_for_modalias(modalias)
        return device

    def _lost(self) -> Any:
        """The kernel dropped events (its socket buffer was full): load what the devices
        now present need, and report each block device again, as a change."""
        self.coldplug()
        self.rescan = [kernelevents.Event("change", d.properties)
                       for d in kernelevents.block_devices()]
        return self.rescan.pop(0) if self.rescan else None

    def close(self) -> None:
        """Stop listening (and stop udevd) before the hand-over; safe to call again."""
        if self.kernel is not None:
            self.kernel.close()
            self.kernel = None
        self.rescan = []
        self.monitor = None  # libudev closes the netlink socket with the last reference
        if self.udev is not None:
            self.udev.stop()
