"""Compressors for the archive, each reproducible (no names or timestamps in headers), and
detection of a compressed stream by its magic bytes."""

from __future__ import annotations

import gzip
import lzma
import zlib

FORMATS = ("zstd", "gzip", "xz", "lz4", "none")
KERNEL_CONFIG = {"zstd": "CONFIG_RD_ZSTD", "gzip": "CONFIG_RD_GZIP", "xz": "CONFIG_RD_XZ",
                 "lz4": "CONFIG_RD_LZ4"}
LZ4_LEGACY_MAGIC = b"\x02\x21\x4c\x18"
LZ4_LEGACY_BLOCK = 8 << 20  # the legacy frame's fixed uncompressed block size
_MAGIC = {b"\x28\xb5\x2f\xfd": "zstd", b"\x1f\x8b": "gzip", b"\xfd7zXZ\x00": "xz",
          LZ4_LEGACY_MAGIC: "lz4"}


# The levels each compressor takes (lz4: its high-compression levels; none: no level).
LEVELS = {"zstd": (1, 22), "gzip": (0, 9), "xz": (0, 9), "lz4": (1, 12)}


class CompressError(ValueError):
    """Unknown format, a level it does not take, or a stream that cannot be decompressed."""


def check_level(fmt: str, level: int | None) -> None:
    """Refuse a level FMT does not take (before any work, not deep in its compressor)."""
    if level is None or fmt not in LEVELS:
        return
    low, high = LEVELS[fmt]
    if not low <= level <= high:
        raise CompressError(f"--compress-level {level}: expected {low} to {high} for {fmt}")


def compress(data: bytes, fmt: str, level: int | None = None, *,
             long_distance: bool = False) -> bytes:
    """DATA compressed as the kernel unpacks FMT. LONG_DISTANCE (zstd): long-distance
    matching, for a part compressed once and cached (the runtime's ELF files and zip)."""
    if fmt == "zstd":
        import zstandard

        params = zstandard.ZstdCompressionParameters.from_level(
            level if level is not None else 9, threads=0 if long_distance else -1,
            write_checksum=True,
            write_content_size=True, enable_ldm=long_distance,
        )
        return bytes(zstandard.ZstdCompressor(compression_params=params).compress(data))
    if fmt == "gzip":
        return gzip.compress(data, compresslevel=level if level is not None else 9, mtime=0)
    if fmt == "xz":
        # The kernel's XZ decoder verifies CRC32 only; CRC64 (xz's default) is refused.
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32,
                             filters=[{"id": lzma.FILTER_LZMA2,
                                       "preset": level if level is not None else 6,
                                       "dict_size": 1 << 20}])
    if fmt == "lz4":
        # The kernel unpacks only lz4's legacy frame: magic, then (size, block) pairs.
        import lz4.block

        out = [LZ4_LEGACY_MAGIC]
        for start in range(0, len(data), LZ4_LEGACY_BLOCK):
            block = lz4.block.compress(data[start:start + LZ4_LEGACY_BLOCK], store_size=False,
                                       mode="high_compression",
                                       compression=level if level is not None else 9)
            out += [len(block).to_bytes(4, "little"), block]
        return b"".join(out)
    if fmt == "none":
        return data
    raise CompressError(f"compression {fmt!r}: expected one of {', '.join(FORMATS)}")


def detect(data: bytes) -> str:
    for magic, fmt in _MAGIC.items():
        if data.startswith(magic):
            return fmt
    if data.startswith(b"070701"):
        return "none"
    raise CompressError(f"unknown stream: expected a newc cpio or zstd/gzip/xz data, found "
                        f"{data[:8].hex()}")


def decompress(data: bytes) -> bytes:
    """The first compressed stream of DATA, uncompressed."""
    return decompress_one(data)[0]


def decompress_one(data: bytes) -> tuple[bytes, int]:
    """Uncompress the stream at the start of DATA; returns it and how many bytes follow it
    (a second archive may be concatenated, as the kernel allows)."""
    fmt = detect(data)
    try:
        if fmt == "zstd":
            import zstandard

            zobj = zstandard.ZstdDecompressor().decompressobj()
            return bytes(zobj.decompress(data)), len(zobj.unused_data)
        if fmt == "gzip":
            gobj = zlib.decompressobj(wbits=31)
            return gobj.decompress(data), len(gobj.unused_data)
        if fmt == "xz":
            xobj = lzma.LZMADecompressor()
            return xobj.decompress(data), len(xobj.unused_data)
        if fmt == "lz4":
            return _lz4_legacy(data)
    except ImportError:
        raise  # a package not installed is not a corrupt stream
    except (OSError, lzma.LZMAError, EOFError, zlib.error) as err:
        raise CompressError(f"corrupt {fmt} stream: {err}") from err
    except Exception as err:  # zstandard.ZstdError, lz4's LZ4BlockError
        raise CompressError(f"corrupt {fmt} stream: {err}") from err
    return data, 0


def _lz4_legacy(data: bytes) -> tuple[bytes, int]:
    import lz4.block

    out = []
    pos = 4
    while pos + 4 <= len(data):
        size = int.from_bytes(data[pos:pos + 4], "little")
        if data[pos:pos + 4] == LZ4_LEGACY_MAGIC or size > len(data) - pos - 4:
            break  # the next archive, or the end
        out.append(lz4.block.decompress(data[pos + 4:pos + 4 + size],
                                        uncompressed_size=LZ4_LEGACY_BLOCK))
        pos += 4 + size
    return b"".join(out), len(data) - pos
