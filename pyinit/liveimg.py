"""An image file on a partition as the root, in dracut's grammar (dmsquash-live):
``root=live:DEVSPEC`` names the partition, ``rd.live.dir=`` (default /LiveOS) and
``rd.live.squashimg=`` (default squashfs.img) the file on it, ``rd.live.ram=1`` copies the
file into /run first (the partition may then go away).

The partition is mounted read-only on /run/initramfs/live (dracut's place), which moves
with /run into the real root; the file must be squashfs or erofs. An erofs file is mounted
directly where the kernel can (Linux 6.12's file-backed mounts), anything else through a
read-only loop device (pyinit.loopdev).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Mapping
from typing import NamedTuple

from pyinit import loopdev, mountroot, syscalls
from pyinit.cmdline import FALSE, TRUE
from pyinit.errors import BootError

LIVE = "/run/initramfs/live"
RAM_COPY = "/run/initramfs/squashfs.img"
TYPES = ("squashfs", "erofs")
MODULE = "loop"


class LiveError(BootError, RuntimeError):
    """The image file is missing, not an image, or cannot be mounted."""

    hint = ("check root=live: (the partition), rd.live.dir= and rd.live.squashimg= (the file "
            "on it, default /LiveOS/squashfs.img): the image must be squashfs or erofs")


class Request(NamedTuple):
    directory: str
    image: str
    ram: bool

    @property
    def path(self) -> str:
        return f"{LIVE}/{self.directory.strip('/')}/{self.image}".replace("//", "/")


def request(params: Mapping[str, str | None]) -> Request:
    ram = params.get("rd.live.ram", "0")
    if ram is not None and ram.lower() not in (*TRUE, *FALSE):
        raise LiveError(f"rd.live.ram={ram}: expected 0 or 1")
    directory = params.get("rd.live.dir") or "/LiveOS"
    image = params.get("rd.live.squashimg") or "squashfs.img"
    if "/" in image or image in (".", ".."):
        raise LiveError(f"rd.live.squashimg={image}: expected a file name in rd.live.dir")
    if ".." in directory.split("/"):
        raise LiveError(f"rd.live.dir={directory}: expected a directory on the partition")
    return Request(directory, image, ram is None or ram.lower() in TRUE)


def image_type(path: str) -> str:
    try:
        found = syscalls.probe_block(path).get("TYPE", "")
    except OSError as err:
        raise LiveError(f"{path}: cannot probe the image: {os.strerror(err.errno or 0)}") \
            from err
    if found not in TYPES:
        raise LiveError(f"{path}: expected a squashfs or erofs image, found "
                        f"{found or 'no filesystem'}")
    return found


def copy_to_ram(path: str, target: str = RAM_COPY) -> str:
    """PATH into tmpfs (rd.live.ram=1), written under a temporary name first."""
    partial = target + ".partial"
    try:
        with open(path, "rb") as src, open(partial, "wb") as dst:
            size = os.fstat(src.fileno()).st_size
            done = 0
            while done < size:
                sent = os.sendfile(dst.fileno(), src.fileno(), done, size - done)
                if sent == 0:
                    raise OSError(errno.EIO, f"{path} ended at byte {done} of {size}")
                done += sent
        os.replace(partial, target)
    except OSError as err:
        try:
            os.unlink(partial)
        except OSError:
            pass
        raise LiveError(f"rd.live.ram=1: cannot copy {path} to {target}: "
                        f"{err.strerror or err}") from err
    return target


def mount(asked: Request, partition: str, partition_type: str | None, target: str,
          load_module: Callable[[str], object], load_alias: Callable[[str], object],
          emit: Callable[..., None]) -> None:
    """Mount the partition on LIVE, the image file in it on TARGET (read-only).
    LOAD_MODULE loads a module the image must have (loop), LOAD_ALIAS one it may
    (fs-TYPE: the kernel would ask a /sbin/modprobe the image lacks)."""
    os.makedirs(LIVE, exist_ok=True)
    if partition_type and partition_type not in mountroot.filesystems():
        load_alias(f"fs-{partition_type}")
    try:
        mountroot.mount_root(partition, LIVE, None, partition_type, None, True)
    except mountroot.MountError as err:
        raise LiveError(f"root=live: {err.strerror}") from err
    try:
        path = asked.path
        if not os.path.isfile(path):
            raise LiveError(f"root=live: expected the image {path.removeprefix(LIVE)} on "
                            f"{partition}, found none (rd.live.dir=, rd.live.squashimg=)")
        fstype = image_type(path)
        if fstype not in mountroot.filesystems():
            load_alias(f"fs-{fstype}")
        if asked.ram:
            path = copy_to_ram(path)
        _mount_image(path, fstype, target, load_module, emit, asked, partition)
    except BaseException:
        try:
            syscalls.umount2(LIVE, syscalls.MNT_DETACH)
        except OSError:
            pass  # the first error says what went wrong
        raise


def _mount_image(path: str, fstype: str, target: str, load_module: Callable[[str], object],
                 emit: Callable[..., None], asked: Request, partition: str) -> None:
    os.makedirs(target, exist_ok=True)
    if fstype == "erofs":
        try:
            syscalls.mount(path, target, fstype, syscalls.MS_RDONLY)
            emit("live_mounted", image=path, partition=partition, type=fstype, device="file",
                 ram="yes" if asked.ram else "no")
            return
        except OSError as err:
            if err.errno not in (errno.ENOTBLK, errno.EINVAL):
                raise LiveError(f"cannot mount {path} on {target} type erofs: "
                                f"{os.strerror(err.errno or 0)}") from err
    if not os.path.exists(loopdev.CONTROL):
        load_module(MODULE)
    try:
        node, fd = loopdev.attach(path, read_only=True)
    except OSError as err:
        raise LiveError(err.strerror or str(err)) from err
    try:
        syscalls.mount(node, target, fstype, syscalls.MS_RDONLY)
    except OSError as err:
        raise LiveError(f"cannot mount {path} ({node}) on {target} type {fstype}: "
                        f"{os.strerror(err.errno or 0)}") from err
    finally:
        os.close(fd)  # autoclear: the mount holds the device now
    emit("live_mounted", image=path, partition=partition, type=fstype, device=node,
         ram="yes" if asked.ram else "no")
