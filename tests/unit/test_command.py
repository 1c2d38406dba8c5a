"""Children of PID 1: timeouts, statuses and signals told in words."""

from __future__ import annotations

import pytest

from pyinit import command


def test_a_child_killed_by_a_signal_is_named_by_the_signal() -> None:
    with pytest.raises(command.CommandError) as err:
        command.run(["sh", "-c", "echo dying >&2; kill -KILL $$"], timeout=10)
    assert str(err.value) == "sh -c echo dying >&2; kill -KILL $$ killed by SIGKILL: dying"


def test_status_timeout_and_missing_program() -> None:
    with pytest.raises(command.CommandError, match=r"^sh -c exit 3 exited with status 3: "
                                                  r"no output$"):
        command.run(["sh", "-c", "exit 3"], timeout=10)
    with pytest.raises(command.CommandError, match=r"^sleep 5: no answer within 0.2 s$"):
        command.run(["sleep", "5"], timeout=0.2)
    with pytest.raises(command.CommandError, match=r"^/nonexistent: cannot run: No such file"):
        command.run(["/nonexistent"], timeout=1)
    done = command.run(["sh", "-c", "cat; exit 1"], timeout=10, input=b"hi", check=False)
    assert done == command.Done(1, b"hi", b"")


def test_a_child_that_outlives_sigkill_is_named_not_waited_for(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A child stuck in the kernel (state D) survives SIGKILL: run() must not wait for ever.
    import subprocess

    monkeypatch.setattr(command, "KILL_WAIT", 0.2)
    real = subprocess.Popen.communicate
    calls: list[float | None] = []

    def communicate(self: subprocess.Popen[bytes], input: bytes | None = None,
                    timeout: float | None = None) -> tuple[bytes, bytes]:
        calls.append(timeout)
        if len(calls) == 2:  # after the kill: as if the child never went
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return real(self, input, timeout)

    monkeypatch.setattr(subprocess.Popen, "communicate", communicate)
    with pytest.raises(command.CommandError, match=r"^sleep 5: no answer within 0.2 s, and "
                                                  r"still there 0.2 s after SIGKILL$"):
        command.run(["sleep", "5"], timeout=0.2)
    assert calls == [0.2, 0.2]
