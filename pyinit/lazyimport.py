"""Imports the boot path makes but never uses, bound without running them.

structlog imports asyncio and uuid at module level, dataclasses imports inspect, ctypes.util
imports tempfile and shutil, subprocess imports locale, but the boot never calls into them:
under qemu TCG they cost about 0.5 s of the initrd phase, and 1.2 MB of the image. Each name
in UNUSED or DEFERRED is bound at its import statement as an empty module (the idea of PEP
690, built from importlib's own finders and loaders); its body runs on the first attribute
access.

- UNUSED: no boot, logging, traceback or rescue path uses them. The builder leaves them, and
  everything only they import, out of the image, where the first attribute access raises
  ImportError naming the module.
- DEFERRED: a plain root's successful boot never touches them, but the failure path, the
  rescue console do. The image carries them; they load
  for real when touched.

The unit and VM tests check that none of them has run when the init hands over, and that
each DEFERRED module works when touched.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Sequence
from importlib.machinery import ModuleSpec

# Measured with -X importtime in the guest (7.2 kernel, TCG): asyncio 0.31 s and uuid with
# platform 0.05 s (structlog's async and thread-local APIs, which pyinit does not call);
# inspect with ast and dis 0.08 s (dataclasses, to describe a dataclass without a
# docstring: structlog's have one, which the image keeps); tempfile with random, and
# shutil, 0.05 s (ctypes.util's gcc fallback: pyinit.libfind replaces it); locale 0.02 s
# (subprocess's text mode: pyinit reads its children's output as bytes).
UNUSED = ("asyncio", "inspect", "locale", "shutil", "tempfile", "uuid")
# What structlog imports for features the init does not use (its stdlib integration and
# thread-local API: logging, threading, structlog.stdlib and .threadlocal; TimeStamper's
# datetime; copy, for copying a bound logger), what runs only with a program to run
# (subprocess: fsck, udevd, a shell) or with pyinit.early=1 (threading), and what only the
# failure path and the rescue console use (linecache and textwrap, for tracebacks;
# pyinit.console, with code under it). Measured in the guest (7.2, TCG, with
# -X importtime): datetime 21 ms, subprocess 33 ms, threading 30 ms. structlog's own
# `from X import Y` lines (traceback, pickle, json, contextvars, structlog.dev, .testing,
# .tracebacks) load those modules whatever is done here: structlog's files stay as they are.
DEFERRED = ("copy", "datetime", "linecache", "logging", "pyinit.console", "structlog.stdlib",
            "structlog.threadlocal", "subprocess", "textwrap", "threading")


class _Deferred(types.ModuleType):
    """A module whose body has not run yet; the first missing attribute runs it."""

    def __getattr__(self, attr: str) -> object:
        spec = self.__spec__
        if spec is None or (attr == "__path__" and spec.submodule_search_locations is None):
            raise AttributeError(attr)  # plain modules have no __path__: nothing to load
        module: types.ModuleType = self
        module.__class__ = types.ModuleType
        try:
            spec.loader_state.exec_module(module)
        except BaseException:
            module.__class__ = _Deferred  # a later access tries again and fails the same way
            raise
        return getattr(module, attr)


class _Unused(types.ModuleType):
    """A module this image does not carry: any use names it."""

    def __getattr__(self, attr: str) -> object:
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise ImportError(f"{self.__name__}.{attr}: {self.__name__} is not in this image "
                          f"(the init's dependencies import it, the init never uses it)",
                          name=self.__name__)


class _DeferringLoader:
    def __init__(self, loader: object) -> None:
        self.loader = loader

    def create_module(self, spec: ModuleSpec) -> types.ModuleType | None:
        create = getattr(self.loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module: types.ModuleType) -> None:
        assert module.__spec__ is not None
        module.__spec__.loader_state = self.loader
        module.__class__ = _Deferred


class _UnusedLoader:
    @staticmethod
    def create_module(spec: ModuleSpec) -> types.ModuleType:
        return _Unused(spec.name)

    @staticmethod
    def exec_module(module: types.ModuleType) -> None:
        return None


class DeferringFinder:
    """A meta-path finder for the names given: defers what the other finders find, and
    binds a stand-in for what they do not."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = frozenset(names)

    def find_spec(self, name: str, path: Sequence[str] | None,
                  target: types.ModuleType | None = None) -> ModuleSpec | None:
        if name not in self.names:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec: ModuleSpec | None = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is None or not hasattr(spec.loader, "exec_module"):
                    return spec  # namespace packages and old-style loaders load as usual
                spec.loader = _DeferringLoader(spec.loader)  # type: ignore[assignment]
                return spec
        return ModuleSpec(name, _UnusedLoader())  # type: ignore[arg-type]


def install(names: Sequence[str] = UNUSED + DEFERRED) -> DeferringFinder:
    finder = DeferringFinder(names)
    sys.meta_path.insert(0, finder)
    return finder


def pending() -> list[str]:
    """Bound modules whose body has not run (or that the image does not carry)."""
    return sorted(n for n, m in sys.modules.items() if isinstance(m, _Deferred | _Unused))
