"""root=live: on real kernels: a squashfs or erofs image file on an ext4 partition, mounted
through a read-only loop device (or copied into RAM first; an erofs file directly where the
kernel can), the partition kept under /run; and a persistent overlay on a second disk."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.vm import harness
from tests.vm.kernels import Kernel

# init= on the image root: what the last boot left in the persistent upper layer, then a
# mark of this boot, then the test init (still PID 1).
PERSIST = r"""#!/bin/sh
echo "PERSIST pid=$$"
if [ -e /marker ]; then echo "PERSIST marker=$(cat /marker)"; else echo "PERSIST marker=none"; fi
echo boot > /marker
sync
exec /sbin/init
"""


@pytest.fixture(scope="session")
def live_disk(root_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An ext4 partition (LABEL=live) with /LiveOS/squashfs.img, the same image as
    /img/root.sqfs, the tree as /LiveOS/rootfs.erofs, and a file that is no image."""
    top = tmp_path_factory.mktemp("live")
    source = top / "root"
    shutil.copytree(root_tree, source, symlinks=True)
    (source / "sbin/persistcheck").write_text(PERSIST)
    (source / "sbin/persistcheck").chmod(0o755)
    image = str(top / "squashfs.img")
    harness.make_fs_image(image, str(source), "squashfs", 1, "unused")
    tree = top / "tree"
    (tree / "LiveOS").mkdir(parents=True)
    (tree / "img").mkdir()
    shutil.copy(image, tree / "LiveOS/squashfs.img")
    shutil.copy(image, tree / "img/root.sqfs")
    harness.make_fs_image(str(tree / "LiveOS/rootfs.erofs"), str(source), "erofs", 1, "unused")
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


def test_an_erofs_file_with_a_persistent_overlay_on_a_second_disk(
        kernel7: Kernel, appliance_image: Callable[[Kernel], str], live_disk: str,
        tmp_path: Path) -> None:
    """A change survives a reboot; rd.overlay.reset=1 (the factory reset) removes it."""
    (tmp_path / "empty").mkdir()
    data = str(tmp_path / "data.ext4")
    harness.make_fs_image(data, str(tmp_path / "empty"), "ext4", 16, "data")
    line = ("root=live:LABEL=live rd.live.squashimg=rootfs.erofs rd.overlay=LABEL=data "
            "init=/sbin/persistcheck")
    seen = []
    for number, extra in enumerate(("", "", "rd.overlay.reset=1")):
        result = harness.boot(kernel7.vmlinuz, appliance_image(kernel7), [live_disk, data],
                              f"console=ttyS0 panic=-1 {line} {extra}",
                              str(tmp_path / f"boot{number}.log"), timeout=240)
        assert "TESTINIT pid=1" in result.log, result.log[-3000:]
        [live] = result.events("live_mounted")
        assert live["type"] == "erofs" and live["device"] == "file"  # 7.x mounts the file
        [layered] = result.events("overlay_mounted")
        assert layered["mode"] == "persistent" and layered["upper_type"] == "/dev/vdb"
        seen.append((result.lines("PERSIST marker=")[0], len(result.events("overlay_reset"))))
    assert seen == [("none", 0), ("boot", 0), ("none", 1)]


def test_an_erofs_file_through_a_loop_device_on_61(
        kernel61: Kernel, appliance_image: Callable[[Kernel], str], live_disk: str,
        tmp_path: Path) -> None:
    result = boot(kernel61, appliance_image(kernel61), live_disk,
                  "root=live:LABEL=live rd.live.squashimg=rootfs.erofs", tmp_path)
    assert "TESTINIT pid=1" in result.log, result.log[-3000:]
    [live] = result.events("live_mounted")
    assert live["type"] == "erofs" and live["device"].startswith("/dev/loop")
