"""The kernel's uevents without udev: its netlink socket and /sys/class/block, read directly.

Without udevd, pyudev would only wrap these two in libudev (loaded through ctypes, ~100
function prototypes set up) and bring subprocess, threading and datetime with it: about 25
modules under TCG. A plain root's boot reads the socket itself; with udevd, uevents.Hotplug
uses pyudev for udev's processed events and database.

An Event has the attributes of pyudev's Device that the boot reads (action, subsystem,
device_node, device_type, device_number, sys_path, sys_name, properties), so the discovery
takes either.
"""

from __future__ import annotations

import _socket
import errno
import os
import time
from collections.abc import Mapping

NETLINK_KOBJECT_UEVENT = 15
KERNEL_GROUP = 1  # the kernel's multicast group; udevd re-sends processed events on 2
SO_RCVBUFFORCE = 33  # root may exceed rmem_max: a coldplug sends hundreds of events at once
RECEIVE_BUFFER = 16 << 20
MESSAGE_MAX = 16 << 10  # a uevent's environment is at most 2 KiB (UEVENT_BUFFER_SIZE)
SYS_BLOCK = "/sys/class/block"


class Event:
    """One uevent (or one block device enumerated from sysfs, whose action is None)."""

    __slots__ = ("action", "properties")

    def __init__(self, action: str | None, properties: Mapping[str, str]) -> None:
        self.action = action
        self.properties = dict(properties)

    @property
    def subsystem(self) -> str | None:
        return self.properties.get("SUBSYSTEM")

    @property
    def device_node(self) -> str | None:
        name = self.properties.get("DEVNAME")
        return None if not name else name if name.startswith("/") else "/dev/" + name

    @property
    def device_type(self) -> str | None:
        return self.properties.get("DEVTYPE")

    @property
    def device_number(self) -> int:
        try:
            return os.makedev(int(self.properties["MAJOR"]), int(self.properties["MINOR"]))
        except (KeyError, ValueError):
            return 0

    @property
    def sys_path(self) -> str:
        return "/sys" + self.properties.get("DEVPATH", "")

    @property
    def sys_name(self) -> str:
        return os.path.basename(self.properties.get("DEVPATH", ""))

    def __repr__(self) -> str:
        return f"Event({self.action!r}, {self.properties.get('DEVPATH')!r})"


def parse(message: bytes) -> Event | None:
    """A kernel uevent datagram ("ACTION@DEVPATH" and NUL-separated KEY=VALUE pairs), or
    None for anything else (udev's "libudev" messages, a header without its ACTION)."""
    fields = message.split(b"\0")
    head = fields[0].decode(errors="replace")
    if "@" not in head or head.startswith("libudev"):
        return None
    properties: dict[str, str] = {}
    for field in fields[1:]:
        key, sep, value = field.decode(errors="replace").partition("=")
        if sep:
            properties[key] = value
    action = properties.get("ACTION")
    if not action or "DEVPATH" not in properties:
        return None
    return Event(action, properties)


class Monitor:
    """The kernel's uevent socket, bound before coldplug so that no event falls in between.
    Raises OSError (named) when the kernel refuses the socket."""

    def __init__(self) -> None:
        try:
            sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_DGRAM,
                                  NETLINK_KOBJECT_UEVENT)
        except OSError as err:
            raise OSError(err.errno, f"uevents: expected a NETLINK_KOBJECT_UEVENT socket, "
                                     f"the kernel answered: {err.strerror}") from err
        try:
            try:
                sock.setsockopt(_socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
            except OSError:  # without CAP_NET_ADMIN: as large as rmem_max allows
                sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_RCVBUF, RECEIVE_BUFFER)
            sock.bind((0, KERNEL_GROUP))
        except OSError as err:
            sock.close()
            raise OSError(err.errno, f"uevents: expected to join the kernel's uevent group, "
                                     f"the kernel answered: {err.strerror}") from err
        self.sock: _socket.socket | None = sock
        self.overflowed = 0  # times the kernel dropped events for a full buffer

    def poll(self, timeout: float) -> Event | None:
        """The next kernel uevent, or None after TIMEOUT seconds (0: only what is queued).
        Datagrams from user space (a netlink sender whose port is not 0) are ignored. A
        full buffer (ENOBUFS) is counted in ``overflowed`` and returns None: the caller
        rescans what it lost."""
        if self.sock is None:
            raise RuntimeError("uevents: the kernel's socket was closed")
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            self.sock.settimeout(max(left, 0.0))  # 0: non-blocking
            try:
                message, sender = self.sock.recvfrom(MESSAGE_MAX)
            except (TimeoutError, BlockingIOError):
                return None
            except OSError as err:
                if err.errno == errno.ENOBUFS:
                    self.overflowed += 1
                    return None
                raise
            if sender[0] != 0:
                continue  # not from the kernel
            event = parse(message)
            if event is not None:
                return event

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def block_devices(sys_block: str | None = None) -> list[Event]:
    """Every block device the kernel has now, from its uevent file in sysfs (an Event whose
    action is None, as pyudev's enumeration gives). Devices gone while reading are skipped."""
    sys_block = sys_block or SYS_BLOCK
    found = []
    try:
        names = sorted(os.listdir(sys_block))
    except FileNotFoundError:
        return []
    for name in names:
        path = os.path.realpath(os.path.join(sys_block, name))
        try:
            with open(os.path.join(path, "uevent"), encoding="utf-8", errors="replace") as fh:
                lines = fh.read().splitlines()
        except OSError:
            continue
        properties = dict(line.partition("=")[::2] for line in lines if "=" in line)
        properties["SUBSYSTEM"] = "block"
        properties["DEVPATH"] = path.removeprefix("/sys")
        found.append(Event(None, properties))
    return found
