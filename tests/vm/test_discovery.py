"""Root discovery on real kernels: every root= form on a GPT disk, ext4/xfs/btrfs/squashfs
roots, ambiguity, hotplug with rootwait, and fsck before a read-write mount."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.vm import harness
from tests.vm.conftest import DRIVERS, Setup
from tests.vm.kernels import Kernel

FS_DRIVERS = ["xfs", "btrfs", "squashfs"]
UNATTENDED = "rd.shell=0 rd.emergency=poweroff"


@dataclass
class GptDisk:
    path: str
    other: harness.Partition
    root: harness.Partition


@pytest.fixture(scope="session")
def gpt_disk(tmp_path_factory: pytest.TempPathFactory, root_tree: Path) -> GptDisk:
    tmp = tmp_path_factory.mktemp("gpt")
    parts = [harness.Partition("other", "ext4", 16, "otherfs"),
             harness.Partition("pyroot-part", "ext4", 48, "gptroot"),
             harness.Partition("spare", "ext4", 16, "sparefs")]
    path = str(tmp / "gpt.img")
    harness.make_gpt_disk(path, str(root_tree), parts, str(tmp))
    return GptDisk(path, parts[0], parts[1])


def forms(disk: GptDisk) -> dict[str, str]:
    root = disk.root
    return {
        "devname": "/dev/vda2",
        "uuid": f"UUID={root.fs_uuid}",
        "label": "LABEL=gptroot",
        "partuuid": f"PARTUUID={root.guid.upper()}",
        "partnroff": f"PARTUUID={disk.other.guid}/PARTNROFF=1",
        "partlabel": "PARTLABEL=pyroot-part",
        "majmin": "254:2",
        "hexdevt": "fe02",
        "by-uuid": f"/dev/disk/by-uuid/{root.fs_uuid}",
        "by-label": "/dev/disk/by-label/gptroot",
        "by-partuuid": f"/dev/disk/by-partuuid/{root.guid}",
        "by-partlabel": "/dev/disk/by-partlabel/pyroot-part",
        "by-path": "/dev/disk/by-path/pci-0000:00:02.0-part2",
    }


FORMS = ["devname", "uuid", "label", "partuuid", "partnroff", "partlabel", "majmin", "hexdevt",
         "by-uuid", "by-label", "by-partuuid", "by-partlabel", "by-path"]


# Matching is the same code on both kernels: every form on 7.x, three on 6.1.
CASES = [("debian-7", form) for form in FORMS] + [
    ("debian-6.1", form) for form in ("uuid", "partnroff", "by-path")]
# With udevd, the forms it answers from its own properties and links.
UDEV_FORMS = ["devname", "uuid", "by-label", "by-path"]


@pytest.mark.parametrize(("setup", "form"), CASES, indirect=["setup"])
def test_every_root_form_finds_the_partition(setup: Setup, gpt_disk: GptDisk,
                                             form: str) -> None:
    value = forms(gpt_disk)[form]
    result = setup.boot(f'"root={value}" {UNATTENDED}', f"form-{form}", disks=[gpt_disk.path])
    found = result.events("root_found")
    assert found and found[0]["device"] == "/dev/vda2", result.log[-3000:]
    assert found[0]["uuid"] == gpt_disk.root.fs_uuid
    assert "TESTINIT done" in result.log


@pytest.fixture(scope="session")
def fs_image(kernel7: Kernel, tmp_path_factory: pytest.TempPathFactory) -> str:
    image = str(tmp_path_factory.mktemp("fs-image") / "initrd-fs.img")
    harness.build_image(image, kernel7.moddir, kernel7.kver,
                        DRIVERS[kernel7.name] + FS_DRIVERS, extra=["--fsck", "ext4"])
    return image


def boot7(kernel7: Kernel, image: str, disks: list[str], cmdline: str, log: Path,
          timeout: float = 180) -> harness.BootResult:
    result = harness.boot(kernel7.vmlinuz, image, disks,
                          f"console=ttyS0 panic=-1 {UNATTENDED} {cmdline}", str(log),
                          timeout=timeout)
    assert not result.timed_out, result.log[-3000:]
    return result


@pytest.mark.parametrize(("fstype", "size"), [("xfs", 320), ("btrfs", 120), ("squashfs", 0)])
def test_root_filesystems_with_their_modules(kernel7: Kernel, fs_image: str, root_tree: Path,
                                            tmp_path: Path, fstype: str, size: int) -> None:
    disk = str(tmp_path / f"{fstype}.img")
    fs_uuid = harness.make_fs_image(disk, str(root_tree), fstype, max(size, 1), f"r{fstype}")
    root = f"UUID={fs_uuid}" if fs_uuid else "/dev/vda"
    result = boot7(kernel7, fs_image, [disk], f"root={root}", tmp_path / "boot.log")
    assert [e["module"] for e in result.events("module_loaded")
            if e["reason"] == f"root filesystem {fstype}"] == [fstype], result.log[-3000:]
    mounted = result.events("root_mounted")
    assert mounted and mounted[0]["type"] == fstype and mounted[0]["mode"] == "ro"
    assert "TESTINIT done" in result.log


def twin_disks(root_tree: Path, tmp_path: Path, shared: str) -> list[str]:
    """Two ext4 disks sharing one filesystem UUID (labels twina and twinb)."""
    paths = []
    for name in ("a", "b"):
        path = str(tmp_path / f"{name}.img")
        harness.make_fs_image(path, str(root_tree), "ext4", 32, f"twin{name}", shared)
        paths.append(path)
    return paths


def test_two_devices_with_one_uuid_stop_the_boot(setup: Setup, root_tree: Path,
                                                 tmp_path: Path) -> None:
    shared = "11111111-2222-4333-8444-555555555555"
    result = setup.boot(f"{UNATTENDED} root=UUID={shared}", "twins",
                        disks=twin_disks(root_tree, tmp_path, shared))
    assert (f"boot failed in stage discover: root=UUID={shared}: the device with "
            f"UUID={shared} matches 2 devices, refusing to guess: /dev/vda (254:0) TYPE=ext4 "
            f"UUID={shared} LABEL=twina") in result.log, result.log[-3000:]
    assert f"/dev/vdb (254:16) TYPE=ext4 UUID={shared} LABEL=twinb" in result.log
    assert "reboot: Power down" in result.log and "TESTINIT" not in result.log


def hotplug_boot(kernel: Kernel, image: str, root_tree: Path, tmp_path: Path) -> str:
    """Boot with no root disk and rootwait, add the disk through QMP 5 s after the modules
    stage, and return the console log once the real init has run."""
    disk = harness.make_ext4_disk(str(tmp_path / "late.img"), str(root_tree))
    vm = harness.InteractiveVM(kernel.vmlinuz, image, [],
                               f"console=ttyS0 {UNATTENDED} root=UUID={disk.uuid} rootwait",
                               str(tmp_path))
    try:
        vm.expect(r"Run /init as init process")
        # the disk comes once the discover stage says it is waiting: after coldplug
        vm.expect(r"event=waiting_for_root", timeout=120)
        vm.qmp({"execute": "blockdev-add", "arguments": {
                    "node-name": "late", "driver": "raw",
                    "file": {"driver": "file", "filename": disk.path}}},
               {"execute": "device_add", "arguments": {
                    "driver": "virtio-blk-pci", "drive": "late", "id": "latedisk"}})
        vm.expect(r"TESTINIT done", timeout=120)
        vm.wait()
    finally:
        vm.stop()
    return vm.log


def test_hotplugged_root_is_found_with_rootwait(kernel7: Kernel, fs_image: str,
                                                root_tree: Path, tmp_path: Path) -> None:
    log = hotplug_boot(kernel7, fs_image, root_tree, tmp_path)
    found = [line for line in log.splitlines() if "event=root_found" in line]
    assert found and "device=/dev/vda" in found[0]
    assert "event=module_loaded module=virtio_blk" in log  # loaded on the hotplug event


def test_fsck_repairs_an_ext4_root_with_errors(kernel7: Kernel, fs_image: str,
                                               root_tree: Path, tmp_path: Path) -> None:
    disk = harness.make_ext4_disk(str(tmp_path / "dirty.img"), str(root_tree))
    # A wrong link count on the root directory: e2fsck -p fixes it and says so (status 1).
    subprocess.run(["debugfs", "-w", "-R", "set_inode_field <2> links_count 42", disk.path],
                   check=True, capture_output=True)
    subprocess.run(["tune2fs", "-E", "force_fsck", disk.path], check=True, capture_output=True)
    assert subprocess.run(["e2fsck", "-fn", disk.path], capture_output=True).returncode == 4
    result = boot7(kernel7, fs_image, [disk.path], f"root=UUID={disk.uuid} rw",
                   tmp_path / "boot.log")
    fsck = result.events("fsck")
    assert fsck and fsck[0]["tool"].endswith("fsck.ext4"), result.log[-3000:]
    assert fsck[0]["status"] == "1"  # errors found and corrected
    assert "TESTINIT done" in result.log
    state = subprocess.run(["dumpe2fs", "-h", disk.path], capture_output=True, text=True).stdout
    assert re.search(r"^Filesystem state:\s+clean$", state, re.M), state
    assert subprocess.run(["e2fsck", "-fn", disk.path], capture_output=True).returncode == 0


# ---- the same cases with systemd-udevd in the image (mkinitramfs.py --udev systemd) ----

@pytest.fixture(scope="session")
def systemd_image(kernel7: Kernel, tmp_path_factory: pytest.TempPathFactory) -> str:
    image = str(tmp_path_factory.mktemp("udev-image") / "initrd-udev.img")
    harness.build_image(image, kernel7.moddir, kernel7.kver, DRIVERS[kernel7.name],
                        udev="systemd")
    return image


@pytest.mark.parametrize("form", UDEV_FORMS)
def test_every_root_form_with_udevd(kernel7: Kernel, systemd_image: str, gpt_disk: GptDisk,
                                    tmp_path: Path, form: str) -> None:
    value = forms(gpt_disk)[form]
    result = boot7(kernel7, systemd_image, [gpt_disk.path], f'"root={value}"',
                   tmp_path / "boot.log")
    assert result.events("udevd_started"), result.log[-3000:]
    found = result.events("root_found")
    assert found and found[0]["device"] == "/dev/vda2", result.log[-3000:]
    assert found[0]["uuid"] == gpt_disk.root.fs_uuid
    assert [e["status"] for e in result.events("udevd_stopped")] == ["0"]
    procs = [line.split() for line in result.lines("PROC ")]
    assert [p[0] for p in procs] == ["1"], procs  # udevd did not outlive the hand-over
    assert "TESTINIT done" in result.log


def test_twin_uuids_with_udevd(kernel7: Kernel, systemd_image: str, root_tree: Path,
                               tmp_path: Path) -> None:
    shared = "11111111-2222-4333-8444-666666666666"
    result = boot7(kernel7, systemd_image, twin_disks(root_tree, tmp_path, shared),
                   f"root=UUID={shared}", tmp_path / "b.log")
    assert "matches 2 devices, refusing to guess: /dev/vda (254:0)" in result.log, \
        result.log[-3000:]
    assert "reboot: Power down" in result.log and "TESTINIT" not in result.log


def test_hotplug_with_udevd(kernel7: Kernel, systemd_image: str, root_tree: Path,
                            tmp_path: Path) -> None:
    log = hotplug_boot(kernel7, systemd_image, root_tree, tmp_path)
    assert "event=udevd_started" in log and "event=root_found device=/dev/vda" in log
