"""PID 1 duties: signals, Ctrl-Alt-Del, reaping, and a clean slate for the real init."""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Callable

from pyinit import syscalls


def reap() -> list[tuple[int, int]]:
    """Collect every child that has exited (orphans re-parented to PID 1 included)."""
    reaped = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        reaped.append((pid, status))
    return reaped


def children() -> list[int]:
    """PIDs whose parent is this process, from /proc."""
    me = str(os.getpid())
    found: list[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[1].decode() == me:
            found.append(int(entry))
    return found


def end_children(grace: float = 2.0) -> int:
    """SIGTERM every child, SIGKILL what is left after GRACE seconds, and reap them all.
    Returns how many there were."""
    pids = children()
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while children() and time.monotonic() < deadline:
        reap()
        time.sleep(0.02)
    for pid in children():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    while children():
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            break
    reap()
    return len(pids)


def take_over(on_ctrl_alt_del: Callable[[], None]) -> None:
    """As PID 1: Ctrl-Alt-Del arrives as SIGINT (not an instant kernel reboot) and runs
    ON_CTRL_ALT_DEL; the signals a terminal can send are ignored."""
    if os.getpid() != 1:
        return
    try:
        syscalls.reboot(syscalls.RB_DISABLE_CAD)
    except OSError:
        pass
    signal.signal(signal.SIGINT, lambda _signum, _frame: on_ctrl_alt_del())
    for signum in (signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGHUP,
                   signal.SIGQUIT):
        signal.signal(signum, signal.SIG_IGN)


def hand_back() -> int:
    """What the real init must start with: no children, default signal dispositions, an
    empty signal mask, no descriptors above 2, and the kernel's own Ctrl-Alt-Del.
    Returns the number of leftover children that had to be ended."""
    ended = end_children()
    for signum in range(1, signal.NSIG):
        try:
            signal.signal(signum, signal.SIG_DFL)
        except (OSError, ValueError):
            continue
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    os.closerange(3, 65536)
    if os.getpid() == 1:
        try:
            syscalls.reboot(syscalls.RB_ENABLE_CAD)
        except OSError as err:
            if err.errno != errno.EPERM:
                raise
    return ended
