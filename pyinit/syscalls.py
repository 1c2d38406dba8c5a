"""Typed wrappers over the cffi module: each call checks its result and raises OSError.

The OSError carries errno, strerror and the path(s) involved, so a failure message can say
exactly which mount or which module failed and why.
"""

from __future__ import annotations

import errno
import os

from pyinit._syscalls import ffi, lib

MS_RDONLY: int = lib.MS_RDONLY
MS_NOSUID: int = lib.MS_NOSUID
MS_NODEV: int = lib.MS_NODEV
MS_NOEXEC: int = lib.MS_NOEXEC
MS_SYNCHRONOUS: int = lib.MS_SYNCHRONOUS
MS_REMOUNT: int = lib.MS_REMOUNT
MS_MANDLOCK: int = lib.MS_MANDLOCK
MS_DIRSYNC: int = lib.MS_DIRSYNC
MS_NOATIME: int = lib.MS_NOATIME
MS_NODIRATIME: int = lib.MS_NODIRATIME
MS_BIND: int = lib.MS_BIND
MS_MOVE: int = lib.MS_MOVE
MS_REC: int = lib.MS_REC
MS_SILENT: int = lib.MS_SILENT
MS_UNBINDABLE: int = lib.MS_UNBINDABLE
MS_PRIVATE: int = lib.MS_PRIVATE
MS_SLAVE: int = lib.MS_SLAVE
MS_SHARED: int = lib.MS_SHARED
MS_RELATIME: int = lib.MS_RELATIME
MS_STRICTATIME: int = lib.MS_STRICTATIME
MS_LAZYTIME: int = lib.MS_LAZYTIME

MNT_FORCE: int = lib.MNT_FORCE
MNT_DETACH: int = lib.MNT_DETACH
MNT_EXPIRE: int = lib.MNT_EXPIRE
UMOUNT_NOFOLLOW: int = lib.UMOUNT_NOFOLLOW

MODULE_INIT_IGNORE_MODVERSIONS: int = lib.MODULE_INIT_IGNORE_MODVERSIONS
MODULE_INIT_IGNORE_VERMAGIC: int = lib.MODULE_INIT_IGNORE_VERMAGIC
MODULE_INIT_COMPRESSED_FILE: int = lib.MODULE_INIT_COMPRESSED_FILE

RB_AUTOBOOT: int = lib.RB_AUTOBOOT
RB_HALT_SYSTEM: int = lib.RB_HALT_SYSTEM
RB_POWER_OFF: int = lib.RB_POWER_OFF
RB_ENABLE_CAD: int = lib.RB_ENABLE_CAD
RB_DISABLE_CAD: int = lib.RB_DISABLE_CAD
# The words rd.emergency= and systemd-shutdown use, and the reboot(2) command of each.
POWER_ACTIONS = {"reboot": RB_AUTOBOOT, "poweroff": RB_POWER_OFF, "halt": RB_HALT_SYSTEM}


def _fail(what: str, path: str | None = None, path2: str | None = None) -> OSError:
    err = ffi.errno
    message = f"{what}: {os.strerror(err)}"
    if path2 is not None:
        return OSError(err, message, path, None, path2)
    return OSError(err, message, path)


def _c(value: str | None) -> object:
    return ffi.NULL if value is None else value.encode()


RAMFS_MAGIC: int = lib.RAMFS_MAGIC
TMPFS_MAGIC: int = lib.TMPFS_MAGIC


def fs_magic(path: str) -> int:
    """statfs(2) f_type of the filesystem holding PATH."""
    buf = ffi.new("struct statfs *")
    if lib.statfs(path.encode(), buf) != 0:
        raise _fail(f"statfs {path}", path)
    return int(buf.f_type)


def mount(
    source: str | None,
    target: str,
    fstype: str | None = None,
    flags: int = 0,
    data: str | None = None,
) -> None:
    """mount(2). ``source`` is named in the error, ``target`` is the error's filename."""
    if lib.mount(_c(source), target.encode(), _c(fstype), flags, _c(data)) != 0:
        what = f"mount {source or 'none'} on {target}"
        if fstype:
            what += f" type {fstype}"
        if data:
            what += f" ({data})"
        raise _fail(what, target)


def umount2(target: str, flags: int = 0) -> None:
    """umount2(2)."""
    if lib.umount2(target.encode(), flags) != 0:
        raise _fail(f"umount {target}", target)


CLONE_NEWNS: int = lib.CLONE_NEWNS


def unshare(flags: int) -> None:
    """unshare(2) (os.unshare exists only from Python 3.12)."""
    if lib.unshare(flags) != 0:
        raise _fail(f"unshare {flags:#x}")


def pivot_root(new_root: str, put_old: str) -> None:
    """pivot_root(2), through syscall(2): glibc has no wrapper."""
    if lib.pyinit_pivot_root(new_root.encode(), put_old.encode()) != 0:
        raise _fail(f"pivot_root {new_root} {put_old}", new_root, put_old)


def finit_module(fd: int, params: str = "", flags: int = 0, name: str = "") -> None:
    """finit_module(2), through syscall(2). ``name`` only labels the error."""
    if lib.pyinit_finit_module(fd, params.encode(), flags) != 0:
        raise _fail(f"finit_module {name or fd}", name or None)


def reboot(cmd: int) -> None:
    """reboot(2). Only returns (or raises) for RB_ENABLE_CAD/RB_DISABLE_CAD or on error."""
    signed = cmd - (1 << 32) if cmd >= 1 << 31 else cmd  # the magic numbers exceed INT_MAX
    if lib.reboot(signed) != 0:
        raise _fail(f"reboot {cmd:#x}")


def probe_block(path: str) -> dict[str, str]:
    """Probe a block device (or image file) with libblkid, as udev's builtin blkid does.

    Returns the superblock values (TYPE, UUID, LABEL, ...) and the partition-entry values
    (PART_ENTRY_UUID, PART_ENTRY_NAME, ...); an empty dict when nothing is recognised.
    Raises OSError when the device cannot be opened or the probe itself fails.
    """
    ffi.errno = 0
    probe = lib.blkid_new_probe_from_filename(path.encode())
    if probe == ffi.NULL:
        raise _fail(f"blkid probe {path}", path)
    try:
        lib.blkid_probe_enable_superblocks(probe, 1)
        lib.blkid_probe_set_superblocks_flags(
            probe,
            lib.BLKID_SUBLKS_LABEL
            | lib.BLKID_SUBLKS_UUID
            | lib.BLKID_SUBLKS_TYPE
            | lib.BLKID_SUBLKS_USAGE
            | lib.BLKID_SUBLKS_VERSION,
        )
        lib.blkid_probe_enable_partitions(probe, 1)
        lib.blkid_probe_set_partitions_flags(probe, lib.BLKID_PARTS_ENTRY_DETAILS)
        rc = lib.blkid_do_safeprobe(probe)
        if rc == -2:
            raise OSError(
                errno.EEXIST, f"blkid probe {path}: ambivalent result (more than one signature)"
            )
        if rc < 0:
            raise _fail(f"blkid probe {path}", path)
        values: dict[str, str] = {}
        name = ffi.new("const char **")
        data = ffi.new("const char **")
        size = ffi.new("size_t *")
        for i in range(lib.blkid_probe_numof_values(probe)):
            if lib.blkid_probe_get_value(probe, i, name, data, size) == 0:
                raw = ffi.string(data[0])
                values[ffi.string(name[0]).decode()] = raw.decode("utf-8", "replace")
        return values
    finally:
        lib.blkid_free_probe(probe)


KEY_SPEC_THREAD_KEYRING: int = lib.KEY_SPEC_THREAD_KEYRING


def add_key(kind: str, description: str, payload: bytes, keyring: int) -> int:
    """add_key(2), through syscall(2); returns the key's serial number."""
    serial = int(lib.pyinit_add_key(kind.encode(), description.encode(), payload,
                                    len(payload), keyring))
    if serial < 0:
        raise _fail(f"add_key {kind} {description}")
    return serial


def invalidate_key(serial: int) -> None:
    """keyctl(KEYCTL_INVALIDATE): the key is gone at once."""
    if lib.pyinit_keyctl(lib.KEYCTL_INVALIDATE, serial) < 0:
        raise _fail(f"keyctl invalidate {serial}")
