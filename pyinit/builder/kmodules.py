"""Kernel modules for the image: modules.dep/alias/softdep/builtin (and the aliases of
built-in modules, from modules.builtin.modinfo) read at build time, the closure of what
was asked for, and the compact index the init reads at boot."""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field

from pyinit import modindex


class ModulesError(ValueError):
    """A module directory or a requested module is missing or unreadable."""


def _norm(name: str) -> str:
    return name.replace("-", "_")


def module_name(path: str) -> str:
    base = os.path.basename(path)
    for ext in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(ext):
            return _norm(base[: -len(ext)])
    raise ModulesError(f"{path}: expected a .ko, .ko.xz, .ko.zst or .ko.gz file")


@dataclass
class ModuleTree:
    """One kernel's modules directory (/lib/modules/KVER) after depmod."""

    base: str
    paths: dict[str, str] = field(default_factory=dict)
    deps: dict[str, list[str]] = field(default_factory=dict)
    aliases: list[tuple[str, str]] = field(default_factory=list)
    softdeps: dict[str, tuple[list[str], list[str]]] = field(default_factory=dict)
    builtin: set[str] = field(default_factory=set)
    builtin_aliases: list[tuple[str, str]] = field(default_factory=list)  # fs-ext4 -> ext4

    @classmethod
    def read(cls, base: str) -> ModuleTree:
        dep_file = os.path.join(base, "modules.dep")
        if not os.path.isfile(dep_file):
            raise ModulesError(f"{dep_file}: expected depmod's modules.dep, found no file "
                               f"(run depmod -b BASE KVER on the tree)")
        tree = cls(base)
        with open(dep_file, encoding="utf-8") as fh:
            for line in fh:
                target, _, deps = line.partition(":")
                if not target:
                    continue
                name = module_name(target)
                tree.paths[name] = target.strip()
                # modules.dep lists the closure with the deepest last; load in reverse.
                tree.deps[name] = [module_name(d) for d in reversed(deps.split())]
        for line in _lines(os.path.join(base, "modules.alias")):
            parts = line.split()
            if len(parts) == 3 and parts[0] == "alias":
                tree.aliases.append((parts[1], _norm(parts[2])))
        for line in _lines(os.path.join(base, "modules.softdep")):
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "softdep":
                pre: list[str] = []
                post: list[str] = []
                current = pre
                for word in parts[2:]:
                    if word == "pre:":
                        current = pre
                    elif word == "post:":
                        current = post
                    else:
                        current.append(_norm(word))
                tree.softdeps[_norm(parts[1])] = (pre, post)
        builtin_file = os.path.join(base, "modules.builtin")
        if not os.path.isfile(builtin_file):
            raise ModulesError(f"{builtin_file}: expected depmod's list of built-in modules "
                               "(installed with the kernel's modules), found no file")
        for line in _lines(builtin_file):
            tree.builtin.add(module_name(line.strip()))
        tree.builtin_aliases = _builtin_aliases(os.path.join(base, "modules.builtin.modinfo"))
        return tree

    def resolve(self, name: str) -> list[str]:
        """A module name or an alias pattern's subject -> module names."""
        norm = _norm(name)
        if norm in self.paths or norm in self.builtin:
            return [norm]
        found = [mod for pattern, mod in (*self.aliases, *self.builtin_aliases)
                 if fnmatch.fnmatchcase(name, pattern)]
        return list(dict.fromkeys(found))

    def closure(self, names: list[str]) -> list[str]:
        """Every module needed to load NAMES: hard and soft dependencies; builtins dropped."""
        result: dict[str, None] = {}
        missing = []
        todo = list(names)
        while todo:
            name = todo.pop()
            resolved = self.resolve(name)
            if not resolved:
                missing.append(name)
                continue
            for mod in resolved:
                if mod in result or mod in self.builtin:
                    continue
                result[mod] = None
                todo.extend(self.deps.get(mod, []))
                pre, post = self.softdeps.get(mod, ([], []))
                todo.extend(m for m in pre + post if self.resolve(m))
        if missing:
            raise ModulesError(f"modules not found in {self.base}: {', '.join(sorted(missing))} "
                               f"(expected a module name or alias from modules.dep/alias, "
                               f"{len(self.paths)} modules there)")
        return sorted(result)

    def index_text(self, kver: str, modules: list[str]) -> str:
        """The init's index for MODULES: their deps, aliases, softdeps, and all builtins."""
        paths = {mod: self.paths[mod] for mod in modules}
        text = modindex.format_index(kver, paths, self.deps, self.aliases, self.softdeps,
                                     self.builtin)
        # The names of built-in modules (fs-ext4, crypto-sha256), so the init resolves what
        # it asks for by name (fs-TYPE for the root) to a builtin. Device patterns (pci:...)
        # are left out: a driver built in needs no loading, and each pattern costs the init
        # a regular expression at start.
        named = [(alias, mod) for alias, mod in self.builtin_aliases
                 if mod in self.builtin and not any(c in alias for c in ":*?[")]
        return text + "".join(f"alias\t{alias}\t{mod}\n" for alias, mod in named)


def _builtin_aliases(path: str) -> list[tuple[str, str]]:
    """(alias, module) pairs of built-in modules from modules.builtin.modinfo: NUL-separated
    ``module.key=value`` records (kernels before 5.2 have no such file: none then)."""
    try:
        with open(path, "rb") as fh:
            records = fh.read().split(b"\0")
    except FileNotFoundError:
        return []
    found = []
    for record in records:
        key, sep, value = record.decode(errors="replace").partition("=")
        module, dot, what = key.partition(".")
        if sep and dot and what == "alias" and value:
            found.append((value, _norm(module)))
    return found


def _lines(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as fh:
            return [line for line in fh.read().splitlines() if line and not line.startswith("#")]
    except FileNotFoundError:
        return []


