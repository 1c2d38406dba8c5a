"""The hardware first: /init mounts the API filesystems and starts a thread that loads the
modules for the devices that exist (coldplug, rd.driver.pre first), before the init imports
its logging and udev libraries. finit_module runs without the interpreter lock (cffi drops
it around C calls), so with more than one CPU the kernel probes the disks while Python
imports; with one, the work is the same as loading after the imports. The modules stage
collects what the thread did and logs it.

The thread needs only what is imported here (os, the cffi module, the module index). A
thread, not a child process: a fork under qemu TCG pays a copy-on-write fault for every
page the importing parent touches (measured: up to 1.2 s on one vCPU), and a thread shares
what it found without a pipe. What it did comes back as a Done: the events it would have
logged, the modules it loaded, the devices it looked at, and an error if it failed (the
modules stage then fails with it, and a retried stage loads in the init itself).

Off unless the command line says pyinit.early=1. bench/boot.py (3 boots per image, both
kernels, 1 and 2 vCPUs, images one after another) measured the init 8-32% slower with it
than without, in all four cells; an A/B of 7 interleaved boots measured it even on one vCPU
and 0.06-0.15 s ahead on two. The rule for keeping it on (gains on two CPUs, costs nothing
on one) is not met reliably, so it is a switch until a quieter measurement says otherwise.
"""

from __future__ import annotations

import os
import threading
from typing import Any, NamedTuple

from pyinit import cmdline, coldplug, kmod, syscalls

COLLECT_TIMEOUT = 300.0  # module loads that hang the kernel for this long are a failure too
# Stages the person asked to stop before: nothing may load ahead of them.
BREAKS_BEFORE_LOADING = ("cmdline", "modules")


class Done(NamedTuple):
    """What the early thread did."""

    events: list[tuple[str, dict[str, Any]]]
    loaded: list[str]
    seen: dict[str, str]
    error: str | None


def nothing() -> Done:
    """No thread ran (or its report was collected): the modules stage does all the
    loading. A new value each time: the stage updates SEEN."""
    return Done([], [], {}, None)


# The running thread and where it leaves its Done.
_RUNNING: list[tuple[threading.Thread, list[Done]]] = []


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


def load(report: list[Done]) -> None:
    """The thread's body: rd.driver.pre, then coldplug; what it did appended to REPORT."""
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
    report.append(Done(events, loader.loaded_here if loader else [], seen, error))


ON = "pyinit.early=1"  # on the kernel command line: the early thread (to compare boots)


def wanted(proc_cmdline: str = "/proc/cmdline") -> bool:
    """Whether the command line turns the early start on (a plain word test: the parser
    runs later, in the thread or the init)."""
    with open(proc_cmdline, "rb") as fh:
        return ON.encode() in fh.read().split()


def start() -> None:
    """Start the coldplug thread (PID 1's mounts first). Never raises: when anything fails
    here the init's own run meets it again, with its logging and failure path in place,
    and the modules stage does all the loading."""
    try:
        mount_api()
        if not wanted():
            return
        report: list[Done] = []
        thread = threading.Thread(target=load, args=(report,), name="pyinit-early",
                                  daemon=True)
        thread.start()
    except Exception:
        return
    _RUNNING.append((thread, report))


def collect(timeout: float = COLLECT_TIMEOUT) -> Done:
    """What the thread did (nothing() when none ran, or once collected)."""
    if not _RUNNING:
        return nothing()
    thread, report = _RUNNING.pop()
    thread.join(timeout)
    if thread.is_alive():
        return Done([], [], {}, f"loading the coldplug modules took more than {timeout:g} s "
                                "(a module's load is stuck in the kernel)")
    if not report:
        return Done([], [], {}, "the coldplug thread ended without a report")
    return report[0]
