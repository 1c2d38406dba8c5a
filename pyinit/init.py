"""PID 1 of the initramfs: the boot sequence, top to bottom."""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn, TypeVar

from pyinit import cmdline, early, layout, lazyimport, log, pid1, rescue
from pyinit.cmdline import Options
from pyinit.errors import BootError

if TYPE_CHECKING:
    from pyinit import liveimg, overlay, verity
    from pyinit.rootspec import RootSpec
    from pyinit.uevents import Hotplug

T = TypeVar("T")
SYSROOT = layout.SYSROOT


class Boot:
    """Runs each stage once, timed and logged; a failed stage goes through the failure path
    and is tried again when the person at the console leaves it."""

    def __init__(self) -> None:
        self.options = Options()
        self.overlay: overlay.Request | None = None  # check_cmdline sets it
        self.verity: list[verity.Request] = []  # check_cmdline sets them: root, usr
        self.live: liveimg.Request | None = None  # check_cmdline sets it
        self.usr: RootSpec | None = None  # mount.usr=, or the verified /usr: check_cmdline
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

    def root(self) -> Options:
        """The options the root is found and mounted with, read at each try (the console's
        cmdline() may have changed them): a verified root is /dev/mapper/root, read-only,
        and under an overlay the root is its read-only lower layer."""
        root = self.options
        if any(request.name == "root" for request in self.verity):
            from pyinit import stages

            root = stages.verified_root(root)
        if self.overlay is not None:
            root = root._replace(read_only=True)
        return root

    def check_cmdline(self) -> None:
        """Bad values on the command line stop the boot here, with every problem named;
        the rest of the line (rd.shell=, rd.emergency=, ...) is already in force."""
        log.configure(self.options.log_format, self.options.quiet)
        for warning in self.options.warnings:
            log.get().warning("cmdline_warning", detail=warning)
        errors = list(self.options.errors)
        from pyinit import stages

        try:
            self.overlay = stages.overlay_request(self.options)
        except BootError as err:  # OverlayError, without importing its module here
            errors.append(str(err))
        try:
            self.verity = stages.verity_requests(self.options)
        except BootError as err:  # VerityError, likewise
            errors.append(str(err))
        try:
            self.usr = stages.usr_spec(self.options, any(r.name == "usr" for r in self.verity))
        except BootError as err:
            errors.append(str(err))
        try:
            self.live = stages.live_request(self.options)
        except BootError as err:  # LiveError, likewise
            errors.append(str(err))

        stacks = stages.storage_stacks()
        named = any(cmdline.storage_stack(p.partition("=")[0]) for p in self.options.params)
        if stacks or named:  # the storage keys decide what boots too
            from pyinit import storage

            errors += storage.cmdline_errors(self.options, stacks)
        if errors:
            raise cmdline.CmdlineError("; ".join(errors))

    def run(self) -> NoReturn:
        early.mount_api()  # done already by /init's early start, unless that failed
        self.started = (time.clock_gettime_ns(time.CLOCK_REALTIME) // 1000,
                        time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)
        log.unthrottle_kmsg()
        log.use_file(layout.LOG_FILE)
        log.configure()
        pid1.take_over(rescue.ctrl_alt_del)
        try:
            self.options = cmdline.read(tuple(sys.argv[1:]))
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
        for verified in self.verity:  # the root becomes /dev/mapper/root, /usr .../usr
            self.stage("verity", functools.partial(stages.open_verity, verified, self.options,
                                                   hotplug))
        device = self.stage("discover", lambda: stages.discover_root(self.root(), hotplug))
        if self.live is not None:  # root= names the partition that holds the image file
            live = self.live
            self.stage("mount", lambda: stages.mount_live(live, hotplug, device, SYSROOT))
        else:
            self.stage("mount", lambda: stages.mount_root(self.root(), hotplug, device,
                                                          SYSROOT))
        if self.overlay is not None:
            request = self.overlay
            self.stage("overlay", lambda: stages.mount_overlay(request, self.options, hotplug,
                                                               SYSROOT))
        if self.usr is not None:
            usr, verified_usr = self.usr, any(r.name == "usr" for r in self.verity)
            self.stage("usr", lambda: stages.mount_usr(usr, self.options, hotplug, SYSROOT,
                                                       verified_usr))
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
