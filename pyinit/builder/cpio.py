"""newc ("070701") cpio archives, the format the kernel unpacks, written reproducibly.

Entries are written sorted by name (parents before children), with inode numbers counted
from 1 in that order, uid/gid 0 and one mtime for all, so the same entries always give the
same bytes.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

MAGIC = b"070701"
TRAILER = "TRAILER!!!"


class CpioError(ValueError):
    """An entry cannot be archived, or an archive cannot be read."""


@dataclass(frozen=True)
class Entry:
    """One archive member. ``data`` is the file content or the symlink target."""

    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)
    link: str = ""  # entries sharing a non-empty link are hard links of one file

    @property
    def kind(self) -> str:
        return stat.filemode(self.mode)[0]


def check_name(name: str) -> str:
    """Archive names are relative, without '..', NUL or empty components."""
    if not name or name.startswith("/") or "\0" in name:
        raise CpioError(f"unsafe archive name {name!r}: expected a relative path without NUL")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise CpioError(f"unsafe archive name {name!r}: expected no empty, '.' or '..' parts")
    return name


FIELD_MAX = 0xFFFFFFFF  # each newc header field is 8 hex digits


def _header(name: str, ino: int, mode: int, nlink: int, mtime: int, size: int,
            rdev: tuple[int, int], namesize: int) -> bytes:
    fields = {"ino": ino, "mode": mode, "uid": 0, "gid": 0, "nlink": nlink, "mtime": mtime,
              "filesize": size, "devmajor": 0, "devminor": 0, "rdevmajor": rdev[0],
              "rdevminor": rdev[1], "namesize": namesize, "check": 0}
    for field, value in fields.items():
        if not 0 <= value <= FIELD_MAX:
            raise CpioError(f"{name}: {field} {value} does not fit a newc header: expected "
                            f"0 to {FIELD_MAX} (8 hex digits)")
    return MAGIC + b"".join(b"%08X" % f for f in fields.values())


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def write(out: BinaryIO, entries: Iterable[Entry], mtime: int = 0) -> int:
    """Write ENTRIES (any order) and the trailer to OUT; returns the bytes written."""
    by_name: dict[str, Entry] = {}
    for entry in entries:
        check_name(entry.name)
        if entry.name in by_name and by_name[entry.name] != entry:
            raise CpioError(f"archive name {entry.name!r} given twice with different content")
        by_name[entry.name] = entry
    names = sorted(by_name)
    groups: dict[str, list[str]] = {}
    for name in names:
        if by_name[name].link:
            groups.setdefault(by_name[name].link, []).append(name)
    for link, members in groups.items():
        if len({by_name[n].data for n in members}) != 1:
            raise CpioError(f"hard links {', '.join(members)} ({link}) differ in content")
    inodes: dict[str, int] = {}
    written = 0
    for number, name in enumerate(names, 1):
        entry = by_name[name]
        encoded = name.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(entry.mode) else 1
        data = entry.data
        ino = number
        if entry.link:
            # newc hard links: one inode number, the data only with the last name.
            members = groups[entry.link]
            ino = inodes.setdefault(entry.link, number)
            nlink = len(members)
            if name != members[-1]:
                data = b""
        head = _header(name, ino, entry.mode, nlink, mtime, len(data), entry.rdev,
                       len(encoded))
        chunk = head + encoded + _pad(len(head) + len(encoded)) + data + _pad(len(data))
        out.write(chunk)
        written += len(chunk)
    encoded = TRAILER.encode() + b"\0"
    head = _header(TRAILER, 0, 0, 1, 0, 0, (0, 0), len(encoded))
    tail = head + encoded + _pad(len(head) + len(encoded))
    out.write(tail)
    return written + len(tail)


def read(data: bytes, offset: int = 0) -> Iterator[tuple[Entry, int]]:
    """Entries of one newc archive starting at OFFSET; yields (entry, offset after it).

    Stops after the trailer; the last yielded offset is where the next archive may begin.
    """
    pos = offset
    while True:
        if len(data) < pos + 110:
            raise CpioError(f"offset {pos}: truncated archive (expected a 110-byte header)")
        if data[pos : pos + 6] != MAGIC:
            raise CpioError(f"offset {pos}: expected newc magic 070701, found "
                            f"{data[pos:pos + 6]!r}")
        try:
            fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        except ValueError as err:
            raise CpioError(f"offset {pos}: corrupt newc header") from err
        ino, mode, nlink, size, rmaj, rmin, namesize = (fields[0], fields[1], fields[4],
                                                        fields[6], fields[9], fields[10],
                                                        fields[11])
        name_start = pos + 110
        name = data[name_start : name_start + namesize - 1].decode(errors="surrogateescape")
        body = name_start + namesize
        body += -body % 4
        content = data[body : body + size]
        if len(content) != size:
            raise CpioError(f"{name}: truncated archive (expected {size} bytes)")
        pos = body + size
        pos += -pos % 4
        if name == TRAILER:
            yield Entry(name, 0), pos
            return
        link = f"ino:{ino}" if nlink > 1 and stat.S_ISREG(mode) else ""
        yield Entry(name, mode, content, (rmaj, rmin), link), pos
