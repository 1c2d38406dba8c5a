"""/shutdown: what systemd-shutdown runs once it has pivoted back into /run/initramfs, to
take down the storage stack the root was on (systemd's "initrd interface").

At the end of a shutdown systemd unmounts what it can, then, when /run/initramfs/shutdown
is executable, pivots there (the old root at /oldroot) and executes it with the verb
(reboot, poweroff, halt or kexec) as argv[1]. The root's stack (LVM on LUKS, RAID1) is busy
until the old root is unmounted, which only this side of the pivot can do. Then every
device-mapper device nobody uses is removed (DM_REMOVE_ALL: dm-crypt's keys go with its
table), md arrays are stopped, and the machine goes down.

The image comes back at shutdown time: pyinit's shutdown unit unpacks /boot's image into
/run/initramfs (``pyinit-mkinitramfs --prepare-shutdown``), as dracut does, so nothing of
it holds memory while the system runs. Images without dm or md stacks have no /shutdown.
"""

from __future__ import annotations

import fcntl
import os
import struct
import sys

from pyinit import syscalls

OLD_ROOT = "/oldroot"
DM_CONTROL = "/dev/mapper/control"
# struct dm_ioctl (linux/dm-ioctl.h), version 4.0.0: 312 bytes, name and uuid included.
DM_IOCTL = struct.Struct("=3I7I Q 128s 129s 7s")
DM_REMOVE_ALL = (3 << 30) | (DM_IOCTL.size << 16) | (0xFD << 8) | 1  # _IOWR(0xfd, 1, ...)
MD_STOP_ARRAY = (9 << 8) | 0x32  # _IO(MD_MAJOR, 0x32)
RB_KEXEC = 0x45584543  # LINUX_REBOOT_CMD_KEXEC: the kernel systemd loaded with kexec
VERBS = {**syscalls.POWER_ACTIONS, "kexec": RB_KEXEC}


def say(text: str) -> None:
    line = f"pyinit-shutdown: {text}\n".encode(errors="replace")
    for path in ("/dev/kmsg", "/dev/console"):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            os.write(fd, line)
            return
        except OSError:
            continue
        finally:
            os.close(fd)


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (\\040)."""
    parts = field.split("\\")
    out = parts[0]
    for part in parts[1:]:
        if len(part) >= 3 and all(c in "01234567" for c in part[:3]):
            out += chr(int(part[:3], 8)) + part[3:]
        else:
            out += "\\" + part
    return out


def mounts_under(top: str, mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """Mount points at or under TOP, deepest first (the order to unmount them in)."""
    found = []
    with open(mountinfo, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            point = _unescape(line.split()[4])
            if point == top or point.startswith(top.rstrip("/") + "/"):
                found.append(point)
    return sorted(dict.fromkeys(found), key=lambda p: (-p.count("/"), p))


def unmount_old_root(top: str = OLD_ROOT) -> list[str]:
    """Unmount everything under TOP; what will not unmount is detached lazily, and a
    mount that refuses both is remounted read-only. Returns what failed."""
    failed = []
    for point in mounts_under(top):
        try:
            syscalls.umount2(point, 0)
        except OSError:
            try:
                syscalls.umount2(point, syscalls.MNT_DETACH)
            except OSError as err:
                failed.append(f"{point}: {err.strerror}")
                try:
                    syscalls.mount(None, point, None, syscalls.MS_REMOUNT | syscalls.MS_RDONLY)
                except OSError:
                    pass
    return failed


def dm_remove_all(control: str = DM_CONTROL) -> None:
    """Remove every device-mapper device nobody has open (the kernel retries stacked ones)."""
    args = bytearray(DM_IOCTL.pack(4, 0, 0, DM_IOCTL.size, DM_IOCTL.size, 0, 0, 0, 0, 0, 0,
                                   b"", b"", b""))
    fd = os.open(control, os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, DM_REMOVE_ALL, args)
    finally:
        os.close(fd)


def dm_devices(sys_block: str = "/sys/block") -> list[str]:
    return sorted(n for n in _names(sys_block) if n.startswith("dm-"))


def md_arrays(sys_block: str = "/sys/block") -> list[str]:
    return sorted(n for n in _names(sys_block) if n.startswith("md"))


def _names(directory: str) -> list[str]:
    try:
        return os.listdir(directory)
    except OSError:
        return []


def stop_md(name: str) -> None:
    fd = os.open(f"/dev/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, MD_STOP_ARRAY)
    finally:
        os.close(fd)


def take_down() -> list[str]:
    """The old root, then the dm and md devices under it; returns what is left."""
    left = unmount_old_root()
    for _ in range(3):  # md over dm or dm over md: a round each way
        if dm_devices():
            try:
                dm_remove_all()
            except OSError as err:
                left.append(f"device-mapper: {err.strerror}")
        for name in md_arrays():
            try:
                stop_md(name)
            except OSError:
                continue
        if not dm_devices() and not md_arrays():
            break
    left += [f"/dev/{n} still active" for n in dm_devices() + md_arrays()]
    return left


def main(argv: list[str]) -> None:
    """Take the stack down and end the machine as VERB says; never returns, never raises
    (this is PID 1: an exception would be a kernel panic instead of the power-off)."""
    verb = argv[1] if len(argv) > 1 and argv[1] in VERBS else "poweroff"
    try:
        left = take_down()
    except Exception as err:  # report and go on: the machine must still go down
        left = [f"{type(err).__name__}: {err}"]
    if left:
        say("could not take down: " + "; ".join(left))
    else:
        say("storage stack taken down")
    os.sync()
    try:
        syscalls.reboot(VERBS[verb])
    except OSError as err:
        say(f"{verb} failed: {err.strerror}")
        if verb == "kexec":  # nothing loaded after all: reboot the ordinary way
            try:
                syscalls.reboot(syscalls.RB_AUTOBOOT)
            except OSError:
                pass
    while True:  # PID 1 must not exit
        os.read(os.pipe()[0], 1)


if __name__ == "__main__":
    main(sys.argv)
