"""Deferred standard-library imports for the boot path.

structlog imports asyncio and uuid at module level and dataclasses imports inspect, but the
boot never calls into them: under qemu TCG those three imports alone cost about 0.5 s of the
initrd phase. Modules named here are found as usual (a missing one still fails at its import
statement) but bound as an empty module that executes on its first attribute access, the
idea of PEP 690 built from importlib's own finders and loaders.

Only modules that no logging, traceback or rescue path touches belong here: one first used
after switch_root would have to be read from the deleted initramfs.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Sequence
from importlib.machinery import ModuleSpec

# Measured with -X importtime in the guest (7.2 kernel, TCG): asyncio 0.31 s (structlog),
# uuid with platform 0.05 s (structlog), inspect with ast and dis 0.08 s (dataclasses),
# tempfile with random and shutil 0.05 s (ctypes.util, for the gcc fallback the image never
# takes), locale 0.02 s (subprocess, for text mode: udevd, before the hand-over only).
DEFERRED = ("asyncio", "inspect", "locale", "shutil", "tempfile", "uuid")


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


class DeferringFinder:
    """A meta-path finder that asks the other finders and defers what they find."""

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
        return None


def install(names: Sequence[str] = DEFERRED) -> DeferringFinder:
    finder = DeferringFinder(names)
    sys.meta_path.insert(0, finder)
    return finder


def pending() -> list[str]:
    """Deferred modules whose body has not run."""
    return sorted(n for n, m in sys.modules.items() if isinstance(m, _Deferred))
