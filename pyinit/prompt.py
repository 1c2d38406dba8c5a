"""Asking the person at the machine for a secret: on every active console at once, without
echo; the first console to answer wins.

``/dev/console`` is only the last ``console=`` of the kernel command line; a machine booted
with ``console=tty0 console=ttyS0`` has a person at one of the two, and which one is not
known. The kernel lists them all in /sys/class/tty/console/active.
"""

from __future__ import annotations

import os
import select
import termios
import time
from collections.abc import Sequence
from typing import Any

from pyinit.errors import BootError

ACTIVE = "/sys/class/tty/console/active"


class PromptError(BootError, RuntimeError):
    """No console to ask on, or nobody answered in time."""


def active_consoles(active: str = ACTIVE) -> list[str]:
    """The device paths of the consoles the kernel writes to (/dev/ttyS0, /dev/tty0...)."""
    try:
        with open(active, encoding="ascii") as fh:
            names = fh.read().split()
    except OSError:
        names = []
    return [f"/dev/{name}" for name in names] or ["/dev/console"]


class _Tty:
    """One console opened for the question, echo off until close()."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        self.saved: list[Any] | None = None
        self.buffer = b""
        try:
            attrs = termios.tcgetattr(self.fd)
            self.saved = termios.tcgetattr(self.fd)
            attrs[3] = (attrs[3] & ~termios.ECHO) | termios.ICANON  # lflags
            termios.tcsetattr(self.fd, termios.TCSANOW, attrs)
            termios.tcflush(self.fd, termios.TCIFLUSH)  # nothing typed earlier counts
        except termios.error:
            self.saved = None  # not a terminal (a pipe in tests): no echo to turn off

    def write(self, text: str) -> None:
        try:
            os.write(self.fd, text.encode(errors="replace"))
        except OSError:
            pass

    def read_line(self) -> str | None:
        """Read what is there; the line once Enter was pressed, else None."""
        chunk = os.read(self.fd, 4096)
        if not chunk:
            raise EOFError(self.path)
        self.buffer += chunk
        if b"\n" not in self.buffer and b"\r" not in self.buffer:
            return None
        line = self.buffer.replace(b"\r", b"\n").split(b"\n", 1)[0]
        return line.decode(errors="replace")

    def close(self) -> None:
        if self.saved is not None:
            try:
                termios.tcsetattr(self.fd, termios.TCSANOW, self.saved)
            except termios.error:
                pass
        os.close(self.fd)


def ask_secret(question: str, consoles: Sequence[str] | None = None,
               timeout: float = 0.0) -> str:
    """Show QUESTION on every console, read one line without echo from whichever answers
    first. TIMEOUT seconds (0: no limit, as systemd's passphrase prompt). Raises
    PromptError when no console can be opened or nobody answered in time."""
    ttys: list[_Tty] = []
    problems: list[str] = []
    for path in consoles if consoles is not None else active_consoles():
        try:
            ttys.append(_Tty(path))
        except OSError as err:
            problems.append(f"{path}: {err.strerror}")
    if not ttys:
        raise PromptError(f"no console to ask on ({'; '.join(problems) or 'none active'})")
    deadline = time.monotonic() + timeout if timeout > 0 else None
    try:
        for tty in ttys:
            tty.write(f"\n{question}: ")
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise PromptError(f"nobody answered within {timeout:g} s")
            ready, _, _ = select.select([t.fd for t in ttys], [], [], left)
            for tty in list(ttys):
                if tty.fd not in ready:
                    continue
                try:
                    line = tty.read_line()
                except (OSError, EOFError):
                    ttys.remove(tty)
                    tty.close()
                    if not ttys:
                        raise PromptError("every console closed before an answer") from None
                    continue
                if line is not None:
                    for other in ttys:
                        other.write("\n")
                    return line
    finally:
        for tty in ttys:
            tty.close()


def tell(text: str, consoles: Sequence[str] | None = None) -> None:
    """Say TEXT (a line) on every active console."""
    for path in consoles if consoles is not None else active_consoles():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            os.write(fd, (text + "\n").encode(errors="replace"))
        except OSError:
            pass
        finally:
            os.close(fd)
