"""Exec the real init as PID 1, with what the kernel gave /init: the arguments it passed on
(words it did not know, such as ``single`` or a runlevel, and everything after ``--``) and
its environment (``TERM=``, ``HOME=`` and any ``KEY=value`` from the command line), to which
pyinit adds nothing (its children get their environments explicitly)."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping

DEFAULT_INITS = ("/sbin/init", "/etc/init", "/bin/init", "/bin/sh")


class ExecError(OSError):
    """No init candidate could be executed; the message lists each with its reason."""


def candidates(requested: str | None) -> list[str]:
    """init= first, then the kernel's own fallbacks, no repeats."""
    names = [requested] if requested else []
    names += [n for n in DEFAULT_INITS if n not in names]
    return names


def resolve_in(root: str, path: str) -> str | None:
    """PATH as seen from inside ROOT (absolute symlinks resolved against ROOT, as after a
    chroot); the host path of what it names, or None when it leads nowhere."""
    parts = [p for p in path.split("/") if p]
    resolved: list[str] = []
    for _ in range(40):
        if not parts:
            return os.path.join(root, *resolved) if resolved else root
        name = parts.pop(0)
        if name in (".", ".."):
            if name == ".." and resolved:
                resolved.pop()
            continue
        host = os.path.join(root, *resolved, name)
        try:
            st = os.lstat(host)
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(host)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p] + parts
            continue
        resolved.append(name)
    return None


def choose(requested: str | None, root: str = "/") -> list[tuple[str, str | None]]:
    """Each candidate in order, with why it cannot run from ROOT (None: it can)."""
    found: list[tuple[str, str | None]] = []
    for path in candidates(requested):
        host = os.path.join(root, path.lstrip("/"))
        target = resolve_in(root, path)
        problem = None
        if target is None or not os.path.exists(target):
            problem = (f"dangling symbolic link to {os.readlink(host)}"
                       if os.path.islink(host) else "does not exist")
        elif not os.path.isfile(target) or not os.access(target, os.X_OK):
            problem = "not executable"
        found.append((path, problem))
    return found


def no_init(tried: list[str]) -> ExecError:
    return ExecError(errno.ENOENT, "no init could be executed: " + "; ".join(tried))


def exec_init(requested: str | None, args: tuple[str, ...], env: Mapping[str, str]) -> None:
    """execve the first candidate that runs; raises ExecError listing what was tried."""
    tried = []
    for path, problem in choose(requested):
        if problem is None:
            try:
                os.execve(path, [path, *args], dict(env))
            except OSError as err:
                problem = err.strerror
        tried.append(f"{path}: {problem}")
    raise no_init(tried)
