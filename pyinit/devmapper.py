"""The device-mapper's ioctls (linux/dm-ioctl.h), as thin typed calls that raise DMError.

What creates a mapped device without a tool: DM_DEV_CREATE, DM_TABLE_LOAD, DM_DEV_SUSPEND
(to resume), DM_TABLE_STATUS, DM_DEV_REMOVE. LUKS and LVM keep their own tools
(cryptsetup, lvm), which make their devices through libdevmapper; a feature that maps a
device itself (dm-verity) uses this module, and so would any later one.

The kernel makes /dev/dm-N in devtmpfs; /dev/mapper/NAME is udev's, so node() makes it
when nothing else has.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from typing import NamedTuple

CONTROL = "/dev/mapper/control"
VERSION = (4, 0, 0)  # the interface this code speaks; the kernel answers with its own
# struct dm_ioctl: version[3], data_size, data_start, target_count, open_count, flags,
# event_nr, padding, dev, name[128], uuid[129], data[7]
HEADER = struct.Struct("=3IIIIiIIIQ128s129s7x")
# struct dm_target_spec: sector_start, length, status, next, target_type[16]
TARGET = struct.Struct("=QQiI16s")
READONLY_FLAG = 1 << 0
SUSPEND_FLAG = 1 << 1
STATUS_TABLE_FLAG = 1 << 4  # DM_TABLE_STATUS: the table instead of the status
BUFFER_FULL_FLAG = 1 << 8
DEV_CREATE, DEV_REMOVE, DEV_SUSPEND, TABLE_LOAD, TABLE_STATUS = 3, 4, 6, 9, 12
BUFFER = 16384  # what an answer fits in; the kernel says BUFFER_FULL when it does not


def request_code(number: int) -> int:
    """_IOWR(DM_IOCTL, NUMBER, struct dm_ioctl) in the generic encoding (x86, arm64)."""
    return (3 << 30) | (HEADER.size << 16) | (0xFD << 8) | number


class DMError(OSError):
    """A device-mapper call failed; the message names the call, the device and the errno."""


class Target(NamedTuple):
    start: int  # in 512-byte sectors
    length: int  # in 512-byte sectors
    kind: str  # the target type: verity, linear, crypt, ...
    params: str


class Answer(NamedTuple):
    flags: int
    dev: int  # the kernel's encoding of (major, minor), as os.major() reads it
    targets: int  # how many target specs the data area holds
    data: bytes  # the data area


def _call(number: int, what: str, name: str, *, uuid: str = "", flags: int = 0,
          targets: tuple[Target, ...] = (), control: str = CONTROL) -> Answer:
    """One ioctl on CONTROL; returns the kernel's answer."""
    payload = b"".join(_pack_target(t) for t in targets)
    size = max(BUFFER, HEADER.size + len(payload))
    for _attempt in range(4):
        buffer = bytearray(size)
        HEADER.pack_into(buffer, 0, *VERSION, size, HEADER.size, len(targets), 0, flags, 0, 0,
                         0, name.encode(), uuid.encode())
        buffer[HEADER.size:HEADER.size + len(payload)] = payload
        try:
            fd = os.open(control, os.O_RDWR | os.O_CLOEXEC)
        except OSError as err:
            raise DMError(err.errno, f"device-mapper {what} {name}: cannot open {control}: "
                          f"{os.strerror(err.errno or 0)} (is dm_mod loaded?)") from err
        try:
            fcntl.ioctl(fd, request_code(number), buffer, True)
        except OSError as err:
            raise DMError(err.errno, f"device-mapper {what} {name}: "
                          f"{os.strerror(err.errno or 0)}") from err
        finally:
            os.close(fd)
        fields = HEADER.unpack_from(buffer, 0)
        if not fields[7] & BUFFER_FULL_FLAG:
            return Answer(fields[7], fields[10], fields[5], bytes(buffer[fields[4]:fields[3]]))
        size *= 4
    raise DMError(errno.ENOBUFS, f"device-mapper {what} {name}: the answer does not fit in "
                  f"{size // 4} bytes")


def _pack_target(target: Target) -> bytes:
    params = target.params.encode() + b"\0"
    params += b"\0" * (-(TARGET.size + len(params)) % 8)  # each spec starts 8-aligned
    return TARGET.pack(target.start, target.length, 0, TARGET.size + len(params),
                       target.kind.encode()) + params


def create(name: str, uuid: str, control: str = CONTROL) -> tuple[int, int]:
    """A new mapped device with no table; returns its (major, minor)."""
    dev = _call(DEV_CREATE, "create", name, uuid=uuid, control=control).dev
    return os.major(dev), os.minor(dev)


def load(name: str, targets: tuple[Target, ...], read_only: bool,
         control: str = CONTROL) -> None:
    """Load TARGETS as NAME's inactive table (the kernel checks them here: a verity
    target's signature, its devices' sizes)."""
    _call(TABLE_LOAD, "table load", name, targets=targets,
          flags=READONLY_FLAG if read_only else 0, control=control)


def resume(name: str, control: str = CONTROL) -> None:
    """Make the loaded table live (DM_DEV_SUSPEND without the suspend flag)."""
    _call(DEV_SUSPEND, "resume", name, control=control)


def remove(name: str, control: str = CONTROL) -> None:
    _call(DEV_REMOVE, "remove", name, control=control)


def status(name: str, table: bool = False, control: str = CONTROL) -> list[Target]:
    """Each target's status line (verity: V verified, C corrupted), or with TABLE its
    table line."""
    answer = _call(TABLE_STATUS, "status", name, flags=STATUS_TABLE_FLAG if table else 0,
                   control=control)
    found: list[Target] = []
    offset, data = 0, answer.data
    for _index in range(answer.targets):
        if offset + TARGET.size > len(data):
            raise DMError(errno.EPROTO, f"device-mapper status {name}: the kernel's answer "
                          f"ends inside target {len(found)} of {answer.targets}")
        start, length, _status, following, kind = TARGET.unpack_from(data, offset)
        text = data[offset + TARGET.size:].split(b"\0", 1)[0]
        found.append(Target(start, length, kind.rstrip(b"\0").decode(), text.decode()))
        offset = following  # on the way out, from the start of the data area
    return found


def node(name: str, devnum: tuple[int, int], directory: str = "/dev/mapper") -> str:
    """DIRECTORY/NAME for the device, made (as libdevmapper does without udev) unless it
    is there already; returns its path."""
    path = os.path.join(directory, name)
    os.makedirs(directory, exist_ok=True)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        os.mknod(path, 0o600 | 0o060000, os.makedev(*devnum))
        return path
    if (os.major(st.st_rdev), os.minor(st.st_rdev)) != devnum:
        raise DMError(errno.EEXIST, f"{path} exists and is not the device "
                      f"{devnum[0]}:{devnum[1]}")
    return path
