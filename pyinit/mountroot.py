"""Mount the root filesystem on /sysroot: rootfstype (or the probed type), rootflags, ro/rw."""

from __future__ import annotations

import errno
import os

from pyinit import kernlog, syscalls

_FLAGS = {
    "ro": (syscalls.MS_RDONLY, True),
    "rw": (syscalls.MS_RDONLY, False),
    "nosuid": (syscalls.MS_NOSUID, True),
    "suid": (syscalls.MS_NOSUID, False),
    "nodev": (syscalls.MS_NODEV, True),
    "dev": (syscalls.MS_NODEV, False),
    "noexec": (syscalls.MS_NOEXEC, True),
    "exec": (syscalls.MS_NOEXEC, False),
    "sync": (syscalls.MS_SYNCHRONOUS, True),
    "async": (syscalls.MS_SYNCHRONOUS, False),
    "dirsync": (syscalls.MS_DIRSYNC, True),
    "noatime": (syscalls.MS_NOATIME, True),
    "atime": (syscalls.MS_NOATIME, False),
    "nodiratime": (syscalls.MS_NODIRATIME, True),
    "diratime": (syscalls.MS_NODIRATIME, False),
    "relatime": (syscalls.MS_RELATIME, True),
    "norelatime": (syscalls.MS_RELATIME, False),
    "strictatime": (syscalls.MS_STRICTATIME, True),
    "lazytime": (syscalls.MS_LAZYTIME, True),
    "nolazytime": (syscalls.MS_LAZYTIME, False),
    "defaults": (0, True),
}


# Filesystems that are read-only by design: mounted ro whatever the line says, never fscked.
READ_ONLY = ("squashfs", "erofs", "iso9660", "cramfs")


class MountError(OSError):
    """The root could not be mounted; the message names device, type and options."""


def split_options(options: str | None, read_only: bool) -> tuple[int, str]:
    """rootflags= -> (MS_* flags, filesystem-specific data). ro/rw on the line come first."""
    flags = syscalls.MS_RDONLY if read_only else 0
    data = []
    for option in (options or "").split(","):
        option = option.strip()
        if not option:
            continue
        if option in _FLAGS:
            bit, on = _FLAGS[option]
            flags = flags | bit if on else flags & ~bit
        else:
            data.append(option)
    return flags, ",".join(data)


def filesystems(proc_filesystems: str = "/proc/filesystems", nodev: bool = False) -> list[str]:
    """Block-device filesystem types the kernel knows now (modules loaded so far included);
    with NODEV, those that need no device too (tmpfs, overlay)."""
    try:
        with open(proc_filesystems, encoding="utf-8") as fh:
            return [line.split()[-1] for line in fh
                    if line.strip() and (nodev or not line.startswith("nodev"))]
    except OSError:
        return []


def mount_root(device: str, target: str, fstype: str | None, probed_type: str | None,
               rootflags: str | None, read_only: bool) -> str:
    """Mount DEVICE on TARGET; returns the type that worked. Raises MountError, with the
    kernel's own words on why (a filesystem's or verity's) when it logged any."""
    watch = kernlog.Watch()
    try:
        return _mount(device, target, fstype, probed_type, rootflags, read_only, watch)
    finally:
        watch.close()


def _mount(device: str, target: str, fstype: str | None, probed_type: str | None,
           rootflags: str | None, read_only: bool, watch: kernlog.Watch) -> str:
    flags, data = split_options(rootflags, read_only)
    os.makedirs(target, exist_ok=True)
    if fstype:
        candidates = [t for t in fstype.split(",") if t]
    elif probed_type:
        candidates = [probed_type]
    else:
        candidates = filesystems()
    errors = []
    for candidate in candidates:
        try:
            syscalls.mount(device, target, candidate, flags, data or None)
            return candidate
        except OSError as err:
            errors.append(f"{candidate}: {os.strerror(err.errno or 0)}")
            if err.errno == errno.EACCES and not flags & syscalls.MS_RDONLY:
                # Write-protected media: the kernel retries read-only too.
                try:
                    syscalls.mount(device, target, candidate, flags | syscalls.MS_RDONLY,
                                   data or None)
                    return candidate
                except OSError as err2:
                    errors.append(f"{candidate} (read-only): {os.strerror(err2.errno or 0)}")
    known = ", ".join(filesystems()) or "none"
    tried = "; ".join(errors) or "no filesystem type to try"
    raise MountError(
        errno.EINVAL,
        f"cannot mount {device} on {target} ({'ro' if flags & syscalls.MS_RDONLY else 'rw'}"
        f"{', ' + data if data else ''}): {tried}; the kernel knows: {known}"
        f"{kernlog.quoted(watch.lines())}",
    )
