"""btrfs: a filesystem over several devices is mounted only once every member is there.

Each btrfs device seen is registered with the kernel through /dev/btrfs-control
(BTRFS_IOC_DEVICES_READY, as udev's btrfs builtin does), which also answers whether all the
members of its filesystem are present; root= matching the members of one filesystem waits
for that. Subvolumes need nothing here: ``rootflags=subvol=NAME`` (or ``subvolid=``) goes to
the mount as it is.
"""

from __future__ import annotations

import fcntl
import os
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pyinit.storage import Env, Needs, StorageError

if TYPE_CHECKING:
    from pyinit.blockdev import BlockDevice

CONTROL = "/dev/btrfs-control"
# struct btrfs_ioctl_vol_args { __s64 fd; char name[4088]; }: 4096 bytes.
VOL_ARGS = struct.Struct("q4088s")
DEVICES_READY = (2 << 30) | (VOL_ARGS.size << 16) | (0x94 << 8) | 39  # _IOR(0x94, 39, ...)
NEEDS = Needs(
    modules=("btrfs",),
    udev_rules=("64-btrfs.rules",),
    python=("pyinit.storage.btrfs",),
)


def check_cmdline(params: Sequence[str]) -> list[str]:
    return []


def devices_ready(node: str, control: str = CONTROL) -> bool:
    """Register NODE with the kernel; whether its filesystem has all its members."""
    args = bytearray(VOL_ARGS.pack(0, node.encode()))
    fd = os.open(control, os.O_RDWR | os.O_CLOEXEC)
    try:
        result = fcntl.ioctl(fd, DEVICES_READY, args)
    except OSError as err:
        raise StorageError(f"{node}: btrfs device scan: {err.strerror}") from err
    finally:
        os.close(fd)
    return int(result) == 0


class Btrfs:
    types = ("btrfs",)

    def __init__(self, env: Env) -> None:
        self.env = env
        self.members: dict[str, list[str]] = {}  # filesystem UUID -> member nodes
        self.complete: set[str] = set()

    def offer(self, dev: BlockDevice) -> bool:
        self.env.load_modules(NEEDS, "btrfs")
        uuid = dev.props.get("ID_FS_UUID", "")
        members = self.members.setdefault(uuid, [])
        if dev.node not in members:
            members.append(dev.node)
        if devices_ready(dev.node):
            self.complete.add(uuid)
        return False

    def degrade(self) -> bool:
        return False

    def ready(self, dev: BlockDevice) -> bool:
        uuid = dev.props.get("ID_FS_UUID", "")
        if dev.fstype != "btrfs" or uuid in self.complete:
            return True
        if devices_ready(dev.node):  # a member may have been registered since
            self.complete.add(uuid)
            return True
        return False

    def picture(self) -> list[str]:
        waiting = [f"{uuid} (members seen: {', '.join(nodes)})"
                   for uuid, nodes in self.members.items() if uuid not in self.complete]
        return ["btrfs filesystems missing members: " + "; ".join(waiting)] if waiting else []


def handler(env: Env) -> Btrfs:
    return Btrfs(env)
