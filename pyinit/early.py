"""The hardware first: /init mounts the API filesystems and starts a child that loads the
modules for the devices that exist (coldplug, rd.driver.pre first), before the init imports
its logging and udev libraries. With more than one CPU the kernel probes the disks while
Python imports; the modules stage collects what the child did and logs it.

The child needs only what is imported here (os, the cffi module, the module index), so the
fork costs no import twice. What it did comes back as JSON on a pipe: the events it would
have logged, the modules it loaded, the devices it looked at, and an error if it failed (the
modules stage then fails with it, and a retried stage loads in process).
"""

from __future__ import annotations

import json
import os
import select
import signal
import time
from typing import Any, NamedTuple

from pyinit import cmdline, coldplug, kmod, syscalls

COLLECT_TIMEOUT = 300.0  # module loads that hang the kernel for this long are a failure too


class Done(NamedTuple):
    """What the early child did."""

    events: list[tuple[str, dict[str, Any]]]
    loaded: list[str]
    seen: dict[str, str]
    error: str | None


NOTHING = Done([], [], {}, None)
_CHILD: list[tuple[int, int]] = []  # (pid, read end) of the running child


def mount_api() -> None:
    """The API filesystems, then stdio on /dev/console."""
    table = (
        ("proc", "/proc", "proc", syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC,
         None),
        ("sysfs", "/sys", "sysfs", syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC,
         None),
        ("devtmpfs", "/dev", "devtmpfs", syscalls.MS_NOSUID, "mode=0755"),
        # As systemd's initrd interface asks; the hand-over moves it into the real root.
        ("tmpfs", "/run", "tmpfs",
         syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_STRICTATIME, "mode=0755"),
    )
    for source, target, fstype, flags, data in table:
        os.makedirs(target, exist_ok=True)
        if not os.path.ismount(target):
            syscalls.mount(source, target, fstype, flags, data)
    reopen_console()


def reopen_console() -> None:
    """Put fds 0-2 on devtmpfs's /dev/console. The kernel opened the archive's own
    dev/console for us; left open, those fds would pin the initramfs after the hand-over."""
    try:
        console = os.open("/dev/console", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return  # keep whatever the kernel gave us
    for fd in (0, 1, 2):
        os.dup2(console, fd)
    if console > 2:
        os.close(console)


def _child(write_end: int) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    loader: kmod.Loader | None = None
    seen: dict[str, str] = {}
    error = None
    try:
        options = cmdline.read(())
        loader = kmod.Loader(kmod.running_kernel_index(), options.blacklist,
                             on_event=lambda event, **fields: events.append((event, fields)))
        loader.load_all(options.driver_pre, reason="rd.driver.pre")
        coldplug.coldplug(loader, seen=seen)
    except Exception as err:  # reported to the modules stage, which fails with it
        error = getattr(err, "strerror", None) or str(err)
    result = {"events": events, "loaded": loader.loaded_here if loader else [],
              "seen": seen, "error": error}
    data = json.dumps(result, default=str).encode()
    while data:
        data = data[os.write(write_end, data):]


def start() -> None:
    """Fork the coldplug child (PID 1's mounts first). Never raises: when anything fails
    here the init's own run meets it again, with its logging and failure path in place,
    and the modules stage does all the loading."""
    try:
        mount_api()
        read_end, write_end = os.pipe()
        pid = os.fork()
    except OSError:
        return
    if pid == 0:
        try:
            os.close(read_end)
            _child(write_end)
        finally:
            os._exit(0)
    os.close(write_end)
    _CHILD.append((pid, read_end))


def collect(timeout: float = COLLECT_TIMEOUT) -> Done:
    """What the child did (NOTHING when none ran, or once collected)."""
    if not _CHILD:
        return NOTHING
    pid, read_end = _CHILD.pop()
    deadline = time.monotonic() + timeout
    chunks = []
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read_end], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                return Done([], [], {}, f"loading the coldplug modules took more than "
                                        f"{timeout:g} s")
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_end)
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass  # reaped already
    try:
        result = json.loads(b"".join(chunks))
        return Done([(e, f) for e, f in result["events"]], result["loaded"], result["seen"],
                    result["error"])
    except (ValueError, KeyError, TypeError) as err:
        return Done([], [], {}, f"the coldplug child's report is unreadable: {err}")
