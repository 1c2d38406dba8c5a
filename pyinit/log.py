"""structlog, configured for PID 1: every event goes to /dev/kmsg, and so to the console,
and to /run/initramfs/pyinit.log, which the hand-over moves into the real root.

Console lines look like ``pyinit: event=stage stage=mount duration=0.012 ...`` (logfmt), or
one JSON object per line with ``pyinit.log=json``. /dev/kmsg gets the same text with the
syslog priority of the event's level, so ``dmesg`` and the journal keep it. The kernel
rate-limits /dev/kmsg writers (10 records in 5 s) unless kernel.printk_devkmsg is "on": it
is while pyinit runs, and is put back before the real init starts.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import MutableMapping
from typing import Any

import structlog

from pyinit import layout

PRIORITY = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}
_RECENT: list[str] = []  # the last rendered lines, for the rescue console's log()


def recent() -> list[str]:
    return list(_RECENT)


_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


class KmsgConsoleLogger:
    """A structlog logger writing each rendered event to /dev/kmsg (or, without it, to the
    console fd) and to the log file."""

    def __init__(self, console_fd: int, kmsg: str, quiet: bool, log_file: str | None) -> None:
        self.console_fd = console_fd
        self.quiet = quiet
        self.kmsg_fd = self._open(kmsg, os.O_WRONLY | os.O_NOCTTY)
        self.file_fd = None if log_file is None else self._open(
            log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, make_dir=True)

    @staticmethod
    def _open(path: str, flags: int, make_dir: bool = False) -> int | None:
        try:
            if make_dir:
                os.makedirs(os.path.dirname(path), exist_ok=True)
            return os.open(path, flags | os.O_CLOEXEC, 0o640)
        except OSError:
            return None

    def _write(self, level: str, message: str) -> None:
        """Into the kernel log, which shows it on the console by the kernel's loglevel
        (so ``quiet`` hides info but never errors); straight to the console without kmsg."""
        line = f"pyinit: {message}"
        _RECENT.append(line)
        del _RECENT[:-200]
        if self.file_fd is not None:
            try:
                os.write(self.file_fd, (line + "\n").encode(errors="replace"))
            except OSError:
                pass
        if self.kmsg_fd is not None:
            record = f"<{PRIORITY.get(level, 6)}>{line}".encode(errors="replace")
            try:
                os.write(self.kmsg_fd, record[:1000])  # one record; kmsg caps them near 1 KiB
                return
            except OSError:
                pass
        if not self.quiet or PRIORITY.get(level, 6) <= 4:
            try:
                os.write(self.console_fd, (line + "\n").encode(errors="replace"))
            except OSError:
                pass

    def close(self) -> None:
        for fd in (self.kmsg_fd, self.file_fd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.kmsg_fd = self.file_fd = None

    def debug(self, message: str) -> None:
        self._write("debug", message)

    def info(self, message: str) -> None:
        self._write("info", message)

    def warning(self, message: str) -> None:
        self._write("warning", message)

    def error(self, message: str) -> None:
        self._write("error", message)

    def critical(self, message: str) -> None:
        self._write("critical", message)

    msg = info


def _uptime(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    # CLOCK_BOOTTIME counts from boot, like the kernel's printk timestamps.
    event.setdefault("t", round(time.clock_gettime(time.CLOCK_BOOTTIME), 3))
    return event


_CURRENT: list[KmsgConsoleLogger] = []  # the logger in use, whose kmsg fd is ours to close


def close() -> None:
    """Close the logger's descriptors (before the hand-over closes every fd)."""
    while _CURRENT:
        _CURRENT.pop().close()


DEVKMSG = "/proc/sys/kernel/printk_devkmsg"
_DEVKMSG_BEFORE: list[str] = []


def unthrottle_kmsg(path: str = DEVKMSG) -> None:
    """kernel.printk_devkmsg=on while pyinit runs (unless printk.devkmsg= locked it)."""
    try:
        with open(path, encoding="ascii") as fh:
            before = fh.read().strip()
        with open(path, "w", encoding="ascii") as fh:
            fh.write("on\n")  # the kernel wants the newline: "on" alone is refused
    except OSError:
        return
    _DEVKMSG_BEFORE[:] = [before]


def restore_kmsg(path: str = DEVKMSG) -> None:
    """Put back what kernel.printk_devkmsg was before pyinit."""
    if _DEVKMSG_BEFORE:
        try:
            with open(path, "w", encoding="ascii") as fh:
                fh.write(_DEVKMSG_BEFORE.pop() + "\n")
        except OSError:
            pass


_LOG_FILE: list[str] = []  # set by the init (use_file): tests and tools write no file


def use_file(path: str = layout.LOG_FILE) -> None:
    """Also append every event to PATH (from the next configure() on)."""
    _LOG_FILE[:] = [path]


def configure(fmt: str = "pretty", quiet: bool = False, kmsg: str = "/dev/kmsg") -> None:
    """Set structlog up; safe to call again when the command line changes format or quiet
    (the previous logger's descriptors are closed)."""
    close()
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.processors.LogfmtRenderer(key_order=["event"], drop_missing=True)
    console_fd = sys.stderr.fileno() if sys.stderr is not None else 2
    logger = KmsgConsoleLogger(console_fd, kmsg, quiet, _LOG_FILE[0] if _LOG_FILE else None)
    _CURRENT.append(logger)
    structlog.configure(
        processors=[structlog.processors.add_log_level, _uptime, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS["debug"]),
        logger_factory=lambda *args: logger,
        cache_logger_on_first_use=True,  # each proxy binds once: _BOUND is made again here
    )
    _BOUND[:] = [structlog.get_logger()]


_BOUND: list[Any] = []  # the proxy configure() made, which binds on its first event


def get() -> Any:
    return _BOUND[0] if _BOUND else structlog.get_logger()
