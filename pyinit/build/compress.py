"""Compressors for the archive, each reproducible (no names or timestamps in headers), and
detection of a compressed stream by its magic bytes."""

from __future__ import annotations

import gzip
import lzma

FORMATS = ("zstd", "gzip", "xz", "none")
KERNEL_CONFIG = {"zstd": "CONFIG_RD_ZSTD", "gzip": "CONFIG_RD_GZIP", "xz": "CONFIG_RD_XZ"}
_MAGIC = {b"\x28\xb5\x2f\xfd": "zstd", b"\x1f\x8b": "gzip", b"\xfd7zXZ\x00": "xz"}


class CompressError(ValueError):
    """Unknown format, or a stream that cannot be decompressed."""


def compress(data: bytes, fmt: str, level: int | None = None) -> bytes:
    if fmt == "zstd":
        import zstandard

        params = zstandard.ZstdCompressionParameters.from_level(
            level if level is not None else 9, threads=-1, write_checksum=True,
            write_content_size=True,
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
    fmt = detect(data)
    try:
        if fmt == "zstd":
            import zstandard

            return bytes(zstandard.ZstdDecompressor().decompressobj().decompress(data))
        if fmt == "gzip":
            return gzip.decompress(data)
        if fmt == "xz":
            return lzma.decompress(data)
    except (OSError, lzma.LZMAError, EOFError) as err:
        raise CompressError(f"corrupt {fmt} stream: {err}") from err
    except Exception as err:  # zstandard.ZstdError
        raise CompressError(f"corrupt {fmt} stream: {err}") from err
    return data
