"""The hand-over: check, move the API filesystems, then make the new root the process's root.

Everything that can refuse the hand-over is checked first (check()), while the rescue
console still has /proc, /sys and /dev. Then the API mounts move into the new root, and:

With the kernel's immutable nullfs root (Linux 7.0 and later) the initramfs is an ordinary
mount, so ``pivot_root(".", ".")`` stacks it on top of the new root and a lazy unmount
detaches it. Older kernels refuse that pivot (EINVAL: the initramfs is rootfs itself); then
the new root is moved on top of "/". On both paths the initramfs files are deleted
afterwards, through a descriptor kept on the old root, never crossing into other mounts.
Once the pivot or the move has succeeded there is no way back: nothing after it raises.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Sequence

from pyinit import execinit, syscalls
from pyinit.layout import API_MOUNTS

OS_RELEASE = ("etc/os-release", "usr/lib/os-release")


class HandOverError(OSError):
    """The hand-over was refused before anything was changed."""


def make_private(path: str = "/") -> None:
    """pivot_root and MS_MOVE fail with EINVAL on shared mounts."""
    syscalls.mount(None, path, None, syscalls.MS_REC | syscalls.MS_PRIVATE)


def check(new_root: str, requested: str | None, warn: Callable[..., None]) -> str:
    """Refuse, before anything changes, a hand-over that cannot work: / must be the
    initramfs (ramfs or tmpfs: never empty a real root), NEW_ROOT a mount point holding an
    init to run (REQUESTED, else the kernel's fallbacks), and an OS tree (os-release) when
    that init is systemd. Returns the init that will run."""
    magic = syscalls.fs_magic("/")
    if magic not in (syscalls.RAMFS_MAGIC, syscalls.TMPFS_MAGIC):
        raise HandOverError(errno.EINVAL, f"refusing to switch root: / is not an initramfs "
                            f"(expected ramfs or tmpfs, found filesystem magic {magic:#x})")
    if os.stat(new_root).st_dev == os.stat("/").st_dev:
        raise HandOverError(errno.EINVAL, f"{new_root} is not a mount point", new_root)
    found = execinit.choose(requested, new_root)
    usable = [path for path, problem in found if problem is None]
    if not usable:
        raise execinit.no_init([f"{path}: {problem}" for path, problem in found])
    init = usable[0]
    if not any(os.path.isfile(os.path.join(new_root, p)) for p in OS_RELEASE):
        text = (f"Specified switch root path '{new_root}' does not seem to be an OS tree. "
                "os-release file is missing.")
        if execinit.is_systemd(init, new_root):
            raise HandOverError(errno.ENOENT, text)  # systemd's own words for it
        warn("not_an_os_tree", root=new_root, init=init, reason=text)
    return init


def move_back(new_root: str, moved: Sequence[str]) -> None:
    """Undo move_api_mounts (a switch that failed): the console needs them where they were."""
    for mount in reversed(moved):
        try:
            syscalls.mount(new_root.rstrip("/") + mount, mount, None, syscalls.MS_MOVE)
        except OSError:
            continue


def move_api_mounts(new_root: str, warn: Callable[..., None],
                    mounts: Sequence[str] = API_MOUNTS) -> list[str]:
    """Move each mount under NEW_ROOT, making its directory there when it is missing. A
    directory a read-only root cannot get is reported (WARN) and its mount detached. When a
    move fails, the moves done so far are undone before raising. Returns what was moved."""
    moved: list[str] = []
    for mount in mounts:
        if not os.path.ismount(mount):
            continue
        target = new_root.rstrip("/") + mount
        if not os.path.isdir(target):
            try:
                os.mkdir(target, 0o755)
                warn("api_dir_created", path=target)
            except OSError as err:
                warn("api_mount_detached", mount=mount,
                     reason=f"{target}: {err.strerror}; the real init starts without {mount}")
                syscalls.umount2(mount, syscalls.MNT_DETACH)
                continue
        try:
            syscalls.mount(mount, target, None, syscalls.MS_MOVE)
        except OSError:
            move_back(new_root, moved)
            raise
        moved.append(mount)
    return moved


def delete_contents(dirfd: int, device: int, errors: list[str]) -> int:
    """Delete everything in the directory open at DIRFD that lives on DEVICE, never
    descending into other mounts. What cannot be deleted is added to ERRORS, not raised.
    Returns the number of entries removed."""
    removed = 0
    for entry in os.scandir(dirfd):
        name = entry.name
        try:
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            if st.st_dev != device:
                continue  # a mount point: its directory stays, its contents are not ours
            if stat.S_ISDIR(st.st_mode):
                sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                              dir_fd=dirfd)
                try:
                    removed += delete_contents(sub, device, errors)
                finally:
                    os.close(sub)
                os.rmdir(name, dir_fd=dirfd)
            else:
                os.unlink(name, dir_fd=dirfd)
            removed += 1
        except FileNotFoundError:
            continue
        except OSError as err:
            if err.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                errors.append(f"{name}: {err.strerror}")
    return removed


def switch_root(new_root: str) -> tuple[str, int, list[str]]:
    """Make NEW_ROOT (checked by check(), API mounts moved) the root of this process.

    Returns the method ("pivot_root" or "move"), the number of initramfs entries deleted and
    what could not be deleted. Raises only before the pivot or move succeeded. The files are
    deleted on the pivot path too: the kernel may keep the detached initramfs superblock
    alive (measured on Linux 7.2: its pages stayed Unevictable after the lazy unmount)."""
    old_root = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        old_dev = os.fstat(old_root).st_dev
        os.chdir(new_root)
        try:
            syscalls.pivot_root(".", ".")
        except OSError as err:
            if err.errno != errno.EINVAL:
                os.chdir("/")
                raise
            try:
                syscalls.mount(".", "/", None, syscalls.MS_MOVE)
            except OSError:
                os.chdir("/")
                raise
            method = "move"
        else:
            method = "pivot_root"
        # The point of no return: from here on nothing raises.
        errors: list[str] = []
        if method == "pivot_root":
            try:
                syscalls.umount2(".", syscalls.MNT_DETACH)
            except OSError as err:
                errors.append(f"umount of the old root: {err.strerror}")
        try:
            os.chroot(".")
            os.chdir("/")
        except OSError as err:  # cannot happen to root in a pivoted or moved root; if it
            errors.append(f"chroot .: {err.strerror}")  # does, the exec names what is wrong
        try:
            removed = delete_contents(old_root, old_dev, errors)
        except OSError as err:
            errors.append(f"the old root: {err.strerror}")
            removed = 0
        return method, removed, errors
    finally:
        os.close(old_root)
