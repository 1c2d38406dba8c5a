"""PID 1 of the initramfs: the boot sequence, top to bottom."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn, TypeVar

from pyinit import cmdline, layout, lazyimport, log, pid1, rescue, syscalls
from pyinit.cmdline import Options

if TYPE_CHECKING:
    from pyinit.uevents import Hotplug

T = TypeVar("T")
SYSROOT = layout.SYSROOT


def early_mounts() -> None:
    """Stage 1: the API filesystems, then stdio on /dev/console."""
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


DEFAULTS = layout.DEFAULT_CMDLINE


def read_cmdline(init_args: tuple[str, ...]) -> Options:
    """/proc/cmdline over the image's defaults. INIT_ARGS are the arguments the kernel
    passed to /init (what it did not know, and everything after "--"): the real init's."""
    with open("/proc/cmdline", "rb") as fh:
        options = cmdline.parse_bytes(fh.read())
    try:
        with open(DEFAULTS, "rb") as fh:
            defaults = cmdline.parse_bytes(fh.read())
    except FileNotFoundError:
        defaults = cmdline.Options()
    return cmdline.amend(defaults, cmdline.join(list(options.params), []), init_args)


class Boot:
    """Runs each stage once, timed and logged; a failed stage goes through the failure path
    and is tried again when the person at the console leaves it."""

    def __init__(self) -> None:
        self.options = Options()
        self.started = (0, 0)  # when the init started (realtime, monotonic us): run() sets it

    def stage(self, name: str, run: Callable[[], T]) -> T:
        if name in self.options.breaks:
            log.get().info("break", stage=name)
            rescue.open_console(name, self)
        while True:
            start = time.monotonic()
            try:
                result = run()
            except Exception as err:  # every failure goes through one path
                rescue.failure(name, err, self)
                continue
            log.get().info("stage", stage=name, duration=round(time.monotonic() - start, 3))
            return result

    def check_cmdline(self) -> None:
        """Bad values on the command line stop the boot here, with every problem named;
        the rest of the line (rd.shell=, rd.emergency=, ...) is already in force."""
        log.configure(self.options.log_format, self.options.quiet)
        for warning in self.options.warnings:
            log.get().warning("cmdline_warning", detail=warning)
        errors = list(self.options.errors)
        from pyinit import stages

        stacks = stages.storage_stacks()
        if stacks:  # the storage keys decide what boots too
            from pyinit import storage

            errors += storage.cmdline_errors(self.options, stacks)
        if errors:
            raise cmdline.CmdlineError("; ".join(errors))

    def run(self) -> NoReturn:
        early_mounts()
        self.started = (time.clock_gettime_ns(time.CLOCK_REALTIME) // 1000,
                        time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)
        log.unthrottle_kmsg()
        log.use_file(layout.LOG_FILE)
        log.configure()
        pid1.take_over(rescue.ctrl_alt_del)
        try:
            self.options = read_cmdline(tuple(sys.argv[1:]))
        except OSError as err:
            log.get().error("cmdline_unreadable", error=str(err))
        self.stage("cmdline", self.check_cmdline)

        from pyinit import stages  # the rest of the boot, imported once logging works

        previous: Hotplug | None = None

        def modules() -> Hotplug:
            nonlocal previous
            previous = stages.load_modules(self.options, previous)
            return previous

        hotplug = self.stage("modules", modules)
        device = self.stage("discover", lambda: stages.discover_root(self.options, hotplug))
        self.stage("mount", lambda: stages.mount_root(self.options, hotplug, device, SYSROOT))
        # Past this stage there is no way back: the exec stage alone is tried again.
        method, removed, init = self.stage(
            "switch_root", lambda: stages.hand_over(self.options, hotplug, SYSROOT))
        deferred = lazyimport.pending()
        log.get().info("switch_root", method=method, deleted=removed, init=init,
                       modules=len(sys.modules) - len(deferred), deferred=",".join(deferred))
        self.stage("exec", lambda: stages.exec_init(self.options, self.started))
        raise AssertionError("exec_init returned")


def main() -> NoReturn:
    boot = Boot()
    try:
        boot.run()
    except BaseException as err:
        rescue.failure("init", err, boot)
        rescue.power("halt")
    sys.exit(1)  # unreachable: power() never returns
