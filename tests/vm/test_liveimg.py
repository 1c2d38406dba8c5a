"""root=live: on real kernels: a squashfs image file on an ext4 partition, mounted through a
read-only loop device (or copied into RAM first), the partition kept under /run."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.vm import harness
from tests.vm.kernels import Kernel


@pytest.fixture(scope="session")
def live_disk(root_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An ext4 partition (LABEL=live) with /LiveOS/squashfs.img, the same image as
    /img/root.sqfs, and a file that is no image."""
    top = tmp_path_factory.mktemp("live")
    image = str(top / "squashfs.img")
    harness.make_fs_image(image, str(root_tree), "squashfs", 1, "unused")
    tree = top / "tree"
    (tree / "LiveOS").mkdir(parents=True)
    (tree / "img").mkdir()
    shutil.copy(image, tree / "LiveOS/squashfs.img")
    shutil.copy(image, tree / "img/root.sqfs")
    (tree / "LiveOS/notes.txt").write_text("not an image\n" * 1000)
    disk = str(top / "live.ext4")
    harness.make_fs_image(disk, str(tree), "ext4", 32, "live")
    return disk


def boot(kernel: Kernel, image: str, disk: str, cmdline: str, tmp_path: Path
         ) -> harness.BootResult:
    result = harness.boot(kernel.vmlinuz, image, [disk], f"console=ttyS0 panic=-1 {cmdline}",
                          str(tmp_path / "boot.log"), timeout=240)
    assert not result.timed_out, result.log[-3000:]
    return result


@pytest.mark.parametrize("kernel_name", ["debian-6.1", "debian-7"])
def test_an_image_file_on_a_partition(kernel_name: str, request: pytest.FixtureRequest,
                                      appliance_image: Callable[[Kernel], str], live_disk: str,
                                      tmp_path: Path) -> None:
    kernel: Kernel = request.getfixturevalue("kernel61" if kernel_name == "debian-6.1"
                                             else "kernel7")
    result = boot(kernel, appliance_image(kernel), live_disk, "root=live:LABEL=live", tmp_path)
    assert "TESTINIT pid=1" in result.log, result.log[-3000:]
    [mounted] = result.events("live_mounted")
    assert mounted["image"] == "/run/initramfs/live/LiveOS/squashfs.img"
    assert mounted["device"].startswith("/dev/loop") and mounted["type"] == "squashfs"
    assert mounted["ram"] == "no"
    mounts = result.lines("MOUNTINFO")
    root_line = next(line for line in mounts if " / / " in line)
    assert f" - squashfs {mounted['device']} ro" in root_line, root_line
    live_line = next(line for line in mounts if " /run/initramfs/live " in line)
    assert " - ext4 /dev/vda " in live_line and " ro," in live_line, live_line
    assert "TESTINIT done" in result.log


def test_copied_into_ram_from_another_place(kernel7: Kernel,
                                            appliance_image: Callable[[Kernel], str],
                                            live_disk: str, tmp_path: Path) -> None:
    result = boot(kernel7, appliance_image(kernel7), live_disk,
                  "root=live:/dev/vda rd.live.dir=/img rd.live.squashimg=root.sqfs "
                  "rd.live.ram=1", tmp_path)
    assert "TESTINIT pid=1" in result.log, result.log[-3000:]
    [mounted] = result.events("live_mounted")
    assert mounted["image"] == "/run/initramfs/squashfs.img" and mounted["ram"] == "yes"


@pytest.mark.parametrize(("cmdline", "message"), [
    ("root=live:LABEL=live rd.live.squashimg=missing.img", "boot failed in stage mount: "
     "root=live: expected the image /LiveOS/missing.img on /dev/vda, found none"),
    ("root=live:LABEL=live rd.live.squashimg=notes.txt", "boot failed in stage mount: "
     "/run/initramfs/live/LiveOS/notes.txt: expected a squashfs or erofs image, found no "
     "filesystem"),
])
def test_a_missing_or_wrong_image_is_one_line(kernel7: Kernel,
                                              appliance_image: Callable[[Kernel], str],
                                              live_disk: str, tmp_path: Path, cmdline: str,
                                              message: str) -> None:
    result = boot(kernel7, appliance_image(kernel7), live_disk, cmdline, tmp_path)
    assert message in result.log, result.log[-3000:]
    assert "TESTINIT" not in result.log and "reboot: Restarting system" in result.log
