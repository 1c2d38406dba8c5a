"""The shared-library closure of ELF files, read from the files themselves (pyelftools).

Nothing is executed (no ldd): DT_NEEDED names are resolved the way ld.so resolves them:
DT_RPATH (when there is no DT_RUNPATH), DT_RUNPATH with $ORIGIN expanded, the directories of
/etc/ld.so.conf, then the default directories. PT_INTERP names the ELF interpreter.
"""

from __future__ import annotations

import functools
import glob
import os
from dataclasses import dataclass, field

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSegment
from elftools.elf.elffile import ELFFile

DEFAULT_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64",
                "/lib", "/usr/lib")


class ElfError(ValueError):
    """An ELF file cannot be read, or one of its libraries cannot be found."""


@dataclass(frozen=True)
class ElfInfo:
    path: str
    machine: str
    elfclass: int
    interpreter: str | None
    needed: tuple[str, ...]
    rpath: tuple[str, ...]
    runpath: tuple[str, ...]


def is_elf(path: str) -> bool:
    """Whether PATH starts as an ELF file does (never blocking on a FIFO)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return os.read(fd, 4) == b"\x7fELF"
    except OSError:
        return False
    finally:
        os.close(fd)


@functools.lru_cache(maxsize=4096)
def read_elf(path: str) -> ElfInfo:
    """The loader-relevant facts of one ELF file, from its program headers (PT_INTERP and
    PT_DYNAMIC): the section table is not needed, and not read."""
    try:
        with open(path, "rb") as fh:
            elf = ELFFile(fh)
            interp = None
            needed: list[str] = []
            rpath: list[str] = []
            runpath: list[str] = []
            for segment in elf.iter_segments():
                if segment["p_type"] == "PT_INTERP":
                    interp = segment.get_interp_name()  # type: ignore[attr-defined]
                elif isinstance(segment, DynamicSegment):
                    for tag in segment.iter_tags():
                        if tag.entry.d_tag == "DT_NEEDED":
                            needed.append(tag.needed)  # type: ignore[attr-defined]
                        elif tag.entry.d_tag == "DT_RPATH":
                            rpath.extend(tag.rpath.split(":"))  # type: ignore[attr-defined]
                        elif tag.entry.d_tag == "DT_RUNPATH":
                            runpath.extend(tag.runpath.split(":"))  # type: ignore[attr-defined]
            return ElfInfo(path, elf["e_machine"], elf.elfclass, interp, tuple(needed),
                           tuple(rpath), tuple(runpath))
    except (OSError, ELFError) as err:
        raise ElfError(f"{path}: expected a readable ELF file, found: {err}") from err


def elf_kind(path: str) -> tuple[int, int] | None:
    """(class, machine) from the ELF header alone; None when PATH is no ELF file."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(20)
    except OSError:
        return None
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    machine = head[18:20] if head[5] == 1 else head[19:17:-1]  # EI_DATA: 1 little, 2 big
    return head[4], int.from_bytes(machine, "little")


def ld_so_conf_dirs(conf: str = "/etc/ld.so.conf") -> list[str]:
    """Directories named in ld.so.conf, following its include lines."""
    dirs: list[str] = []
    try:
        with open(conf, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return dirs
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("include "):
            pattern = line.split(None, 1)[1]
            if not os.path.isabs(pattern):
                pattern = os.path.join(os.path.dirname(conf), pattern)
            for included in sorted(glob.glob(pattern)):
                dirs.extend(ld_so_conf_dirs(included))
        else:
            dirs.append(line)
    return dirs


@dataclass
class Resolver:
    """Resolves DT_NEEDED names to files; the search path is read once."""

    system_dirs: tuple[str, ...] = field(
        default_factory=lambda: tuple(dict.fromkeys([*ld_so_conf_dirs(), *DEFAULT_DIRS]))
    )

    def find(self, name: str, info: ElfInfo) -> str:
        origin = os.path.dirname(os.path.realpath(info.path))
        paths = list(info.rpath) if not info.runpath else []
        paths += list(info.runpath) + list(self.system_dirs)
        for directory in paths:
            directory = directory.replace("$ORIGIN", origin).replace("${ORIGIN}", origin)
            candidate = os.path.join(directory, name)
            if os.path.exists(candidate) and _same_class(candidate, info):
                return candidate
        raise ElfError(f"{info.path} needs {name}: expected it in one of {', '.join(paths)}, "
                       "found it in none")

    def closure(self, roots: list[str]) -> list[str]:
        """ROOTS plus every library they load, and their ELF interpreter; sorted, unique."""
        seen: dict[str, None] = {}
        todo = list(roots)
        while todo:
            path = todo.pop()
            if path in seen:
                continue
            seen[path] = None
            info = read_elf(path)
            if info.interpreter:
                todo.append(info.interpreter)
            todo.extend(self.find(name, info) for name in info.needed)
        return sorted(seen)


def _same_class(path: str, info: ElfInfo) -> bool:
    return elf_kind(path) == elf_kind(info.path)
