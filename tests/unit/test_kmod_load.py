"""Module loading without a kernel: finit_module is replaced by a recorder, so the choice of
flags and the in-Python decompression fallback are checked on real module files."""

from __future__ import annotations

import errno
import lzma
import os
from pathlib import Path

import pytest

from pyinit import kmod, syscalls
from pyinit.builder.kmodules import ModuleTree
from pyinit.modindex import ModuleIndex
from tests.vm.kernels import Kernel


class Recorder:
    def __init__(self, refuse_compressed: int | None = None, fail: dict[str, int] | None = None):
        self.calls: list[tuple[str, int, bytes]] = []
        self.refuse_compressed = refuse_compressed
        self.fail = fail or {}

    def __call__(self, fd: int, params: str = "", flags: int = 0, name: str = "") -> None:
        data = os.pread(fd, 1 << 24, 0)
        if flags & syscalls.MODULE_INIT_COMPRESSED_FILE and self.refuse_compressed:
            raise OSError(self.refuse_compressed, "refused")
        if name in self.fail:
            raise OSError(self.fail[name], os.strerror(self.fail[name]))
        self.calls.append((name, flags, data[:4]))


@pytest.fixture()
def index(kernel7: Kernel, tmp_path: Path) -> ModuleIndex:
    tree = ModuleTree.read(kernel7.moddir)
    modules = tree.closure(["virtio_scsi"])
    (tmp_path / "pyinit.index").write_text(tree.index_text(kernel7.kver, modules))
    loaded = ModuleIndex.load(str(tmp_path))
    loaded.base = kernel7.moddir  # module files from the real tree
    return loaded


def test_compressed_modules_go_to_the_kernel_as_they_are(
        index: ModuleIndex, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder()
    monkeypatch.setattr(syscalls, "finit_module", recorder)
    loader = kmod.Loader(index)
    loader.loaded.clear()
    assert loader.load("virtio_scsi", reason="test")
    assert [c[0] for c in recorder.calls][-1] == "virtio_scsi"
    for _, flags, head in recorder.calls:
        assert flags == syscalls.MODULE_INIT_COMPRESSED_FILE
        assert head == b"\xfd7zX"  # the .ko.xz itself


def test_kernel_without_decompression_gets_a_decompressed_memfd(
        index: ModuleIndex, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder(refuse_compressed=errno.EOPNOTSUPP)
    monkeypatch.setattr(syscalls, "finit_module", recorder)
    loader = kmod.Loader(index)
    loader.loaded.clear()
    loader.load("virtio_scsi")
    assert recorder.calls and all(c[1] == 0 and c[2] == b"\x7fELF" for c in recorder.calls)


def test_a_failing_dependency_names_module_and_file(
        index: ModuleIndex, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(syscalls, "finit_module", Recorder(fail={"virtio_scsi": errno.ENOEXEC}))
    loader = kmod.Loader(index)
    loader.loaded.clear()
    with pytest.raises(kmod.ModuleError, match=r"module virtio_scsi \(.*virtio_scsi.ko.xz\): "):
        loader.load("virtio_scsi")
    assert "virtio_scsi" in loader.failed


def test_already_loaded_is_not_an_error(index: ModuleIndex,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(syscalls, "finit_module", Recorder(fail={"virtio_scsi": errno.EEXIST}))
    loader = kmod.Loader(index)
    loader.loaded.clear()
    assert loader.load("virtio_scsi")


def test_blacklisted_module_is_skipped(index: ModuleIndex,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder()
    monkeypatch.setattr(syscalls, "finit_module", recorder)
    events: list[tuple[str, dict[str, object]]] = []
    loader = kmod.Loader(index, frozenset({"virtio_scsi"}),
                         on_event=lambda e, **f: events.append((e, f)))
    loader.loaded.clear()
    assert not loader.load("virtio_scsi")
    assert recorder.calls == [] and events[0][0] == "module_blacklisted"


def test_xz_fallback_decompresses_exactly(tmp_path: Path) -> None:
    payload = b"\x7fELF" + bytes(range(256)) * 100
    path = tmp_path / "m.ko.xz"
    path.write_bytes(lzma.compress(payload, check=lzma.CHECK_CRC32))
    assert kmod._decompress(str(path)) == payload
    with pytest.raises(kmod.ModuleError, match=r"only unpacks \.xz and \.gz"):
        kmod._decompress(str(tmp_path / "m.ko.zst"))
