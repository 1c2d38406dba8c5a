"""The Python rescue console: the helpers a person needs when the image has no shell.

Type ``help()`` at the prompt for the list. ``resume()`` (or Ctrl-D) leaves the console and
retries the boot from the stage that failed (or continues after rd.break).
"""

from __future__ import annotations

import code
import os
import sys
from typing import Any, Protocol

from pyinit import cmdline, kmod, layout, log, syscalls
from pyinit.blockdev import scan_sysfs
from pyinit.modindex import ModuleIndex


class BootState(Protocol):
    options: cmdline.Options


class Resume(Exception):
    """Raised by resume(): leave the console and go on with the boot."""


def helpers(boot: BootState) -> dict[str, Any]:
    def lsblk() -> None:
        """Block devices with UUID, LABEL, TYPE, PARTUUID and PARTLABEL."""
        devices = scan_sysfs()
        for dev in devices:
            print(dev.summary())
        if not devices:
            print("no block devices")

    def mount(source: str, target: str, fstype: str | None = None, options: str = "") -> None:
        """mount("/dev/vda1", "/sysroot", "ext4", "ro")"""
        from pyinit.mountroot import split_options

        flags, data = split_options(options, read_only=False)
        os.makedirs(target, exist_ok=True)
        syscalls.mount(source, target, fstype, flags, data or None)

    def umount(target: str) -> None:
        syscalls.umount2(target, 0)

    def modprobe(name: str) -> None:
        """Load a module of the image (name or alias) with its dependencies."""
        base = f"{layout.MODULES_DIR}/{os.uname().release}"
        loader = kmod.Loader(ModuleIndex.load(base), on_event=log.get().info)
        loader.load(name, reason="console")

    def cat(path: str) -> None:
        with open(path, encoding="utf-8", errors="replace") as fh:
            sys.stdout.write(fh.read())

    def ls(path: str = ".") -> None:
        for name in sorted(os.listdir(path)):
            print(name)

    def showlog(lines: int = 40) -> None:
        """The init's last log lines."""
        for line in log.recent()[-lines:]:
            print(line)

    def options() -> None:
        """The boot options in force, as a command line."""
        print(boot.options.to_cmdline())
        for error in boot.options.errors:
            print(f"error: {error}")

    def set_cmdline(text: str) -> None:
        """Add kernel command line parameters, e.g. set_cmdline("root=UUID=... rw")."""
        boot.options = cmdline.amend(boot.options, text)
        options()

    def resume() -> None:
        """Leave the console and retry the boot from where it stopped."""
        raise Resume

    def help_() -> None:
        for name, fn in sorted(table.items()):
            if callable(fn) and name != "help":
                doc = (fn.__doc__ or "").strip().splitlines()
                print(f"{name}(): {doc[0] if doc else ''}")

    table: dict[str, Any] = {
        "lsblk": lsblk, "mount": mount, "umount": umount, "modprobe": modprobe, "cat": cat,
        "ls": ls, "log": showlog, "options": options, "cmdline": set_cmdline,
        "resume": resume, "help": help_, "os": os, "syscalls": syscalls,
    }
    return table


class _Console(code.InteractiveConsole):
    def runcode(self, code_object: Any) -> None:
        try:
            exec(code_object, self.locals)
        except Resume:
            raise
        except SystemExit:
            raise Resume from None
        except BaseException:
            self.showtraceback()


def interact(boot: BootState, stage: str) -> None:
    """Run the console until resume(), exit() or end of input."""
    console = _Console(helpers(boot))
    try:
        console.interact(banner=f"pyinit rescue console (stage {stage}): help() lists the "
                         "helpers, resume() goes on with the boot", exitmsg="")
    except Resume:
        pass
