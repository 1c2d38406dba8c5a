"""Loop devices (linux/loop.h), as thin typed calls that raise OSError naming the file.

attach() takes a free device from /dev/loop-control and binds a file to it with
LOOP_CONFIGURE (Linux 5.8), falling back to LOOP_SET_FD + LOOP_SET_STATUS64 where the
kernel does not know it. The device is bound with autoclear: it goes away when its last
user (the mount) lets go, so the caller keeps the returned descriptor open until the
device is mounted.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

CONTROL = "/dev/loop-control"
LOOP_SET_FD, LOOP_CLR_FD, LOOP_SET_STATUS64, LOOP_CONFIGURE = 0x4C00, 0x4C01, 0x4C04, 0x4C0A
LOOP_CTL_GET_FREE = 0x4C82
LO_FLAGS_READ_ONLY, LO_FLAGS_AUTOCLEAR = 1, 4
# struct loop_info64: device, inode, rdevice, offset, sizelimit, number, encrypt_type,
# encrypt_key_size, flags, file_name[64], crypt_name[64], encrypt_key[32], init[2]
INFO64 = struct.Struct("=5Q4I64s64s32s2Q")
# struct loop_config: fd, block_size, info, __reserved[8]
CONFIG = struct.Struct(f"=II{INFO64.size}s64x")


def _info(path: str, read_only: bool) -> bytes:
    flags = LO_FLAGS_AUTOCLEAR | (LO_FLAGS_READ_ONLY if read_only else 0)
    return INFO64.pack(0, 0, 0, 0, 0, 0, 0, 0, flags, os.fsencode(path)[-63:], b"", b"", 0, 0)


def attach(path: str, read_only: bool = True, control: str = CONTROL) -> tuple[str, int]:
    """Bind PATH to a free loop device; returns its node and an open descriptor of it."""
    try:
        ctl = os.open(control, os.O_RDWR | os.O_CLOEXEC)
    except OSError as err:
        raise OSError(err.errno, f"loop {path}: cannot open {control}: "
                      f"{os.strerror(err.errno or 0)} (is the loop module loaded?)") from err
    try:
        number = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
    except OSError as err:
        raise OSError(err.errno, f"loop {path}: no free loop device: "
                      f"{os.strerror(err.errno or 0)}") from err
    finally:
        os.close(ctl)
    node = f"/dev/loop{number}"
    mode = os.O_RDONLY if read_only else os.O_RDWR
    backing = os.open(path, mode | os.O_CLOEXEC)
    try:
        device = os.open(node, mode | os.O_CLOEXEC)
        try:
            _bind(device, backing, path, read_only)
        except BaseException:
            os.close(device)
            raise
    finally:
        os.close(backing)
    return node, device


def _bind(device: int, backing: int, path: str, read_only: bool) -> None:
    info = _info(path, read_only)
    try:
        fcntl.ioctl(device, LOOP_CONFIGURE, CONFIG.pack(backing, 0, info))
        return
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOTTY):
            raise OSError(err.errno, f"loop {path}: LOOP_CONFIGURE: "
                          f"{os.strerror(err.errno or 0)}") from err
    try:  # before Linux 5.8
        fcntl.ioctl(device, LOOP_SET_FD, backing)
    except OSError as err:
        raise OSError(err.errno, f"loop {path}: LOOP_SET_FD: "
                      f"{os.strerror(err.errno or 0)}") from err
    try:
        fcntl.ioctl(device, LOOP_SET_STATUS64, info)
    except OSError as err:
        try:
            fcntl.ioctl(device, LOOP_CLR_FD, 0)
        except OSError:
            pass  # the first error says what went wrong
        raise OSError(err.errno, f"loop {path}: LOOP_SET_STATUS64: "
                      f"{os.strerror(err.errno or 0)}") from err
