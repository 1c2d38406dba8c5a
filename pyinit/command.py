"""Running a child program from PID 1: always with a timeout, output as bytes (text mode
would need the locale module), and every way it can end told in words.

A child killed by a signal is reported by the signal's name ("killed by SIGKILL"), not as
Python's "status -9".
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from pyinit import kernlog
from pyinit.errors import BootError

KILL_WAIT = 5.0  # seconds a killed child may take to go


class CommandError(BootError, RuntimeError):
    """A child could not run, did not finish in time, or failed; the message says which,
    with the command and its last line of output."""


class Done(NamedTuple):
    """How a child ended: its exit status (0-255, or -SIGNUM) and what it wrote."""

    status: int
    stdout: bytes
    stderr: bytes
    kernel: tuple[str, ...] = ()  # what the kernel logged meanwhile, where that was watched

    def last_line(self) -> str:
        text = (self.stderr or self.stdout).decode(errors="replace").strip()
        return text.splitlines()[-1] if text else "no output"

    def explain(self) -> str:
        """The child's last line, and the kernel's own lines beside it when it said any."""
        return self.last_line() + kernlog.quoted(self.kernel)


def failed(argv: Sequence[str], done: Done) -> CommandError:
    return CommandError(f"{shown(argv)} {describe_status(done.status)}: {done.explain()}")


def describe_status(status: int) -> str:
    """'exited with status N' or 'killed by SIGNAME'."""
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exited with status {status}"


def shown(argv: Sequence[str]) -> str:
    return " ".join(argv)


def run(argv: Sequence[str], timeout: float, *, input: bytes | None = None,
        env: Mapping[str, str] | None = None, check: bool = True) -> Done:
    """Run ARGV to its end (stdin from INPUT or /dev/null), at most TIMEOUT seconds.

    Raises CommandError when it cannot start or does not finish in time, and, with CHECK,
    when it ends with a non-zero status."""
    try:
        proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL if input is None else subprocess.PIPE,
                                env=None if env is None else dict(env))
    except OSError as err:
        raise CommandError(f"{shown(argv)}: cannot run: {err.strerror or err}") from err
    try:
        stdout, stderr = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        proc.kill()
        try:  # bounded too: a child stuck in the kernel (state D) outlives SIGKILL
            proc.communicate(timeout=KILL_WAIT)
        except subprocess.TimeoutExpired:
            raise CommandError(f"{shown(argv)}: no answer within {timeout:g} s, and still "
                               f"there {KILL_WAIT:g} s after SIGKILL") from err
        raise CommandError(f"{shown(argv)}: no answer within {timeout:g} s") from err
    result = Done(proc.returncode, stdout, stderr)
    if check and result.status != 0:
        raise failed(argv, result)
    return result
