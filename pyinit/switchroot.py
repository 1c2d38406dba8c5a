"""The hand-over: move the API filesystems, then make the new root the process's root.

With the kernel's immutable nullfs root (Linux 7.0 and later) the initramfs is an ordinary
mount, so ``pivot_root(".", ".")`` stacks it on top of the new root and a lazy unmount
detaches it; the kernel frees its memory when the last user is gone. Older kernels refuse
that pivot (EINVAL: the initramfs is rootfs itself); then the initramfs files are deleted,
without crossing into other mounts, and the new root is moved on top of "/".
"""

from __future__ import annotations

import errno
import os
import stat

from pyinit import syscalls
from pyinit.layout import API_MOUNTS


def make_private(path: str = "/") -> None:
    """pivot_root and MS_MOVE fail with EINVAL on shared mounts."""
    syscalls.mount(None, path, None, syscalls.MS_REC | syscalls.MS_PRIVATE)


def move_api_mounts(new_root: str, mounts: tuple[str, ...] = API_MOUNTS) -> list[str]:
    """Move each mount under NEW_ROOT; one the new root has no directory for is detached."""
    detached = []
    for mount in mounts:
        if not os.path.ismount(mount):
            continue
        target = new_root.rstrip("/") + mount
        if os.path.isdir(target):
            syscalls.mount(mount, target, None, syscalls.MS_MOVE)
        else:
            syscalls.umount2(mount, syscalls.MNT_DETACH)
            detached.append(mount)
    return detached


def delete_contents(dirfd: int, device: int) -> int:
    """Delete everything in the directory open at DIRFD that lives on DEVICE, never
    descending into other mounts. Returns the number of entries removed."""
    removed = 0
    for entry in os.scandir(dirfd):
        name = entry.name
        try:
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if st.st_dev != device:
            continue  # a mount point: its directory stays, its contents are not ours
        if stat.S_ISDIR(st.st_mode):
            sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=dirfd)
            try:
                removed += delete_contents(sub, device)
            finally:
                os.close(sub)
            try:
                os.rmdir(name, dir_fd=dirfd)
                removed += 1
            except OSError as err:
                if err.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                    raise
        else:
            os.unlink(name, dir_fd=dirfd)
            removed += 1
    return removed


def switch_root(new_root: str) -> tuple[str, int]:
    """Make NEW_ROOT the root of this process.

    Returns the method ("pivot_root" or "move") and the number of initramfs entries deleted.
    The initramfs files are deleted on both paths: on the pivot path too, because the
    kernel may keep the detached initramfs superblock alive (measured on Linux 7.2: its
    pages stayed Unevictable after the lazy unmount), and deleting frees them for certain.
    """
    magic = syscalls.fs_magic("/")
    if magic not in (syscalls.RAMFS_MAGIC, syscalls.TMPFS_MAGIC):
        # The initramfs is ramfs or tmpfs; anything else is a real root we must not empty.
        raise OSError(errno.EINVAL, f"refusing to switch root: / is not an initramfs "
                      f"(expected ramfs or tmpfs, found filesystem magic {magic:#x})")
    old_root = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        old_dev = os.fstat(old_root).st_dev
        os.chdir(new_root)
        if os.stat(".").st_dev == old_dev:
            raise OSError(errno.EINVAL, f"{new_root} is not a mount point", new_root)
        try:
            syscalls.pivot_root(".", ".")
        except OSError as err:
            if err.errno != errno.EINVAL:
                raise
            removed = delete_contents(old_root, old_dev)
            syscalls.mount(".", "/", None, syscalls.MS_MOVE)
            method = "move"
        else:
            syscalls.umount2(".", syscalls.MNT_DETACH)
            removed = delete_contents(old_root, old_dev)
            method = "pivot_root"
        os.chroot(".")
        os.chdir("/")
        return method, removed
    finally:
        os.close(old_root)
