"""fsck before a read-write mount, acting on the exit status as systemd-fsck does.

Runs ``fsck.TYPE`` from the image when it carries one. ``fsck.mode=skip|force`` and
``fsck.repair=preen|yes|no`` follow systemd's names. Exit status: 0 clean, 1 errors fixed
(continue), 2 fixed but the system must reboot, 4 and above: failure.
"""

import os
from typing import NamedTuple

from pyinit import command
from pyinit.errors import BootError

SEARCH = ("/sbin", "/usr/sbin", "/bin", "/usr/bin")
TIMEOUT = 3600.0  # a large filesystem can take long; never forever


class FsckError(BootError, RuntimeError):
    """fsck found errors it could not fix, or could not run."""


class FsckResult(NamedTuple):
    """What one fsck run did: its status, its last words, whether it asks for a reboot."""

    ran: bool
    status: int
    tool: str
    output: str
    reboot: bool = False


def tool_for(fstype: str) -> str | None:
    for directory in SEARCH:
        path = os.path.join(directory, f"fsck.{fstype}")
        if os.access(path, os.X_OK):
            return path
    return None


def argv(tool: str, device: str, mode: str, repair: str) -> list[str]:
    flag = {"preen": "-p", "yes": "-y", "no": "-n"}[repair]
    args = [tool, flag]
    if mode == "force":
        args.append("-f")
    return [*args, device]


def run(device: str, fstype: str | None, mode: str = "auto",
        repair: str = "preen") -> FsckResult:
    if mode == "skip" or not fstype:
        return FsckResult(False, 0, "", "fsck.mode=skip" if mode == "skip" else "type unknown")
    tool = tool_for(fstype)
    if tool is None:
        return FsckResult(False, 0, "", f"no fsck.{fstype} in the image")
    args = argv(tool, device, mode, repair)
    try:
        done = command.run(args, TIMEOUT, check=False)
    except command.CommandError as err:
        raise FsckError(str(err)) from err
    output = (done.stdout + done.stderr).decode(errors="replace").strip()
    status = done.status
    if status < 0 or status >= 4:
        raise FsckError(f"{command.shown(args)} {command.describe_status(status)} (errors "
                        f"left uncorrected): {done.last_line()}")
    return FsckResult(True, status, tool, output, reboot=bool(status & 2))
