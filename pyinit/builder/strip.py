"""Debug information out of the ELF files the image carries (binutils' strip, on a copy).

Strip results are cached by the file's identity (path, size, mtime, inode), so rebuilding an
image for the next kernel costs no strip runs. Without binutils the files go in as they are.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile

from pyinit.builder import output

CACHE = os.path.join(os.environ.get("PYINIT_CACHE", os.path.expanduser("~/.cache/pyinit")),
                     "stripped")


class Stripper:
    def __init__(self, cache: str = CACHE) -> None:
        self.tool = shutil.which("strip")
        self.cache = cache
        self.saved = 0

    def data(self, path: str) -> bytes:
        """The bytes to ship for ELF file PATH: stripped of what the loader never reads."""
        with open(path, "rb") as fh:
            original = fh.read()
        if self.tool is None:
            return original
        st = os.stat(path)
        key = hashlib.sha256(
            f"{os.path.realpath(path)}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}".encode()
        ).hexdigest()
        cached = os.path.join(self.cache, key)
        try:
            with open(cached, "rb") as fh:
                stripped = fh.read()
        except FileNotFoundError:
            stripped = self._strip(path) or original
            os.makedirs(self.cache, exist_ok=True)
            output.replace_file(cached, stripped)
        self.saved += len(original) - len(stripped)
        return stripped

    def _strip(self, path: str) -> bytes | None:
        assert self.tool is not None
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "stripped")
            done = subprocess.run([self.tool, "--strip-unneeded", "-o", out, path],
                                  capture_output=True, check=False)
            if done.returncode != 0:
                return None  # not a file strip understands: ship it unchanged
            with open(out, "rb") as fh:
                return fh.read()
