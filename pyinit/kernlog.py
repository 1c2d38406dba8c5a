"""The kernel's own words about an attempt: the /dev/kmsg records the kernel itself wrote
(facility 0, never a program's) while a storage tool ran. mdadm says "Invalid argument";
the kernel, one line earlier, says "md: vda does not have a valid v1.2 superblock, not
importing!". A failure quotes the kernel's last few lines beside the tool's.

/dev/kmsg is opened non-blocking and put at its end before the attempt (SEEK_END), so only
what the attempt produced is read; without /dev/kmsg there is nothing to quote.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

KMSG = "/dev/kmsg"
KEEP = 3  # the kernel's last lines quoted
MAX_RECORDS = 10000  # bound on one read-out: the ring holds far fewer
MAX_LINE = 200


def records(fd: int, limit: int = MAX_RECORDS) -> Iterator[bytes]:
    """The records of /dev/kmsg open non-blocking on FD, from its position to the end, one
    read each. A read that fails (EPIPE: records were overwritten while reading) is skipped;
    at most LIMIT reads, so a device that keeps failing cannot hold the caller."""
    for _ in range(limit):
        try:
            record = os.read(fd, 8192)
        except BlockingIOError:
            return  # the end
        except OSError:
            continue
        if not record:
            return
        yield record


def _kernel_message(record: bytes) -> str | None:
    """The message of one record ("PRI,SEQ,USEC,FLAGS;text\\n KEY=value..."), or None when
    a program, not the kernel, wrote it (facility above 0: PRI >= 8)."""
    head, sep, rest = record.partition(b";")
    prio = head.split(b",", 1)[0]
    if not sep or not prio.isdigit() or int(prio) >= 8:
        return None
    text = rest.split(b"\n", 1)[0].decode(errors="replace").strip()
    return text[:MAX_LINE] or None


class Watch:
    """Started before an attempt; lines() then returns what the kernel said since."""

    def __init__(self, path: str = KMSG) -> None:
        self.fd: int | None
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            self.fd = None
            return
        try:
            os.lseek(self.fd, 0, os.SEEK_END)
        except OSError:  # not a kmsg device: nothing can be told apart as new
            self.close()

    def lines(self) -> tuple[str, ...]:
        """The kernel's last KEEP messages since the watch began; closes the watch."""
        if self.fd is None:
            return ()
        try:
            said = [m for m in map(_kernel_message, records(self.fd)) if m is not None]
        finally:
            self.close()
        return tuple(said[-KEEP:])

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def quoted(lines: tuple[str, ...]) -> str:
    """' (the kernel said: "a"; "b")' or nothing."""
    if not lines:
        return ""
    return " (the kernel said: " + "; ".join(f'"{line}"' for line in lines) + ")"
