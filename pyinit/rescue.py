"""The failure path: say what failed, then do what the command line asks. Never returns to
the kernel: PID 1 exiting is a kernel panic ("Attempted to kill init").
"""

from __future__ import annotations

import os
import subprocess
import time
import traceback
from typing import NoReturn

from pyinit import log, syscalls
from pyinit.cmdline import Options

SHELLS = ("/bin/sh", "/bin/busybox", "/usr/bin/sh")
ACTIONS = {
    "reboot": syscalls.RB_AUTOBOOT,
    "poweroff": syscalls.RB_POWER_OFF,
    "halt": syscalls.RB_HALT_SYSTEM,
}


def _console(text: str) -> None:
    try:
        os.write(2, text.encode(errors="replace"))
    except OSError:
        pass


def power(action: str) -> NoReturn:
    """Unmount the real root (if mounted), sync, and reboot/power off/halt. Never returns."""
    for path in ("/sysroot",):
        if os.path.ismount(path):
            try:
                syscalls.umount2(path, 0)
            except OSError:
                try:
                    syscalls.mount(None, path, None, syscalls.MS_REMOUNT | syscalls.MS_RDONLY)
                except OSError:
                    pass
    os.sync()
    try:
        syscalls.reboot(ACTIONS[action])
    except OSError as err:
        _console(f"pyinit: {action} failed: {err}; halting here\n")
    while True:
        time.sleep(3600)


def open_console(stage: str) -> None:
    """A shell on the console when the image has one, else a Python console. Returns on exit."""
    for shell in SHELLS:
        if os.access(shell, os.X_OK):
            _console(f"pyinit: starting {shell}; leave it (exit) to retry stage {stage}\n")
            argv = [shell, "sh"] if shell.endswith("busybox") else [shell]
            try:
                subprocess.run(argv, check=False, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                                       "PS1": f"pyinit({stage})# "})
            except OSError as err:
                _console(f"pyinit: cannot start {shell}: {err}\n")
                continue
            return
    import code

    _console(f"pyinit: no shell in this image: Python console; leave it (Ctrl-D) to retry "
             f"stage {stage}\n")
    code.interact(banner="", local={"os": os, "syscalls": syscalls}, exitmsg="")


def failure(stage: str, error: BaseException, options: Options) -> None:
    """Report ERROR in STAGE and act. Returns only when the stage should be tried again."""
    detail = str(error) or type(error).__name__
    log.get().error("failure", stage=stage, error=detail)
    lines = [f"\npyinit: boot failed in stage {stage}: {detail}\n"]
    if not isinstance(error, (OSError, ValueError, RuntimeError)):
        lines.append("".join(traceback.format_exception(error)))
    _console("".join(lines))
    action = options.emergency
    if action == "shell" and not options.shell:
        action = "halt"
    if options.panic is not None and options.panic != 0 and action in ("shell", "halt"):
        delay = max(options.panic, 0)
        _console(f"pyinit: rebooting in {delay} s (panic={options.panic})\n")
        time.sleep(delay)
        power("reboot")
    if action == "shell":
        open_console(stage)
        return
    _console(f"pyinit: rd.emergency={action}\n")
    power(action)
