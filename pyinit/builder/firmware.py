"""Firmware and early microcode for the image.

Firmware: the files each module names in its .modinfo ``firmware=`` entries, taken from
/lib/firmware when the host has them (also in their .xz/.zst forms). Early microcode: the
kernel reads kernel/x86/microcode/{GenuineIntel,AuthenticAMD}.bin from an uncompressed cpio
placed before the main archive.
"""

from __future__ import annotations

import gzip
import io
import lzma
import os
import stat
import struct

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from pyinit.builder import cpio

FIRMWARE_DIR = "/lib/firmware"
INTEL_UCODE = "/lib/firmware/intel-ucode"
AMD_UCODE = "/lib/firmware/amd-ucode"


class ModuleFileError(ValueError):
    """A module file cannot be read or decompressed; the message names it."""


def module_bytes(path: str) -> bytes:
    """The uncompressed bytes of module file PATH (.ko, .ko.xz, .ko.gz or .ko.zst)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as err:
        raise ModuleFileError(f"{path}: expected a readable kernel module, found: "
                              f"{err.strerror}") from err
    fmt = next((f for f in ("xz", "gz", "zst") if path.endswith("." + f)), None)
    if fmt is None:
        return data
    if fmt == "zst":
        import zstandard
    try:
        if fmt == "xz":
            return lzma.decompress(data)
        if fmt == "gz":
            return gzip.decompress(data)
        zobj = zstandard.ZstdDecompressor().decompressobj()
        out = bytes(zobj.decompress(data))
        if not getattr(zobj, "eof", True):  # zstandard versions without .eof: not checked
            raise EOFError("the zstd stream ends early")
        return out
    except Exception as err:  # lzma.LZMAError, EOFError, gzip.BadGzipFile, zstandard.ZstdError
        raise ModuleFileError(f"{path}: expected a {fmt}-compressed kernel module, found: "
                              f"{err}") from err


def modinfo(path: str) -> dict[str, list[str]]:
    """The .modinfo key=value entries of a module file (compressed or not)."""
    data = module_bytes(path)
    try:
        elf = ELFFile(io.BytesIO(data))
        section = elf.get_section_by_name(".modinfo")
        raw = b"" if section is None else section.data()
    except (ELFError, ValueError, IndexError, KeyError, TypeError, struct.error) as err:
        raise ModuleFileError(f"{path}: expected a kernel module (ELF), found: {err}") from err
    info: dict[str, list[str]] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.decode(errors="replace").partition("=")
        if sep:
            info.setdefault(key, []).append(value)
    return info


def firmware_files(names: list[str], root: str = FIRMWARE_DIR) -> tuple[list[str], list[str]]:
    """(host files found, names missing) for firmware NAMES."""
    found, missing = [], []
    for name in dict.fromkeys(names):
        for candidate in (name, name + ".xz", name + ".zst"):
            path = os.path.join(root, candidate)
            if os.path.isfile(path):
                found.append(path)
                break
        else:
            missing.append(name)
    return found, missing


def microcode_archive(intel: str = INTEL_UCODE, amd: str = AMD_UCODE) -> bytes:
    """The early (uncompressed) cpio with every microcode file the host has; b"" if none."""
    blobs = {}
    for vendor, directory, pattern in (("GenuineIntel", intel, ""), ("AuthenticAMD", amd, ".bin")):
        try:
            names = sorted(n for n in os.listdir(directory) if n.endswith(pattern))
        except OSError:
            continue
        chunks = []
        for name in names:
            with open(os.path.join(directory, name), "rb") as fh:
                chunks.append(fh.read())
        data = b"".join(chunks)
        if data:
            blobs[vendor] = data
    if not blobs:
        return b""
    entries = [cpio.Entry(d, stat.S_IFDIR | 0o755)
               for d in ("kernel", "kernel/x86", "kernel/x86/microcode")]
    entries += [cpio.Entry(f"kernel/x86/microcode/{vendor}.bin", stat.S_IFREG | 0o644, data)
                for vendor, data in blobs.items()]
    out = io.BytesIO()
    cpio.write(out, entries)
    return out.getvalue()
