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

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from pyinit.builder import cpio

FIRMWARE_DIR = "/lib/firmware"
INTEL_UCODE = "/lib/firmware/intel-ucode"
AMD_UCODE = "/lib/firmware/amd-ucode"


def module_bytes(path: str) -> bytes:
    with open(path, "rb") as fh:
        data = fh.read()
    if path.endswith(".xz"):
        return lzma.decompress(data)
    if path.endswith(".gz"):
        return gzip.decompress(data)
    if path.endswith(".zst"):
        import zstandard

        return bytes(zstandard.ZstdDecompressor().decompressobj().decompress(data))
    return data


def modinfo(path: str) -> dict[str, list[str]]:
    """The .modinfo key=value entries of a module file (compressed or not)."""
    try:
        elf = ELFFile(io.BytesIO(module_bytes(path)))
        section = elf.get_section_by_name(".modinfo")
    except (ELFError, OSError, lzma.LZMAError) as err:
        raise ValueError(f"{path}: expected a kernel module, found: {err}") from err
    info: dict[str, list[str]] = {}
    if section is None:
        return info
    for item in section.data().split(b"\0"):
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
