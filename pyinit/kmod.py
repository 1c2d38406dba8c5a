"""Kernel modules: finit_module loading from the image's index (pyinit.modindex)."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable

from pyinit import layout, syscalls
from pyinit.modindex import ModuleIndex, kernels_in_image, loaded_modules


class ModuleError(OSError):
    """A module could not be loaded; the message names the module and the reason."""


def running_kernel_index() -> ModuleIndex:
    """The image's index for the running kernel; an image made for another kernel is
    named as such (its modules would not load, and the root would never appear)."""
    kver = os.uname().release
    index = ModuleIndex.load(f"{layout.MODULES_DIR}/{kver}")
    if not index.paths and not index.builtin:
        built_for = [k for k in kernels_in_image() if k != kver]
        if built_for:
            raise ModuleError(2, f"this image was built for {', '.join(built_for)}, the "
                              f"kernel is {kver}: rebuild it with --kver {kver} or boot "
                              "the kernel it was built for")
    return index


def _decompress(path: str) -> bytes:
    """The module decompressed, for a kernel without CONFIG_MODULE_DECOMPRESS. The builder
    stores modules decompressed, except in generic images for kernels that decompress
    them (pyinit.builder.pipeline.add_modules), so images normally never get here; the
    decompressors are imported only when they do."""
    try:
        if path.endswith(".xz"):
            import lzma

            with lzma.open(path) as fh:
                return fh.read()
        if path.endswith(".gz"):
            import gzip

            with gzip.open(path) as gz:
                return gz.read()
    except ImportError as err:
        raise ModuleError(errno.ENOEXEC, f"{path}: the kernel cannot decompress this module "
                          f"and this image carries no {err.name}: rebuild the image for this "
                          "kernel") from err
    raise ModuleError(
        errno.ENOEXEC,
        f"{path}: the kernel cannot decompress this module and pyinit only unpacks .xz and .gz",
    )


def load_file(path: str, name: str, params: str = "") -> None:
    """Load one module file with finit_module, compressed files handed to the kernel.

    A kernel without CONFIG_MODULE_DECOMPRESS refuses MODULE_INIT_COMPRESSED_FILE; then the
    file is decompressed here into a memfd, which finit_module reads like a file.
    """
    compressed = path.endswith((".xz", ".gz", ".zst"))
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        flags = syscalls.MODULE_INIT_COMPRESSED_FILE if compressed else 0
        try:
            syscalls.finit_module(fd, params, flags, name=name)
            return
        except OSError as err:
            if not compressed or err.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOEXEC):
                raise
    finally:
        os.close(fd)
    memfd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        os.write(memfd, _decompress(path))
        syscalls.finit_module(memfd, params, 0, name=name)
    finally:
        os.close(memfd)


class Loader:
    """Loads modules once each, dependencies first, honouring the blacklist."""

    def __init__(self, index: ModuleIndex, blacklist: frozenset[str] = frozenset(),
                 on_event: Callable[..., None] | None = None) -> None:
        self.index = index
        self.blacklist = blacklist
        self.on_event = on_event
        self.loaded: set[str] = loaded_modules()
        self.failed: dict[str, str] = {}
        self.loaded_here: list[str] = []

    def _emit(self, event: str, **fields: object) -> None:
        if self.on_event is not None:
            self.on_event(event, **fields)

    def load(self, name: str, reason: str = "") -> bool:
        """Load NAME (module or alias) with its closure; True when it is in the kernel now."""
        name = self.index.resolve(name)
        if name in self.loaded or name in self.index.builtin:
            return True
        if name in self.blacklist:
            self._emit("module_blacklisted", module=name, reason=reason)
            return False
        if name not in self.index.paths:
            raise ModuleError(
                errno.ENOENT,
                f"module {name} ({reason or 'requested'}): not in this image's module index "
                f"({len(self.index.paths)} modules in {self.index.base})",
            )
        pre, post = self.index.softdeps.get(name, ([], []))
        for soft in pre:
            self._load_optional(soft, f"pre-softdep of {name}")
        for dep in [*self.index.deps.get(name, []), name]:
            if dep in self.loaded or dep in self.index.builtin:
                continue
            if dep in self.blacklist:
                self._emit("module_blacklisted", module=dep, reason=f"needed by {name}")
                return False
            path = os.path.join(self.index.base, self.index.paths[dep])
            try:
                load_file(path, dep)
            except OSError as err:
                if err.errno != errno.EEXIST:
                    self.failed[dep] = str(err)
                    raise ModuleError(
                        err.errno or errno.EIO, f"module {dep} ({path}): {err.strerror}"
                    ) from err
            self.loaded.add(dep)
            self.loaded_here.append(dep)
            self._emit("module_loaded", module=dep, reason=reason if dep == name else name)
        for soft in post:
            self._load_optional(soft, f"post-softdep of {name}")
        return True

    def _load_optional(self, name: str, reason: str) -> None:
        if self.index.resolve(name) in self.index.paths:
            try:
                self.load(name, reason)
            except ModuleError as err:
                self._emit("module_failed", module=name, error=str(err))

    def load_optional_alias(self, alias: str, reason: str) -> bool:
        """Load what ALIAS names when the image has it; False (and nothing logged as an
        error) when it does not: the caller's next step reports the real problem."""
        names = self.index.lookup(alias)
        for name in names:
            try:
                self.load(name, reason)
            except ModuleError as err:
                self._emit("module_failed", module=name, error=str(err))
                return False
        return bool(names)

    def load_for_modalias(self, modalias: str) -> list[str]:
        """Load every module of the image matching a device's MODALIAS; failures are logged."""
        done = []
        for name in self.index.lookup(modalias):
            if name in self.loaded or name in self.failed:
                continue
            try:
                if self.load(name, reason=modalias):
                    done.append(name)
            except ModuleError as err:
                self._emit("module_failed", module=name, error=str(err))
        return done

    def load_all(self, names: Iterable[str], reason: str) -> None:
        for name in names:
            self.load(name, reason)
