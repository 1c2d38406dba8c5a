"""The hand-over code itself, as root, in a private mount namespace, on tmpfs trees.

Each test forks a child that unshares its mount namespace, builds a fake initramfs on tmpfs,
chroots into it and runs switchroot exactly as the init does; the child reports what it sees
afterwards through a pipe. Nothing is mounted in the test runner's own namespace.
"""

from __future__ import annotations

import json
import os
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pyinit import switchroot, syscalls

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for mount namespaces")


def in_namespace(body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        os.close(read_end)
        try:
            syscalls.unshare(syscalls.CLONE_NEWNS)
            switchroot.make_private("/")
            result = body()
        except BaseException:
            result = {"error": traceback.format_exc()}
        os.write(write_end, json.dumps(result).encode())
        os._exit(0)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    reported: dict[str, Any] = json.loads(b"".join(chunks))
    assert "error" not in reported, reported.get("error")
    return reported


def populate_initramfs(top: str) -> None:
    for sub in ("usr/lib/python", "etc", "sysroot", "proc", "dev", "run", "sys"):
        os.makedirs(os.path.join(top, sub), exist_ok=True)
    for name in ("init", "etc/initrd-release", "usr/lib/python/big.bin"):
        with open(os.path.join(top, name), "wb") as fh:
            fh.write(b"x" * 100_000)
    os.symlink("usr/lib", os.path.join(top, "lib"))


def mounted_initramfs(tmp_path: Path) -> str:
    """A fake initramfs on a tmpfs mount of its own (as the initramfs is under nullfs)."""
    initramfs = str(tmp_path / "initramfs")
    os.makedirs(initramfs)
    syscalls.mount("initramfs", initramfs, "tmpfs", 0, "size=16m")
    populate_initramfs(initramfs)
    return initramfs


def populate_root(root: str) -> None:
    for sub in ("proc", "dev", "run", "sys", "sbin"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    with open(os.path.join(root, "sbin/marker"), "w") as fh:
        fh.write("real root")


def mountinfo() -> list[list[str]]:
    with open("/proc/self/mountinfo") as fh:
        return [line.split() for line in fh]


def after_switch(method: str, removed: int, keep_fd: int | None) -> dict[str, Any]:
    table = mountinfo()
    root = next(m for m in table if m[4] == "/")
    left = sorted(os.listdir(keep_fd)) if keep_fd is not None else None
    return {
        "method": method,
        "removed": removed,
        "marker": open("/sbin/marker").read(),
        "root_fstype": root[root.index("-") + 1],
        "mount_points": sorted(m[4] for m in table),
        "initramfs_left": left,
        "cwd": os.getcwd(),
    }


def test_pivot_root_path(tmp_path: Path) -> None:
    """The initramfs is a mount of its own (as on Linux 7.x with nullfs): pivot_root."""

    def body() -> dict[str, Any]:
        initramfs = mounted_initramfs(tmp_path)
        syscalls.mount("realroot", f"{initramfs}/sysroot", "tmpfs", 0, "size=16m")
        populate_root(f"{initramfs}/sysroot")
        syscalls.mount("proc", f"{initramfs}/proc", "proc")
        os.chroot(initramfs)  # the root is now a mount point of its own, as with nullfs
        os.chdir("/")
        switchroot.move_api_mounts("/sysroot", ("/proc", "/dev"))
        method, removed = switchroot.switch_root("/sysroot")
        return after_switch(method, removed, None)

    result = in_namespace(body)
    assert result["method"] == "pivot_root"
    assert result["marker"] == "real root"
    assert result["cwd"] == "/"
    assert result["root_fstype"] == "tmpfs"
    # The old root is detached: only the new root and the moved /proc remain visible.
    assert result["mount_points"] == ["/", "/proc"]
    # 9 directories, 3 files and 1 symlink: the whole fake initramfs, /sysroot included.
    assert result["removed"] == 13


def test_move_path(tmp_path: Path) -> None:
    """The initramfs is not a mount point (rootfs before 7.0): pivot_root fails with EINVAL,
    the files are deleted without crossing into the new root, and the new root is moved."""

    def body() -> dict[str, Any]:
        scratch = str(tmp_path / "scratch")
        os.makedirs(scratch)
        syscalls.mount("scratch", scratch, "tmpfs", 0, "size=16m")
        initramfs = f"{scratch}/rootfs"  # a plain directory: chroot there, like rootfs
        populate_initramfs(initramfs)
        syscalls.mount("realroot", f"{initramfs}/sysroot", "tmpfs", 0, "size=16m")
        populate_root(f"{initramfs}/sysroot")
        syscalls.mount("proc", f"{initramfs}/proc", "proc")
        keep = os.open(initramfs, os.O_RDONLY | os.O_DIRECTORY)
        os.chroot(initramfs)
        os.chdir("/")
        switchroot.move_api_mounts("/sysroot", ("/proc",))
        method, removed = switchroot.switch_root("/sysroot")
        return after_switch(method, removed, keep)

    result = in_namespace(body)
    assert result["method"] == "move"
    assert result["marker"] == "real root"
    assert result["root_fstype"] == "tmpfs"
    # Everything of the old initramfs is gone but the mount point the new root sits on.
    assert result["initramfs_left"] == ["sysroot"]
    assert result["removed"] == 12  # all but /sysroot, where the new root sits
    assert result["mount_points"] == ["/", "/proc"]


def test_refuses_to_empty_a_real_root() -> None:
    """Run outside an initramfs (here: the test machine's own /), switch_root must refuse
    before touching anything."""

    def body() -> dict[str, Any]:
        try:
            switchroot.switch_root("/tmp")
        except OSError as err:
            return {"refused": str(err)}
        return {"refused": None}

    result = in_namespace(body)
    assert result["refused"] and "not an initramfs" in result["refused"]


def test_not_a_mount_point_is_refused(tmp_path: Path) -> None:
    def body() -> dict[str, Any]:
        initramfs = mounted_initramfs(tmp_path)
        os.chroot(initramfs)
        try:
            switchroot.switch_root("/sysroot")
        except OSError as err:
            return {"error_text": str(err), "init_still_there": os.path.exists("/init")}
        return {"error_text": None}

    result = in_namespace(body)
    assert "is not a mount point" in result["error_text"]
    assert result["init_still_there"]


def test_api_mount_without_a_directory_in_the_new_root_is_detached(tmp_path: Path) -> None:
    def body() -> dict[str, Any]:
        top = str(tmp_path / "t")
        os.makedirs(f"{top}/api")
        syscalls.mount("t", top, "tmpfs")
        os.makedirs(f"{top}/api")
        os.makedirs(f"{top}/new")
        syscalls.mount("api", f"{top}/api", "tmpfs")
        detached = switchroot.move_api_mounts(f"{top}/new", (f"{top}/api",))
        return {"detached": detached, "still_mounted": os.path.ismount(f"{top}/api")}

    result = in_namespace(body)
    assert result["detached"] == [str(tmp_path / "t" / "api")]
    assert result["still_mounted"] is False
