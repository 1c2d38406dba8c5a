from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.vm import harness
from tests.vm.harness import BootResult
from tests.vm.kernels import Kernel

# The modules each test kernel needs for a virtio disk (6.1 has virtio_pci as a module too).
DRIVERS = {"debian-6.1": ["virtio_pci", "virtio_blk"], "debian-7": ["virtio_blk"]}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/vm/" in str(item.fspath):
            item.add_marker(pytest.mark.vm)


@dataclass
class Setup:
    kernel: Kernel
    image: str
    build_summary: str
    disk: harness.Disk
    workdir: Path

    def boot(self, cmdline: str, name: str, timeout: float = 240,
             disks: list[str] | None = None) -> harness.BootResult:
        log = str(self.workdir / f"{name}.log")
        result = harness.boot(self.kernel.vmlinuz, self.image,
                              [self.disk.path] if disks is None else disks,
                              f"console=ttyS0 panic=-1 {cmdline}", log, timeout=timeout)
        assert not result.timed_out, (
            f"boot {name} hit the {timeout} s timeout:\n{result.log[-3000:]}")
        return result


@pytest.fixture(scope="session")
def root_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = tmp_path_factory.mktemp("rootfs")
    harness.make_rootfs(str(tree))
    return tree


def make_setup(kernel: Kernel, root_tree: Path, tmp: Path, compression: str = "zstd") -> Setup:
    image = str(tmp / f"initrd-{kernel.name}.{compression}")
    summary = harness.build_image(image, kernel.moddir, kernel.kver, DRIVERS[kernel.name],
                                  compression)
    disk = harness.make_ext4_disk(str(tmp / "root.img"), str(root_tree))
    return Setup(kernel, image, summary, disk, tmp)


@pytest.fixture(scope="session", params=["debian-6.1", "debian-7"])
def setup(request: pytest.FixtureRequest, root_tree: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Setup:
    kernel = request.getfixturevalue("kernel61" if request.param == "debian-6.1" else "kernel7")
    return make_setup(kernel, root_tree, tmp_path_factory.mktemp(request.param))


# What does not depend on the kernel runs on the 7.x kernel only (CI time); the hand-over,
# module loading and the failure paths that touch them run on both.
ON_7X = pytest.mark.parametrize("setup", ["debian-7"], indirect=True)


@pytest.fixture(scope="session")
def unpacked_bytes(setup: Setup) -> int:
    from pyinit.builder import compress

    with open(setup.image, "rb") as fh:
        return len(compress.decompress(fh.read()))


def pytest_report_header() -> list[str]:
    return [f"pyinit cache: {os.environ.get('PYINIT_CACHE', '~/.cache/pyinit')}"]


@pytest.fixture(scope="session")
def default_boot(setup: Setup) -> BootResult:
    return setup.boot(f"root=UUID={setup.disk.uuid} rd.shell=0 rd.emergency=poweroff",
                      "default")


@pytest.fixture(scope="session")
def custom_boot(setup: Setup) -> BootResult:
    return setup.boot(f"root=UUID={setup.disk.uuid} rw init=/sbin/altinit rd.shell=0 "
                      "rd.emergency=poweroff single PYINIT_TEST=yes rd.timeout=abc rootflags= "
                      '-- alpha "beta gamma"', "custom")


@pytest.fixture(scope="session")
def appliance_image(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Kernel], str]:
    """An --appliance image (verity, squashfs, erofs, overlay, loop; no udevd, no fsck;
    rd.shell=0 rd.emergency=reboot by default), with ext4 for root=live:'s partition,
    built once per kernel."""
    built: dict[str, str] = {}

    def get(kernel: Kernel) -> str:
        if kernel.name not in built:
            image = str(tmp_path_factory.mktemp(f"appliance-{kernel.name}") / "initrd.img")
            summary = harness.build_image(image, kernel.moddir, kernel.kver,
                                          DRIVERS[kernel.name] + ["ext4"],
                                          extra=["--appliance"])
            assert "udev: none (an appliance image" in summary, summary
            built[kernel.name] = image
        return built[kernel.name]

    return get
