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
