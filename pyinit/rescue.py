"""The failure path: say what failed, then do what the command line asks. Never returns to
the kernel: PID 1 exiting is a kernel panic ("Attempted to kill init").
"""

from __future__ import annotations

import os
import signal
import time
import traceback
from typing import NoReturn

from pyinit import console, layout, log, pid1, syscalls
from pyinit.blockdev import Probed
from pyinit.errors import EXPECTED

ACTIONS = syscalls.POWER_ACTIONS
HINTS = {
    "cmdline": "correct the kernel command line in the boot loader",
    "modules": "check that the image carries the module (mkinitramfs.py --list) and that it "
               "matches the kernel; module_blacklist= skips one",
    "discover": "check root= against the devices listed; with no disk seen, the image lacks "
                "its driver or its bus's (virtio_blk also needs virtio_pci; --no-hostonly "
                "carries the generic set), or add rootwait for slow devices",
    "verity": "check roothash= against the image's, and the data and hash devices "
              "(systemd.verity_root_data=, systemd.verity_root_hash=)",
    "mount": "check rootfstype= and rootflags=, that the filesystem's module is in the image, "
             "and the filesystem itself (fsck)",
    "overlay": "the overlay needs the overlay module (--add-drivers overlay, or --no-hostonly) "
               "and memory for its tmpfs; without rd.overlay, overlayroot= and "
               "systemd.volatile= the read-only root boots alone",
    "switch_root": "check that root= names the real root and init= an executable on it "
                   "(a btrfs root may need rootflags=subvol=)",
    "exec": "init= must name an executable on the root filesystem; /sbin/init is the default",
    "init": "this is a bug in pyinit: please report the traceback",
}


def _console(text: str) -> None:
    try:
        os.write(2, text.encode(errors="replace"))
    except OSError:
        pass


def release_root() -> None:
    """Leave the real root clean for a reboot: unmount it from /sysroot, or, once it is "/"
    (after the hand-over), remount it read-only."""
    if os.path.ismount(layout.SYSROOT):
        try:
            syscalls.umount2(layout.SYSROOT, 0)
            return
        except OSError:
            path = layout.SYSROOT
    elif syscalls.fs_magic("/") not in (syscalls.RAMFS_MAGIC, syscalls.TMPFS_MAGIC):
        path = "/"
    else:
        return
    try:
        syscalls.mount(None, path, None, syscalls.MS_REMOUNT | syscalls.MS_RDONLY)
    except OSError as err:
        _console(f"pyinit: cannot remount {path} read-only: {err.strerror}\n")


def power(action: str) -> NoReturn:
    """End every child, release the real root, sync, then reboot/power off/halt."""
    _ended, stuck = pid1.end_children(grace=1.0)
    if stuck:
        _console(f"pyinit: {len(stuck)} process(es) did not end: {', '.join(stuck)}\n")
    release_root()
    os.sync()
    log.get().info("power", action=action)
    try:
        syscalls.reboot(ACTIONS[action])
    except OSError as err:
        _console(f"pyinit: {action} failed: {err.strerror}; stopping here\n")
    while True:  # halt returns to us on some machines; PID 1 must not exit
        time.sleep(3600)


def ctrl_alt_del() -> None:
    _console("\npyinit: Ctrl-Alt-Del: rebooting\n")
    power("reboot")


def run_shell(argv: list[str], env: dict[str, str]) -> None:
    """ARGV as a child on the console, waited for. fork and exec by hand, not subprocess:
    after the hand-over the initramfs's files are gone, and subprocess (with threading
    under it) is one of the modules pyinit.lazyimport leaves unloaded until used. Raises
    OSError when the fork fails; an exec that fails ends the child with 127."""
    pid = os.fork()
    if pid == 0:  # the child: never returns
        try:
            for signum in (signal.SIGPIPE, signal.SIGXFSZ):  # as subprocess restores them
                signal.signal(signum, signal.SIG_DFL)
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    os.waitpid(pid, 0)


def open_console(stage: str, boot: console.BootState) -> bool:
    """A shell on the console when the image (or, after the hand-over, the real root) has
    one, else the Python console. Returns False (and does nothing) when rd.shell=0 locks
    the console away, or when no console can start."""
    if not boot.options.shell:
        log.get().warning("console_locked", stage=stage, reason="rd.shell=0")
        return False
    for shell in layout.SHELLS:
        if os.access(shell, os.X_OK):
            _console(f"pyinit: starting {shell} (stage {stage}); exit it to go on\n")
            argv = [shell, "sh"] if shell.endswith("busybox") else [shell]
            try:
                run_shell(argv, {"PATH": layout.TOOL_PATH, "PS1": f"pyinit({stage})# "})
            except OSError as err:
                _console(f"pyinit: cannot start {shell}: {err.strerror}\n")
                continue
            pid1.reap()
            Probed.forget_all()
            return True
    try:
        console.interact(boot, stage)
    except (ImportError, OSError) as err:  # its files went with the initramfs
        _console(f"pyinit: no shell on / and no Python console (it was not loaded before "
                 f"the hand-over deleted the initramfs: {detail(err)})\n")
        return False
    pid1.reap()
    Probed.forget_all()
    return True


def detail(error: BaseException) -> str:
    """What went wrong, without Python's "[Errno N]" decoration."""
    return (error.strerror if isinstance(error, OSError) and error.strerror
            else str(error)) or type(error).__name__


def describe(stage: str, error: BaseException) -> list[str]:
    """The few lines a person reads: stage, what went wrong (asked/found), what to try."""
    lines = [f"boot failed in stage {stage}: {detail(error)}"]
    if not isinstance(error, EXPECTED):  # a bug: the traceback follows
        lines[0] = f"boot failed in stage {stage}: {type(error).__name__}: {detail(error)}"
        lines.append(f"try: {HINTS['init']}")
        return lines
    hint = getattr(error, "hint", None) or HINTS.get(stage)
    if hint:
        lines.append(f"try: {hint}")
    return lines


def frames(error: BaseException) -> list[tuple[str, int, str]]:
    """(file, line, function) of each frame of ERROR's traceback, innermost last, read from
    the frames themselves: no source lines, so no linecache."""
    found = []
    tb = error.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        found.append((code.co_filename, tb.tb_lineno, code.co_name))
        tb = tb.tb_next
    return found


def trace(error: BaseException) -> list[str]:
    """Python's traceback of ERROR; after the hand-over, when linecache (deferred, see
    pyinit.lazyimport) can no longer load, the same frames without their source lines."""
    try:
        return traceback.format_exception(error)
    except (ImportError, OSError):
        return ["Traceback (most recent call last):\n",
                *(f'  File "{f}", line {line}, in {name}\n' for f, line, name in frames(error)),
                f"{type(error).__name__}: {error}\n"]


def failure(stage: str, error: BaseException, boot: console.BootState) -> None:
    """Report ERROR in STAGE and act. Returns only when the stage should be tried again."""
    lines = describe(stage, error)
    log.get().error("failure", stage=stage, error=detail(error))
    text = "\n" + "".join(f"pyinit: {line}\n" for line in lines)
    if not isinstance(error, EXPECTED):  # a bug in pyinit: where it happened, everywhere
        text += "".join(trace(error))
        where = frames(error)[-3:]
        log.get().error("bug", stage=stage, type=type(error).__name__,
                        at=" < ".join(f"{os.path.basename(f)}:{line} {name}"
                                      for f, line, name in reversed(where)))
    _console(text)
    options = boot.options
    action = options.emergency
    if action == "shell" and not options.shell:
        action = "halt"
    if options.panic and action in ("shell", "halt"):
        delay = max(options.panic, 0)
        _console(f"pyinit: rebooting in {delay} s (panic={options.panic})\n")
        time.sleep(delay)
        power("reboot")
    if action == "shell":
        _console(f"pyinit: leaving the console retries stage {stage}\n")
        if open_console(stage, boot):
            return
        action = "halt"
    _console(f"pyinit: rd.emergency={action}\n")
    power(action)
