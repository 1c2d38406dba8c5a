"""Where new devices come from: the kernel's uevent netlink socket, or udevd's processed
events when it runs; each new device's modules are loaded as its event arrives."""

from __future__ import annotations

from typing import Any

from pyinit import coldplug, libfind
from pyinit.kmod import Loader
from pyinit.udevd import Udevd


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
        self.monitor: Any = pyudev.Monitor.from_netlink(self.context, source=source)
        self.monitor.start()
        self.events = 0

    def coldplug(self, seen: dict[str, str] | None = None) -> tuple[int, int]:
        return coldplug.coldplug(self.loader, seen=seen)

    def block_devices(self) -> list[Any]:
        return list(self.context.list_devices(subsystem="block"))

    def next_event(self, timeout: float, block: bool = True) -> Any:
        """The next uevent (its modules loaded already), or None after TIMEOUT seconds
        (at once with block=False when nothing is queued)."""
        if self.monitor is None:
            raise RuntimeError("uevents: the listener was closed")
        device = self.monitor.poll(timeout=max(timeout, 0.01) if block else 0)
        if device is None:
            return None
        self.events += 1
        modalias = device.properties.get("MODALIAS")
        if modalias and device.action == "add":
            self.loader.load_for_modalias(modalias)
        return device

    def close(self) -> None:
        """Stop listening (and stop udevd) before the hand-over; safe to call again."""
        self.monitor = None  # libudev closes the netlink socket with the last reference
        if self.udev is not None:
            self.udev.stop()
