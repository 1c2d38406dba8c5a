"""structlog, configured for PID 1: every event goes to /dev/kmsg, and so to the console.

Console lines look like ``pyinit: event=stage stage=mount duration=0.012 ...`` (logfmt), or
one JSON object per line with ``pyinit.log=json``. /dev/kmsg gets the same text with the
syslog priority of the event's level, so ``dmesg`` and the journal keep it.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import MutableMapping
from typing import Any

import structlog

PRIORITY = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}
_RECENT: list[str] = []  # the last rendered lines, for the rescue console's log()


def recent() -> list[str]:
    return list(_RECENT)


_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


class KmsgConsoleLogger:
    """A structlog logger writing each rendered event to the console fd and /dev/kmsg."""

    # The kernel rate-limits writes to /dev/kmsg per open file (a burst of 10 in 5 s, unless
    # printk.devkmsg=on); a boot logs more than that, so the file is opened afresh
    # every few records instead of changing the system-wide setting.
    RECORDS_PER_OPEN = 8

    def __init__(self, console_fd: int, kmsg: str, quiet: bool) -> None:
        self.console_fd = console_fd
        self.kmsg = kmsg
        self.kmsg_fd: int | None = None
        self.records = 0
        self.quiet = quiet
        self._reopen()

    def _reopen(self) -> None:
        if self.kmsg_fd is not None:
            os.close(self.kmsg_fd)
            self.kmsg_fd = None
        try:
            self.kmsg_fd = os.open(self.kmsg, os.O_WRONLY | os.O_CLOEXEC | os.O_NOCTTY)
        except OSError:
            self.kmsg_fd = None
        self.records = 0

    def _write(self, level: str, message: str) -> None:
        """Into the kernel log, which shows it on the console by the kernel's loglevel
        (so ``quiet`` hides info but never errors); straight to the console without kmsg."""
        line = f"pyinit: {message}"
        _RECENT.append(line)
        del _RECENT[:-200]
        if self.kmsg_fd is not None and self.records >= self.RECORDS_PER_OPEN:
            self._reopen()
        if self.kmsg_fd is not None:
            record = f"<{PRIORITY.get(level, 6)}>{line}".encode(errors="replace")
            try:
                os.write(self.kmsg_fd, record[:1000])  # one record; kmsg caps them near 1 KiB
                self.records += 1
                return
            except OSError:
                pass
        if not self.quiet or PRIORITY.get(level, 6) <= 4:
            try:
                os.write(self.console_fd, (line + "\n").encode(errors="replace"))
            except OSError:
                pass

    def close(self) -> None:
        if self.kmsg_fd is not None:
            try:
                os.close(self.kmsg_fd)
            except OSError:
                pass
            self.kmsg_fd = None

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
    """Close the logger's /dev/kmsg descriptor (before the hand-over closes every fd)."""
    while _CURRENT:
        _CURRENT.pop().close()


def configure(fmt: str = "pretty", quiet: bool = False, kmsg: str = "/dev/kmsg") -> None:
    """Set structlog up; safe to call again when the command line changes format or quiet
    (the previous logger's descriptor is closed)."""
    close()
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.processors.LogfmtRenderer(key_order=["event"], drop_missing=True)
    console_fd = sys.stderr.fileno() if sys.stderr is not None else 2
    logger = KmsgConsoleLogger(console_fd, kmsg, quiet)
    _CURRENT.append(logger)
    structlog.configure(
        processors=[structlog.processors.add_log_level, _uptime, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS["debug"]),
        logger_factory=lambda *args: logger,
        cache_logger_on_first_use=False,
    )


def get() -> Any:
    return structlog.get_logger()
