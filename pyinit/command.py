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


class CommandError(RuntimeError):
    """A child could not run, did not finish in time, or failed; the message says which,
    with the command and its last line of output."""


class Done(NamedTuple):
    """How a child ended: its exit status (0-255, or -SIGNUM) and what it wrote."""

    status: int
    stdout: bytes
    stderr: bytes

    def last_line(self) -> str:
        text = (self.stderr or self.stdout).decode(errors="replace").strip()
        return text.splitlines()[-1] if text else "no output"


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
        done = subprocess.run(list(argv), input=input, capture_output=True, timeout=timeout,
                              env=None if env is None else dict(env), check=False,
                              stdin=subprocess.DEVNULL if input is None else None)
    except subprocess.TimeoutExpired as err:
        raise CommandError(f"{shown(argv)}: no answer within {timeout:g} s") from err
    except OSError as err:
        raise CommandError(f"{shown(argv)}: cannot run: {err.strerror or err}") from err
    result = Done(done.returncode, done.stdout, done.stderr)
    if check and result.status != 0:
        raise CommandError(f"{shown(argv)} {describe_status(result.status)}: "
                           f"{result.last_line()}")
    return result
