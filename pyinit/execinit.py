"""Exec the real init as PID 1, with what the kernel gave /init: the arguments it passed on
(words it did not know, such as ``single`` or a runlevel, and everything after ``--``) and
its environment (``TERM=``, ``HOME=`` and any ``KEY=value`` from the command line), to which
pyinit adds nothing (its children get their environments explicitly)."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping

from pyinit import kernlog

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


def is_systemd(path: str, root: str = "/") -> bool:
    """Whether the init at PATH (in ROOT) is systemd (/sbin/init links to it)."""
    target = resolve_in(root, path)
    return target is not None and os.path.basename(target) == "systemd"


SYSTEMD_MIN = 240  # the oldest systemd handed pyinit's initrd timestamp (tested with 252)


SYSTEMD_LIBRARY_DIRS = ("usr/lib/systemd", "lib/systemd", "usr/lib64/systemd")


def systemd_version(root: str = "/") -> int | None:
    """systemd's version, from its shared library's name (libsystemd-shared-252.so, in
    /usr/lib/systemd or, as on Debian, /usr/lib/<multiarch>/systemd): no need to run it."""
    dirs = list(SYSTEMD_LIBRARY_DIRS)
    try:
        dirs += [f"usr/lib/{d}/systemd" for d in sorted(os.listdir(os.path.join(root,
                                                                             "usr/lib")))]
    except OSError:
        pass
    for directory in dirs:
        try:
            names = os.listdir(os.path.join(root, directory))
        except OSError:
            continue
        for name in names:
            if name.startswith("libsystemd-shared-") and ".so" in name:
                digits = name[len("libsystemd-shared-"):].split(".")[0].split("-")[0]
                if digits.isdigit():
                    return int(digits)
    return None


def kernel_ran_init(kmsg: str = "/dev/kmsg") -> int | None:
    """When the kernel ran /init (monotonic us), from its "Run /init as init process"
    record: the initrd's real start, before the interpreter's own start-up."""
    try:
        fd = os.open(kmsg, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        for record in kernlog.records(fd, limit=100000):  # the ring holds far fewer
            head, _, message = record.partition(b";")
            if message.startswith(b"Run /init as init process"):
                return int(head.split(b",")[2])
        return None  # not there (overwritten, or a differently named init)
    finally:
        os.close(fd)


def initrd_timestamp(started: tuple[int, int]) -> int:
    """A descriptor systemd deserializes (--deserialize FD): when the initrd started
    (realtime and monotonic, in microseconds; the kernel's "Run /init" record where it is
    still there), so systemd-analyze shows the initrd's time. systemd dropped
    RD_TIMESTAMP; this is how it learns the time now."""
    ran = kernel_ran_init()
    if ran is not None and ran <= started[1]:
        started = (started[0] - (started[1] - ran), ran)
    fd = os.memfd_create("pyinit-initrd-timestamp", 0)
    os.write(fd, f"initrd-timestamp={started[0]} {started[1]}\n".encode())
    os.lseek(fd, 0, os.SEEK_SET)
    os.set_inheritable(fd, True)
    return fd


def no_init(tried: list[str]) -> ExecError:
    return ExecError(errno.ENOENT, "no init could be executed: " + "; ".join(tried))


def exec_init(requested: str | None, args: tuple[str, ...], env: Mapping[str, str],
              started: tuple[int, int] | None = None) -> None:
    """execve the first candidate that runs; raises ExecError listing what was tried.
    A systemd init also gets the initrd's start (STARTED) as a switched-root state."""
    tried = []
    state: int | None = None  # the initrd timestamp for systemd, made once
    for path, problem in choose(requested):
        if problem is None:
            argv = [path, *args]
            if started and is_systemd(path) and (systemd_version() or 0) >= SYSTEMD_MIN:
                state = initrd_timestamp(started) if state is None else state
                argv = [path, "--switched-root", "--system", "--deserialize", str(state),
                        *args]
            try:
                os.execve(path, argv, dict(env))
            except OSError as err:
                problem = err.strerror
        tried.append(f"{path}: {problem}")
    raise no_init(tried)
