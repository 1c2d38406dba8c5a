"""The hand-over code itself, as root, in a private mount namespace, on tmpfs trees.

Each test forks a child that unshares its mount namespace, builds a fake initramfs on tmpfs,
chroots into it and runs switchroot exactly as the init does; the child reports what it sees
afterwards through a pipe. Nothing is mounted in the test runner's own namespace.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pyinit import switchroot, syscalls

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for mount namespaces")


def in_namespace(body: Callable[[], dict[str, Any]],
                 flags: int = syscalls.CLONE_NEWNS) -> dict[str, Any]:
    """BODY's result, run in a forked child in the namespaces FLAGS asks for (mounts made
    private in a new mount namespace); a traceback in the child fails the test."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        os.close(read_end)
        try:
            syscalls.unshare(flags)
            if flags & syscalls.CLONE_NEWNS:
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
    for sub in ("proc", "dev", "run", "sys", "sbin", "etc"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    with open(os.path.join(root, "sbin/marker"), "w") as fh:
        fh.write("real root")
    with open(os.path.join(root, "sbin/init"), "w") as fh:
        fh.write("#!/bin/sh\n")
    os.chmod(os.path.join(root, "sbin/init"), 0o755)
    with open(os.path.join(root, "etc/os-release"), "w") as fh:
        fh.write("ID=test\n")


WARNINGS: list[tuple[str, dict[str, object]]] = []


def warn(event: str, **fields: object) -> None:
    WARNINGS.append((event, fields))


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
        switchroot.check("/sysroot", None, warn)
        switchroot.move_api_mounts("/sysroot", warn, ("/proc", "/dev"))
        method, removed, errors = switchroot.switch_root("/sysroot")
        assert errors == []
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
        switchroot.check("/sysroot", None, warn)
        switchroot.move_api_mounts("/sysroot", warn, ("/proc",))
        method, removed, errors = switchroot.switch_root("/sysroot")
        assert errors == []
        return after_switch(method, removed, keep)

    result = in_namespace(body)
    assert result["method"] == "move"
    assert result["marker"] == "real root"
    assert result["root_fstype"] == "tmpfs"
    # The new root was moved away first, then everything of the old initramfs was deleted,
    # /sysroot (an empty directory by then) included.
    assert result["initramfs_left"] == []
    assert result["removed"] == 13
    assert result["mount_points"] == ["/", "/proc"]


@pytest.fixture()
def disk_scratch() -> Iterator[Path]:
    """A scratch tree on a disk filesystem (never tmpfs or ramfs), away from anything that
    matters: if the guard below ever regresses, only these files are lost."""
    top = Path(__file__).resolve().parents[2] / f".scratch-{os.getpid()}"
    top.mkdir()
    try:
        yield top
    finally:
        shutil.rmtree(top)


def test_refuses_to_empty_a_real_root(disk_scratch: Path) -> None:
    """Run outside an initramfs (a root on a disk filesystem), the hand-over must refuse
    before touching anything."""
    populate_initramfs(str(disk_scratch))
    magic = syscalls.fs_magic(str(disk_scratch))
    assert magic not in (syscalls.RAMFS_MAGIC, syscalls.TMPFS_MAGIC)

    def body() -> dict[str, Any]:
        os.chroot(str(disk_scratch))
        os.chdir("/")
        try:
            switchroot.check("/sysroot", None, warn)
        except OSError as err:
            return {"refused": str(err), "left": sorted(os.listdir("/"))}
        return {"refused": None}

    result = in_namespace(body)
    assert result["refused"] and "not an initramfs" in result["refused"]
    assert result["left"] == ["dev", "etc", "init", "lib", "proc", "run", "sys", "sysroot",
                              "usr"]


def test_not_a_mount_point_is_refused(tmp_path: Path) -> None:
    def body() -> dict[str, Any]:
        initramfs = mounted_initramfs(tmp_path)
        os.chroot(initramfs)
        try:
            switchroot.check("/sysroot", None, warn)
        except OSError as err:
            return {"error_text": str(err), "init_still_there": os.path.exists("/init")}
        return {"error_text": None}

    result = in_namespace(body)
    assert "is not a mount point" in result["error_text"]
    assert result["init_still_there"]


def test_a_root_without_an_init_is_refused_before_anything_moves(tmp_path: Path) -> None:
    def body() -> dict[str, Any]:
        initramfs = mounted_initramfs(tmp_path)
        syscalls.mount("realroot", f"{initramfs}/sysroot", "tmpfs", 0, "size=16m")
        os.makedirs(f"{initramfs}/sysroot/sbin")
        os.symlink("/nowhere", f"{initramfs}/sysroot/sbin/init")
        syscalls.mount("proc", f"{initramfs}/proc", "proc")
        os.chroot(initramfs)
        try:
            switchroot.check("/sysroot", "/sbin/missing", warn)
        except OSError as err:
            return {"strerror": err.strerror, "proc": os.path.ismount("/proc")}
        return {"strerror": None}

    result = in_namespace(body)
    assert result["strerror"] == ("no init could be executed: /sbin/missing: does not exist; "
                               "/sbin/init: dangling symbolic link to /nowhere; /etc/init: "
                               "does not exist; /bin/init: does not exist; /bin/sh: does not "
                               "exist")
    assert result["proc"]  # still mounted where the rescue console needs it


def test_systemd_refuses_a_root_without_os_release(tmp_path: Path) -> None:
    def body() -> dict[str, Any]:
        initramfs = mounted_initramfs(tmp_path)
        root = f"{initramfs}/sysroot"
        syscalls.mount("realroot", root, "tmpfs", 0, "size=16m")
        populate_root(root)
        os.unlink(f"{root}/etc/os-release")
        os.makedirs(f"{root}/lib/systemd")
        os.rename(f"{root}/sbin/init", f"{root}/lib/systemd/systemd")
        os.symlink("/lib/systemd/systemd", f"{root}/sbin/init")
        os.chroot(initramfs)
        try:
            switchroot.check("/sysroot", None, warn)
        except OSError as err:
            refused = err.strerror
        os.unlink("/sysroot/sbin/init")  # a plain init only gets a warning
        os.symlink("/bin/busybox", "/sysroot/sbin/init")
        os.makedirs("/sysroot/bin")
        os.rename("/sysroot/lib/systemd/systemd", "/sysroot/bin/busybox")
        WARNINGS.clear()
        chosen = switchroot.check("/sysroot", None, warn)
        return {"refused": refused, "chosen": chosen, "warnings": [w[0] for w in WARNINGS]}

    result = in_namespace(body)
    assert result["refused"] == ("Specified switch root path '/sysroot' does not seem to be an "
                                 "OS tree. os-release file is missing.")
    assert result["chosen"] == "/sbin/init" and result["warnings"] == ["not_an_os_tree"]


def test_api_dirs_are_made_in_a_writable_root_and_reported_in_a_read_only_one(
        tmp_path: Path) -> None:
    def body() -> dict[str, Any]:
        top = str(tmp_path / "t")
        os.makedirs(top)
        syscalls.mount("t", top, "tmpfs")
        for sub in ("api1", "api2", "rw", "ro"):
            os.makedirs(f"{top}/{sub}")
        syscalls.mount("api1", f"{top}/api1", "tmpfs")
        syscalls.mount("api2", f"{top}/api2", "tmpfs")
        syscalls.mount("rw", f"{top}/rw", "tmpfs")
        syscalls.mount("ro", f"{top}/ro", "tmpfs", syscalls.MS_RDONLY)
        os.chroot(top)
        WARNINGS.clear()
        moved = switchroot.move_api_mounts("/rw", warn, ("/api1",))
        detached = switchroot.move_api_mounts("/ro", warn, ("/api2",))
        return {"moved": moved, "created": os.path.ismount("/rw/api1"), "detached": detached,
                "api2_mounted": os.path.ismount("/api2"), "warnings": [w[0] for w in WARNINGS]}

    result = in_namespace(body)
    assert result == {"moved": ["/api1"], "created": True, "detached": [],
                      "api2_mounted": False,
                      "warnings": ["api_dir_created", "api_mount_detached"]}


def test_a_failed_move_puts_back_the_mounts_already_moved(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def body() -> dict[str, Any]:
        top = str(tmp_path / "t")
        os.makedirs(top)
        syscalls.mount("t", top, "tmpfs")
        for sub in ("a", "b", "new/a", "new/b"):
            os.makedirs(f"{top}/{sub}")
        syscalls.mount("a", f"{top}/a", "tmpfs")
        syscalls.mount("b", f"{top}/b", "tmpfs")
        os.chroot(top)
        real_mount = syscalls.mount

        def refuse_b(source: str | None, target: str, *args: Any) -> None:
            if source == "/b":
                raise OSError(errno.EINVAL, "mount /b on /new/b: Invalid argument")
            real_mount(source, target, *args)

        monkeypatch.setattr(syscalls, "mount", refuse_b)
        try:
            switchroot.move_api_mounts("/new", warn, ("/a", "/b"))
        except OSError as err:
            return {"errno": err.errno, "a_back": os.path.ismount("/a"),
                    "a_gone": not os.path.ismount("/new/a")}
        return {"errno": None}

    result = in_namespace(body)
    assert result == {"errno": errno.EINVAL, "a_back": True, "a_gone": True}


def test_move_path_keeps_the_initramfs_when_the_move_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The move comes before the deletion: a failed move leaves every file in place."""

    def body() -> dict[str, Any]:
        scratch = str(tmp_path / "scratch")
        os.makedirs(scratch)
        syscalls.mount("scratch", scratch, "tmpfs", 0, "size=16m")
        initramfs = f"{scratch}/rootfs"
        populate_initramfs(initramfs)
        syscalls.mount("realroot", f"{initramfs}/sysroot", "tmpfs", 0, "size=16m")
        populate_root(f"{initramfs}/sysroot")
        os.chroot(initramfs)
        os.chdir("/")
        real_mount = syscalls.mount

        def refuse_move(source: str | None, target: str, *args: Any) -> None:
            if target == "/" and args[1:2] == (syscalls.MS_MOVE,):
                raise OSError(errno.EBUSY, "mount . on /: Device or resource busy")
            real_mount(source, target, *args)

        monkeypatch.setattr(syscalls, "mount", refuse_move)
        try:
            switchroot.switch_root("/sysroot")
        except OSError as err:
            return {"errno": err.errno, "left": sorted(os.listdir("/")), "cwd": os.getcwd()}
        return {"errno": None}

    result = in_namespace(body)
    assert result["errno"] == errno.EBUSY and result["cwd"] == "/"
    assert "init" in result["left"] and "usr" in result["left"]


def test_errors_after_the_point_of_no_return_are_reported_not_raised(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def body() -> dict[str, Any]:
        initramfs = mounted_initramfs(tmp_path)
        syscalls.mount("realroot", f"{initramfs}/sysroot", "tmpfs", 0, "size=16m")
        populate_root(f"{initramfs}/sysroot")
        os.chroot(initramfs)
        os.chdir("/")
        real_unlink = os.unlink

        def refuse(path: Any, *, dir_fd: int | None = None) -> None:
            if path == "init":
                raise OSError(errno.EPERM, "Operation not permitted")
            real_unlink(path, dir_fd=dir_fd)

        monkeypatch.setattr(os, "unlink", refuse)
        method, removed, errors = switchroot.switch_root("/sysroot")
        return {"method": method, "removed": removed, "errors": errors,
                "marker": open("/sbin/marker").read()}

    result = in_namespace(body)
    assert result["method"] == "pivot_root" and result["marker"] == "real root"
    assert result["errors"] == ["init: Operation not permitted"]
    assert result["removed"] == 12
