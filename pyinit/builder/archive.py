"""Reading images back: the early uncompressed cpio and each compressed segment after it,
for --list and --extract."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

from pyinit.builder import compress, cpio


def segments(data: bytes) -> Iterator[tuple[str, bytes]]:
    """(format, uncompressed newc bytes) for each archive concatenated in DATA."""
    offset = 0
    while offset < len(data):
        while offset < len(data) and data[offset] == 0:
            offset += 1  # padding between archives
        if offset >= len(data):
            return
        fmt = compress.detect(data[offset:offset + 8])
        if fmt == "none":
            end = offset
            for _entry, end in cpio.read(data, offset):  # noqa: B007 - the last end counts
                pass
            yield fmt, data[offset:end]
            offset = end
        else:
            raw, rest = compress.decompress_one(data[offset:])
            yield fmt, raw
            offset = len(data) - rest


def entries(data: bytes) -> Iterator[tuple[str, cpio.Entry]]:
    for fmt, raw in segments(data):
        for entry, _end in cpio.read(raw):
            if entry.name != cpio.TRAILER:
                yield fmt, entry


def list_lines(data: bytes) -> list[str]:
    lines = []
    for fmt, raw in segments(data):
        lines.append(f"# archive ({fmt}, {len(raw)} bytes unpacked)")
        for entry, _end in cpio.read(raw):
            if entry.name == cpio.TRAILER:
                continue
            target = f" -> {entry.data.decode()}" if stat.S_ISLNK(entry.mode) else ""
            lines.append(f"{stat.filemode(entry.mode)} {len(entry.data):>10} "
                         f"{entry.name}{target}")
    return lines


def extract(data: bytes, directory: str) -> int:
    """Unpack every archive into DIRECTORY (device nodes are skipped); returns the count."""
    count = 0
    root = os.path.realpath(directory)
    links: dict[str, list[str]] = {}  # hard-link groups: the data comes with the last name
    for _fmt, entry in entries(data):
        cpio.check_name(entry.name)
        path = os.path.join(root, entry.name)
        parent = os.path.realpath(os.path.dirname(path))
        if parent != root and not parent.startswith(root + os.sep):
            raise cpio.CpioError(f"{entry.name}: would be written outside {directory}")
        mode = stat.S_IMODE(entry.mode)
        if stat.S_ISDIR(entry.mode):
            os.makedirs(path, exist_ok=True)
            os.chmod(path, mode)
        elif stat.S_ISLNK(entry.mode):
            if os.path.lexists(path):
                os.unlink(path)
            os.symlink(entry.data.decode(), path)
        elif stat.S_ISREG(entry.mode):
            if os.path.lexists(path) and not os.path.isdir(path):
                os.unlink(path)
            with open(path, "wb") as fh:
                fh.write(entry.data)
            os.chmod(path, mode)
            if entry.link:
                links.setdefault(entry.link, []).append(path)
                if entry.data:  # the last name: link the earlier ones to it
                    for earlier in links[entry.link][:-1]:
                        os.unlink(earlier)
                        os.link(path, earlier)
        else:
            continue  # device nodes: the kernel makes them, a user's directory need not
        count += 1
    return count
