"""Exec the real init as PID 1: clean environment, default signals, no stray descriptors."""

from __future__ import annotations

import os

DEFAULT_INITS = ("/sbin/init", "/etc/init", "/bin/init", "/bin/sh")
ENVIRONMENT = {"HOME": "/", "TERM": "linux"}


class ExecError(OSError):
    """No init candidate could be executed; the message lists each with its reason."""


def candidates(requested: str | None) -> list[str]:
    """init= first, then the kernel's own fallbacks, no repeats."""
    names = [requested] if requested else []
    names += [n for n in DEFAULT_INITS if n not in names]
    return names


def exec_init(requested: str | None, args: tuple[str, ...]) -> None:
    """execve the first candidate that runs; raises ExecError listing what was tried."""
    tried = []
    for path in candidates(requested):
        if not os.path.lexists(path):
            tried.append(f"{path}: does not exist")
            continue
        if not os.path.exists(path):
            tried.append(f"{path}: dangling symbolic link to {os.readlink(path)}")
            continue
        if not os.access(path, os.X_OK):
            tried.append(f"{path}: not executable")
            continue
        try:
            os.execve(path, [path, *args], ENVIRONMENT)
        except OSError as err:
            tried.append(f"{path}: {err.strerror}")
    raise ExecError(2, "no init could be executed: " + "; ".join(tried))
