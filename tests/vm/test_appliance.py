"""Appliance roots on real kernels: a read-only squashfs root with its upper layer in tmpfs
(rd.overlay, overlayroot=, systemd.volatile=), handed to the real init as PID 1."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.vm import harness
from tests.vm.kernels import Kernel

UNATTENDED = "rd.shell=0 rd.emergency=poweroff"
# init= on the squashfs root: writes through the overlay, reports what each layer holds,
# then runs the test init in its place (still PID 1).
CHECK = r"""#!/bin/sh
echo "OVERLAY pid=$$"
echo written > /written
echo "OVERLAY seen=$(cat /written)"
[ -e /run/rootfsbase/written ] && echo "OVERLAY lower=has-it" || echo "OVERLAY lower=clean"
[ -e /run/overlayfs/upper/written ] && echo "OVERLAY upper=has-it"
echo "OVERLAY volatile=$(readlink /run/systemd/volatile-root)"
exec /sbin/init
"""


@pytest.fixture(scope="session")
def squashfs_root(root_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    top = tmp_path_factory.mktemp("squashfs-root")
    tree = top / "tree"
    shutil.copytree(root_tree, tree, symlinks=True)
    check = tree / "sbin/overlaycheck"
    check.write_text(CHECK)
    check.chmod(0o755)
    disk = str(top / "root.squashfs")
    harness.make_fs_image(disk, str(tree), "squashfs", 1, "unused")
    return disk


@pytest.fixture(scope="session", params=["debian-6.1", "debian-7"])
def appliance(request: pytest.FixtureRequest, appliance_image: Callable[[Kernel], str]
              ) -> tuple[Kernel, str]:
    kernel: Kernel = request.getfixturevalue(
        "kernel61" if request.param == "debian-6.1" else "kernel7")
    return kernel, appliance_image(kernel)


def boot(kernel: Kernel, image: str, disk: str, cmdline: str, tmp_path: Path
         ) -> harness.BootResult:
    result = harness.boot(kernel.vmlinuz, image, [disk],
                          f"console=ttyS0 panic=-1 {UNATTENDED} {cmdline}",
                          str(tmp_path / "boot.log"), timeout=240)
    assert not result.timed_out, result.log[-3000:]
    return result


def test_a_squashfs_root_with_a_tmpfs_overlay(appliance: tuple[Kernel, str], squashfs_root: str,
                                              tmp_path: Path) -> None:
    kernel, image = appliance
    result = boot(kernel, image, squashfs_root, "root=/dev/vda rootfstype=squashfs rw "
                  "rd.overlay=tmpfs:size=16m init=/sbin/overlaycheck", tmp_path)
    said = dict(line.split("OVERLAY ", 1)[1].split("=", 1) for line in result.log.splitlines()
                if "OVERLAY " in line and "=" in line.split("OVERLAY ", 1)[1])
    assert said.get("pid") == "1", result.log[-3000:]
    assert said["seen"] == "written" and said["lower"] == "clean" and said["upper"] == "has-it"
    assert said["volatile"] == "/dev/block/254:0"  # the squashfs disk, vda
    [mounted] = result.events("root_mounted")
    assert mounted["type"] == "squashfs" and mounted["mode"] == "ro"  # rw is the overlay's
    [layered] = result.events("overlay_mounted")
    assert layered["key"] == "rd.overlay" and layered["options"] == "size=16m"
    root_line = next(line for line in result.lines("MOUNTINFO") if " / / " in line)
    assert " - overlay " in root_line and root_line.split()[5].startswith("rw,"), root_line
    assert "TESTINIT pid=1" in result.log and "TESTINIT done" in result.log


def test_an_overlay_form_it_cannot_mount_stops_the_boot(
        kernel7: Kernel, appliance_image: Callable[[Kernel], str], squashfs_root: str,
        tmp_path: Path) -> None:
    result = boot(kernel7, appliance_image(kernel7), squashfs_root,
                  "root=/dev/vda overlayroot=crypt:dev=/dev/vdb", tmp_path)
    assert ("boot failed in stage cmdline: overlayroot=crypt:dev=/dev/vdb: an encrypted upper "
            "layer is not supported") in result.log, result.log[-3000:]
    assert "reboot: Power down" in result.log and "root_mounted" not in result.log


def test_volatile_yes_boots_a_tmpfs_root_with_the_images_usr(
        kernel7: Kernel, appliance_image: Callable[[Kernel], str], root_tree: Path,
        tmp_path: Path) -> None:
    """systemd.volatile=yes on a merged-/usr image: / is a tmpfs, /usr the image's."""
    tree = tmp_path / "merged"
    (tree / "usr").mkdir(parents=True)
    for name in ("bin", "sbin"):
        shutil.copytree(root_tree / name, tree / "usr" / name, symlinks=True)
        (tree / name).symlink_to(f"usr/{name}")
    shutil.copytree(root_tree / "etc", tree / "etc")
    disk = str(tmp_path / "merged.squashfs")
    harness.make_fs_image(disk, str(tree), "squashfs", 1, "unused")
    result = boot(kernel7, appliance_image(kernel7), disk,
                  "root=/dev/vda systemd.volatile=yes", tmp_path)
    assert "TESTINIT pid=1" in result.log, result.log[-3000:]
    [layered] = result.events("overlay_mounted")
    assert layered["mode"] == "tmpfs root" and layered["links"] == "bin,sbin"
    mounts = result.lines("MOUNTINFO")
    assert " - tmpfs " in next(line for line in mounts if " / / " in line)
    assert " - squashfs /dev/vda ro" in next(line for line in mounts if " /usr " in line)
    assert not result.events("api_dir_created") and "TESTINIT done" in result.log
