"""The image's module index, ``/lib/modules/KVER/pyinit.index``: its format, written by the
builder and read by the init. Pure Python: the builder uses it without the cffi module.

Tab-separated lines:
``kernel KVER`` (the kernel the image was built for),
``module NAME PATH DEPS`` (DEPS: the whole dependency closure in load order),
``alias PATTERN NAME``, ``softdep NAME PRE POST`` and ``builtin NAME``.
The init never reads modules.alias or modules.dep at boot.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import re
from collections.abc import Iterable, Mapping

from pyinit import layout

INDEX_NAME = "pyinit.index"


class ModuleIndexError(OSError):
    """The index cannot be read; the message names the file and the line."""


def format_index(kver: str, paths: Mapping[str, str], deps: Mapping[str, list[str]],
                 aliases: Iterable[tuple[str, str]],
                 softdeps: Mapping[str, tuple[list[str], list[str]]],
                 builtin: Iterable[str]) -> str:
    """The index text for the modules in PATHS (name -> path relative to the tree)."""
    lines = [f"kernel\t{kver}"]
    for mod in sorted(paths):
        lines.append(f"module\t{mod}\t{paths[mod]}\t{' '.join(deps.get(mod, []))}")
    lines += [f"alias\t{pattern}\t{mod}" for pattern, mod in aliases if mod in paths]
    for mod in sorted(paths):
        if mod in softdeps:
            pre, post = softdeps[mod]
            lines.append(f"softdep\t{mod}\t{' '.join(pre)}\t{' '.join(post)}")
    lines += [f"builtin\t{mod}" for mod in sorted(builtin)]
    return "\n".join(lines) + "\n"


class ModuleIndex:
    """The builder's module index for one kernel: paths, dependencies, soft
    dependencies, aliases and built-in modules."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.kver = ""
        self.paths: dict[str, str] = {}
        self.deps: dict[str, list[str]] = {}
        self.softdeps: dict[str, tuple[list[str], list[str]]] = {}
        self.builtin: set[str] = set()
        self.aliases: list[tuple[str, str]] = []
        self._exact: dict[str, list[str]] = {}
        self._patterns: list[tuple[re.Pattern[str], str]] = []

    @classmethod
    def load(cls, base: str) -> ModuleIndex:
        """Read BASE/pyinit.index; a missing index means an image without modules."""
        index = cls(base)
        try:
            with open(os.path.join(base, INDEX_NAME), encoding="utf-8") as fh:
                lines = fh.read().splitlines()
        except FileNotFoundError:
            return index
        for number, line in enumerate(lines, 1):
            parts = line.split("\t")
            kind = parts[0]
            if kind == "module" and len(parts) == 4:
                index.paths[parts[1]] = parts[2]
                index.deps[parts[1]] = parts[3].split() if parts[3] else []
            elif kind == "alias" and len(parts) == 3:
                index.add_alias(parts[1], parts[2])
            elif kind == "softdep" and len(parts) == 4:
                index.softdeps[parts[1]] = (parts[2].split(), parts[3].split())
            elif kind == "builtin" and len(parts) == 2:
                index.builtin.add(parts[1])
            elif kind == "kernel" and len(parts) == 2:
                index.kver = parts[1]
            elif line:
                raise ModuleIndexError(
                    errno.EINVAL,
                    f"{base}/{INDEX_NAME} line {number}: expected kernel/module/alias/softdep/"
                    f"builtin with its fields, found {line[:60]!r}",
                )
        return index

    def add_alias(self, pattern: str, name: str) -> None:
        self.aliases.append((pattern, name))
        if any(c in pattern for c in "*?["):
            self._patterns.append((re.compile(fnmatch.translate(pattern)), name))
        else:
            self._exact.setdefault(pattern, []).append(name)

    def lookup(self, modalias: str) -> list[str]:
        """Module names whose alias patterns match MODALIAS, in index order, no repeats."""
        found = list(self._exact.get(modalias, ()))
        for regex, name in self._patterns:
            if name not in found and regex.match(modalias):
                found.append(name)
        return found

    def resolve(self, name: str) -> str:
        """A module name or alias -> module name ('-' and '_' are the same in names)."""
        norm = name.replace("-", "_")
        if norm in self.paths or norm in self.builtin:
            return norm
        matches = self.lookup(name)
        return matches[0] if matches else norm


def kernels_in_image(root: str = layout.MODULES_DIR) -> list[str]:
    """The kernel versions this image carries an index for."""
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    return [n for n in names if os.path.exists(os.path.join(root, n, INDEX_NAME))]


def loaded_modules(proc_modules: str = "/proc/modules") -> set[str]:
    """The modules the running kernel has loaded (the init's loader, the builder's
    host-only choice of device-mapper targets)."""
    try:
        with open(proc_modules, encoding="utf-8") as fh:
            return {line.split(" ", 1)[0] for line in fh if line.strip()}
    except FileNotFoundError:
        return set()
