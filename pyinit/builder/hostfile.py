"""Host files the builder reads, which must be regular files: a FIFO blocks the open or the
read forever, /dev/zero never ends. Each file is opened without blocking and checked with
fstat on that same descriptor, so nothing can swap it between the check and the read."""

from __future__ import annotations

import os
import stat

_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a directory"}


class HostFileError(ValueError):
    """Not a regular file; the message says what it is (the caller names the path)."""

    def __init__(self, found: str) -> None:
        super().__init__(f"expected a regular file, found {found}")
        self.found = found


def kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "a special file")


def _open(path: str) -> tuple[int, os.stat_result]:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise HostFileError(kind(st.st_mode))
    return fd, st


def stat_regular(path: str) -> os.stat_result:
    """PATH's stat (symlinks followed) when it is a regular file; HostFileError otherwise,
    OSError when it cannot be opened."""
    fd, st = _open(path)
    os.close(fd)
    return st


def read_regular(path: str) -> tuple[os.stat_result, bytes]:
    """(stat, content) of regular file PATH; HostFileError or OSError as stat_regular."""
    fd, st = _open(path)
    with os.fdopen(fd, "rb") as fh:
        return st, fh.read()
