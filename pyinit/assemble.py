"""Device assembly: every block device that exists or appears is probed once and offered to
the storage handler for its type (LUKS, LVM, mdraid, btrfs), whose new dm and md devices
come round the same loop; the loop ends when root= matches a device that is ready (and the
resume= device, when asked for, is there too).

At 2/3 of rd.timeout the handlers start what can run incomplete (degraded arrays); at the
full timeout the boot fails with the whole picture: the devices seen, and what each handler
still waits for.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pyinit.blockdev import BlockDevice, block_device
from pyinit.match import DiscoveryError, find_root
from pyinit.rootspec import RootSpec
from pyinit.uevents import Hotplug

if TYPE_CHECKING:
    from pyinit.storage import Handler

REPORT_EVERY = 5.0  # seconds between "still waiting" events
RESUME_GRACE = 10.0  # how long the resume device may lag behind the root


def _quiet(*_args: Any, **_fields: Any) -> None:
    return None


class Discovery:
    """Existing block devices first, then uevents until root= matches or time is up."""

    def __init__(self, spec: RootSpec, hotplug: Hotplug, timeout: float,
                 wait_forever: bool = False, emit: Callable[..., None] | None = None,
                 handlers: Sequence[Handler] = (), resume: RootSpec | None = None,
                 warn: Callable[..., None] | None = None,
                 clock: Callable[[], float] = time.monotonic, key: str = "root") -> None:
        self.spec = spec
        self.key = key  # the command-line key that named SPEC, for the messages
        self.hotplug = hotplug
        self.timeout = timeout
        self.wait_forever = wait_forever
        self.emit: Callable[..., None] = emit or _quiet
        self.warn: Callable[..., None] = warn or _quiet
        self.handlers = list(handlers)
        self.by_type = {kind: h for h in self.handlers for kind in h.types}
        self.resume = resume
        self.resume_device: BlockDevice | None = None
        self.devices: dict[str, BlockDevice] = {}
        self.offered: set[tuple[str, str, str]] = set()
        self.clock = clock  # seconds, monotonic (a fake one in the tests)

    def run(self) -> BlockDevice:
        start = self.clock()
        deadline = start + self.timeout
        degrade_at = start + self.timeout * 2 / 3 if self.handlers else float("inf")
        next_report = start + REPORT_EVERY
        resume_deadline: float | None = None
        self._scan()
        found = self._match()
        while True:
            now = self.clock()
            if found is not None:
                found = self._confirm()
            if found is not None:
                if self.resume is None or self.resume_device is not None:
                    return found
                resume_deadline = resume_deadline or min(now + RESUME_GRACE, deadline)
                if now >= resume_deadline:
                    self.warn("resume_device_missing", resume=self.resume.text,
                              waited=round(now - start, 1))
                    self.resume = None
                    return found
            elif not self.wait_forever and now >= deadline:
                raise DiscoveryError(self.not_found_message())
            if now >= degrade_at:
                degrade_at = float("inf")
                if any([h.degrade() for h in self.handlers]):
                    self._scan()
                    found = self._match()
                    continue
            if now >= next_report:
                self.emit("waiting_for_root", root=self.spec.describe(), seen=self.seen_text())
                next_report = now + REPORT_EVERY
            limit = min(next_report, degrade_at, resume_deadline or float("inf"))
            if not self.wait_forever or found is not None:
                limit = min(limit, deadline)
            if self._take(self.hotplug.next_event(max(limit - now, 0.0))):
                found = self._match()

    def _match(self) -> BlockDevice | None:
        """The device root= names, once its handler says it can be used."""
        if self.resume is not None:
            self.resume_device = find_root(self.resume, self.devices)
        found = find_root(self.spec, self.devices)
        if found is None:
            return None
        handler = self.by_type.get(found.fstype)
        return found if handler is None or handler.ready(found) else None

    def _confirm(self) -> BlockDevice | None:
        """Before settling on a match, look at every block device the kernel has right now
        (one module load often creates several disks at once, whose events are still
        queued), so that root= matching two devices is reported, never raced past."""
        while (device := self.hotplug.next_event(0.0, block=False)) is not None:
            self._take(device)
        self._scan()
        return self._match()

    def _scan(self) -> None:
        """Every block device the kernel has now (after a handler made new ones, before
        their events arrive)."""
        for device in self.hotplug.block_devices():
            known = self.devices.get(device.device_node or "")
            if known is not None and known.props:
                continue
            probed = self.hotplug.probed.get(device)
            if probed is not None:
                self._record(probed)  # probed by an earlier discovery, unchanged since
            else:
                self._add(device)

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
        self.hotplug.probed.keep(device, dev)
        self._record(dev)

    def _record(self, dev: BlockDevice) -> None:
        self.devices[dev.node] = dev
        handler = self.by_type.get(dev.fstype)
        key = (dev.node, dev.fstype, dev.props.get("ID_FS_UUID", ""))
        if handler is None or key in self.offered:
            return
        self.offered.add(key)
        if handler.offer(dev):
            self._scan()

    def seen_text(self) -> str:
        if not self.devices:
            return "no block devices"
        return "; ".join(d.summary() for d in sorted(self.devices.values(), key=lambda d: d.node))

    def not_found_message(self) -> str:
        waiting = [line for h in self.handlers for line in h.picture()]
        return (f"no device matched {self.key}={self.spec.text} ({self.spec.describe()}) within "
                f"{self.timeout:g} s; block devices seen: {self.seen_text()}"
                + "".join(f"; {line}" for line in waiting))
