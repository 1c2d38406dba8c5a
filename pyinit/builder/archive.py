"""Reading images back: the early uncompressed cpio and each compressed segment after it,
for --list and --extract (which unpacks them: pyinit.builder.extract)."""

from __future__ import annotations

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
            name = _printable(entry.name.encode(errors="surrogateescape"))
            target = f" -> {_printable(entry.data)}" if stat.S_ISLNK(entry.mode) else ""
            lines.append(f"{stat.filemode(entry.mode)} {len(entry.data):>10} {name}{target}")
    return lines


def _printable(raw: bytes) -> str:
    """A name or link target as text that any terminal prints (bytes that are not UTF-8
    and control characters escaped)."""
    text = raw.decode(errors="backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
