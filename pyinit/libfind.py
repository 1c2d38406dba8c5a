"""ctypes.util.find_library for a bare initramfs.

pyudev finds libudev with ctypes.util.find_library, which runs ldconfig, gcc or ld: none of
them is in the image. This finder looks the library up in the library directories the image
actually has, the way the dynamic loader would, and is installed only where the stock one
cannot work: where there is no loader cache for ldconfig -p to print (no image has one), the
stock finder would fall back to running gcc, through tempfile and shutil, which the image
leaves out (pyinit.lazyimport.UNUSED).
"""

from __future__ import annotations

import ctypes.util
import os

LIBRARY_DIRS = (
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
)


def find_in(dirs: tuple[str, ...], name: str) -> str | None:
    """Path of lib<name>.so.N (the soname the loader would use) in the first dir holding it."""
    prefix = f"lib{name}.so"
    for directory in dirs:
        try:
            entries = sorted(os.listdir(directory))
        except OSError:
            continue
        candidates = [e for e in entries if e == prefix or e.startswith(prefix + ".")]
        if candidates:
            # The shortest versioned name is the soname link (libudev.so.1, not .so.1.7.5).
            versioned = [c for c in candidates if c != prefix] or candidates
            return os.path.join(directory, min(versioned, key=len))
    return None


def image_find_library(name: str) -> str | None:
    return find_in(LIBRARY_DIRS, name)


LOADER_CACHE = "/etc/ld.so.cache"


def install() -> None:
    """Use the directory lookup where the stock finder has no loader cache to read."""
    if not os.path.exists(LOADER_CACHE):
        ctypes.util.find_library = image_find_library
