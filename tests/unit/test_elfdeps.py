"""The ELF closure against real binaries, checked against what the dynamic loader itself
resolves (ld.so --list, run here in the test only: the builder never executes binaries)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from pyinit.builder import elfdeps

BINARIES = ["/bin/ls", "/usr/bin/python3.11", "/usr/sbin/mkfs.ext4",
            os.path.realpath(sys.executable)]


def loader_view(path: str) -> set[str]:
    """The real files ld.so maps for PATH."""
    out = subprocess.run(["/lib64/ld-linux-x86-64.so.2", "--list", path], capture_output=True,
                         text=True, check=True).stdout
    files = set()
    for line in out.splitlines():
        m = re.search(r"=> (\S+) \(0x", line) or re.match(r"\s*(/\S+) \(0x", line)
        if m:
            files.add(os.path.realpath(m.group(1)))
    return files


@pytest.mark.parametrize("binary", [b for b in BINARIES if os.path.exists(b)])
def test_closure_matches_the_dynamic_loader(binary: str) -> None:
    closure = {os.path.realpath(p) for p in elfdeps.Resolver().closure([binary])}
    closure.discard(os.path.realpath(binary))
    assert closure == loader_view(binary)


def test_closure_keeps_the_paths_the_loader_asks_for() -> None:
    closure = elfdeps.Resolver().closure(["/bin/ls"])
    info = elfdeps.read_elf("/bin/ls")
    assert info.interpreter == "/lib64/ld-linux-x86-64.so.2"
    assert "/lib64/ld-linux-x86-64.so.2" in closure  # a symlink the image must keep
    assert any(p.endswith("/libc.so.6") for p in closure)


def test_runpath_with_origin_is_followed(tmp_path: object) -> None:
    python = os.path.realpath(sys.executable)
    info = elfdeps.read_elf(python)
    if not (info.runpath or info.rpath):
        pytest.skip(f"{python} has no RUNPATH/RPATH on this machine")
    closure = elfdeps.Resolver().closure([python])
    assert any("libpython" in p for p in closure)


def test_missing_library_names_what_was_searched(tmp_path: os.PathLike[str]) -> None:
    target = os.path.join(str(tmp_path), "ls-copy")
    shutil.copy("/bin/ls", target)
    resolver = elfdeps.Resolver(system_dirs=(str(tmp_path),))
    with pytest.raises(elfdeps.ElfError, match=r"needs libselinux\.so\.1: expected it in one of"):
        resolver.closure([target])


def test_not_an_elf_file(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(str(tmp_path), "script")
    with open(path, "w") as fh:
        fh.write("#!/bin/sh\n")
    assert not elfdeps.is_elf(path)
    with pytest.raises(elfdeps.ElfError, match="expected a readable ELF file"):
        elfdeps.read_elf(path)
