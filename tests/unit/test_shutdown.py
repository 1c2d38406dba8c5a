"""The shutdown side: what /shutdown unmounts and in which order, the device-mapper and md
ioctls it sends, and --prepare-shutdown's checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyinit import layout, shutdown, syscalls
from pyinit.builder import distro

MOUNTS_UNDER = shutdown.mounts_under


def test_old_root_mounts_come_down_deepest_first(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "30 1 0:21 / / rw - tmpfs tmpfs rw\n"
        "40 30 253:1 / /oldroot ro - ext4 /dev/mapper/debian--vg-root ro\n"
        "41 40 0:5 / /oldroot/dev rw - devtmpfs udev rw\n"
        "42 41 0:22 / /oldroot/dev/pts rw - devpts devpts rw\n"
        "43 40 8:1 / /oldroot/boot ro - ext4 /dev/vda1 ro\n"
        "44 40 0:23 / /oldroot/with\\040space rw - tmpfs tmpfs rw\n"
        "45 30 0:24 / /oldrootx rw - tmpfs tmpfs rw\n")
    assert shutdown.mounts_under("/oldroot", str(mountinfo)) == [
        "/oldroot/dev/pts", "/oldroot/boot", "/oldroot/dev", "/oldroot/with space",
        "/oldroot"]


def test_a_busy_old_root_is_detached_else_remounted_read_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("40 30 253:1 / /oldroot ro - ext4 /dev/dm-1 ro\n"
                         "41 40 0:5 / /oldroot/dev rw - devtmpfs udev rw\n")
    monkeypatch.setattr(shutdown, "mounts_under",
                        lambda top: MOUNTS_UNDER(top, str(mountinfo)))
    calls: list[tuple[str, int]] = []

    def umount2(target: str, flags: int = 0) -> None:
        calls.append((target, flags))
        if target == "/oldroot":
            raise OSError(16, "Device or resource busy")

    remounted: list[str] = []
    monkeypatch.setattr(syscalls, "umount2", umount2)
    monkeypatch.setattr(syscalls, "mount",
                        lambda source, target, *args: remounted.append(target))
    assert shutdown.unmount_old_root() == ["/oldroot: Device or resource busy"]
    assert calls == [("/oldroot/dev", 0), ("/oldroot", 0),
                     ("/oldroot", syscalls.MNT_DETACH)]
    assert remounted == ["/oldroot"]  # read-only, at least


def test_the_ioctls_match_the_kernel_headers() -> None:
    assert shutdown.DM_IOCTL.size == 312  # sizeof(struct dm_ioctl)
    assert shutdown.DM_REMOVE_ALL == 0xC138FD01  # _IOWR(DM_IOCTL, DM_REMOVE_ALL_CMD, ...)
    assert shutdown.MD_STOP_ARRAY == 0x932  # _IO(MD_MAJOR, 0x32)


def test_prepare_shutdown_needs_the_marker_and_a_shutdown_program(tmp_path: Path) -> None:
    run = tmp_path / "initramfs"
    run.mkdir()
    unpacked: list[tuple[str, str]] = []

    def extract(image: str, directory: str) -> int:
        unpacked.append((image, directory))
        return 0

    with pytest.raises(distro.DistroError, match=r"expected /run/initramfs/storage-active"):
        distro.prepare_shutdown("/boot/initrd.img-x", extract, str(run))
    assert unpacked == []  # a plain root: nothing unpacked
    (run / "storage-active").write_text("yes\n")
    with pytest.raises(distro.DistroError, match=r"has no /shutdown"):
        distro.prepare_shutdown("/boot/initrd.img-x", extract, str(run))
    program = run / layout.SHUTDOWN.lstrip("/")
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    assert distro.prepare_shutdown("/boot/initrd.img-x", extract, str(run)) == str(program)
    assert unpacked[-1] == ("/boot/initrd.img-x", str(run))
