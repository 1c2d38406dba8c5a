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
KILL_WAIT = 5.0  # seconds a killed child may take to go (one stuck in the kernel does not)
# Stages the person asked to stop before: nothing may load ahead of them.
BREAKS_BEFORE_LOADING = ("cmdline", "modules")


class Done(NamedTuple):
    """What the early child did."""

    events: list[tuple[str, dict[str, Any]]]
    loaded: list[str]
    seen: dict[str, str]
    error: str | None


def nothing() -> Done:
    """No child ran (or its report was collected): the modules stage does all the loading.
    A new value each time: the stage updates SEEN."""
    return Done([], [], {}, None)


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


class _Skipped(Exception):
    """rd.break asks for the console before anything loads."""


def _child(write_end: int) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    loader: kmod.Loader | None = None
    seen: dict[str, str] = {}
    error = None
    try:
        options = cmdline.read(())
        if set(BREAKS_BEFORE_LOADING) & options.breaks:
            events.append(("early_skipped", {"reason": "rd.break before the modules"}))
            raise _Skipped
        loader = kmod.Loader(kmod.running_kernel_index(), options.blacklist,
                             on_event=lambda event, **fields: events.append((event, fields)))
        loader.load_all(options.driver_pre, reason="rd.driver.pre")
        coldplug.coldplug(loader, seen=seen)
    except _Skipped:
        pass
    except Exception as err:  # reported to the modules stage, which fails with it
        error = getattr(err, "strerror", None) or f"{type(err).__name__}: {err}"
    result = {"events": events, "loaded": loader.loaded_here if loader else [],
              "seen": seen, "error": error}
    data = json.dumps(result, default=str).encode()
    while data:
        data = data[os.write(write_end, data):]


OFF = "pyinit.early=0"  # on the kernel command line: no early child (to compare boots)


def wanted(proc_cmdline: str = "/proc/cmdline") -> bool:
    """Whether the command line leaves the early start on (a plain word test: the parser
    runs later, in the child or the init)."""
    with open(proc_cmdline, "rb") as fh:
        return OFF.encode() not in fh.read().split()


def start() -> None:
    """Fork the coldplug child (PID 1's mounts first). Never raises: when anything fails
    here the init's own run meets it again, with its logging and failure path in place,
    and the modules stage does all the loading."""
    try:
        mount_api()
        if not wanted():
            return
        read_end, write_end = os.pipe()
    except Exception:
        return
    try:
        pid = os.fork()
    except OSError:
        os.close(read_end)
        os.close(write_end)
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
    """What the child did (nothing() when none ran, or once collected)."""
    if not _CHILD:
        return nothing()
    pid, read_end = _CHILD.pop()
    deadline = time.monotonic() + timeout
    chunks = []
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read_end], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                status = "" if _reap(pid, KILL_WAIT) else (
                    f"; the child (pid {pid}) is still there {KILL_WAIT:g} s after SIGKILL, "
                    "stuck in the kernel")
                pid = 0
                return Done([], [], {}, f"loading the coldplug modules took more than "
                                        f"{timeout:g} s{status}")
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_end)
        if pid:
            _reap(pid, KILL_WAIT)
    if not chunks:
        return Done([], [], {}, "the coldplug child ended without a report (it crashed)")
    try:
        result = json.loads(b"".join(chunks))
        return Done([(e, f) for e, f in result["events"]], result["loaded"], result["seen"],
                    result["error"])
    except (ValueError, KeyError, TypeError) as err:
        return Done([], [], {}, f"the coldplug child's report is unreadable: {err}")


def _reap(pid: int, timeout: float) -> bool:
    """Wait up to TIMEOUT for PID to end; whether it did (or was reaped already)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
