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


def describe(pid: int) -> str:
    """PID (name, state) from /proc, for a report of what would not end."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            head, tail = fh.read().rsplit(b")", 1)
        return f"{pid} ({head.split(b'(', 1)[1].decode(errors='replace')}, state " \
               f"{tail.split()[0].decode()})"
    except (OSError, IndexError):
        return str(pid)


def end_children(grace: float = 2.0, kill_wait: float = 5.0) -> tuple[int, list[str]]:
    """SIGTERM every child, SIGKILL what is left after GRACE seconds, and reap them all,
    waiting at most KILL_WAIT seconds more: a child stuck in the kernel (state D) cannot
    hang PID 1. Returns how many there were and what was still there at the end."""
    pids = children()
    for signum, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, kill_wait)):
        for pid in children():
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while children() and time.monotonic() < deadline:
            reap()
            time.sleep(0.02)
    reap()
    return len(pids), [describe(pid) for pid in children()]


def _ignore(_signum: int, _frame: object) -> None:
    """Stands in for SIG_IGN: a caught signal is reset to its default across exec, so the
    children PID 1 starts (shells, fsck, udevd) get default dispositions; an ignored one
    would stay ignored in them."""


def take_over(on_ctrl_alt_del: Callable[[], None]) -> None:
    """As PID 1: Ctrl-Alt-Del arrives as SIGINT (not an instant kernel reboot) and runs
    ON_CTRL_ALT_DEL; the signals a terminal can send are caught and dropped."""
    if os.getpid() != 1:
        return
    try:
        syscalls.reboot(syscalls.RB_DISABLE_CAD)
    except OSError:
        pass
    signal.signal(signal.SIGINT, lambda _signum, _frame: on_ctrl_alt_del())
    drop_terminal_signals()


TERMINAL_SIGNALS = (signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGHUP,
                    signal.SIGQUIT)


def drop_terminal_signals() -> None:
    """Catch and drop the signals a terminal can send (see _ignore for why not SIG_IGN)."""
    for signum in TERMINAL_SIGNALS:
        signal.signal(signum, _ignore)


def hand_back() -> tuple[int, list[str]]:
    """What the real init must start with: no children, default signal dispositions, an
    empty signal mask, no descriptors above 2, and the kernel's own Ctrl-Alt-Del.
    Returns the number of leftover children that had to be ended, and any that would not."""
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
