"""PID 1 helpers, run in a forked child so the test runner's own children are untouched."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import pytest

from pyinit import cmdline, console, layout, pid1, rescue
from pyinit.blockdev import Probed
from pyinit.match import DiscoveryError
from pyinit.storage import StorageError


def in_child(body: str) -> dict[str, object]:
    """Run BODY in a fresh interpreter (its own process tree) and return its JSON output."""
    out = subprocess.run([sys.executable, "-c", body], capture_output=True, text=True,
                         timeout=60, check=True)
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_end_children_terminates_and_reaps_everything() -> None:
    result = in_child("""
import json, os, signal, subprocess, time
from pyinit import pid1
quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
procs = [subprocess.Popen(["sleep", "100"], **quiet) for _ in range(3)]
# Ignores SIGTERM: only the SIGKILL after the grace period ends it. It says when its trap
# is set, so the test never races it.
r, w = os.pipe()
stubborn = subprocess.Popen(["sh", "-c", f"trap '' TERM; echo ready >&{w}; exec sleep 100"],
                            pass_fds=(w,), **quiet)
os.close(w)
assert os.read(r, 5) == b"ready"
ended = pid1.end_children(grace=0.5)
print(json.dumps({"ended": ended, "left": pid1.children()}))
""")
    assert result == {"ended": [4, []], "left": []}


def test_end_children_gives_up_on_a_child_that_never_goes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A child stuck in the kernel (state D) outlives SIGKILL; PID 1 must not wait for ever.
    monkeypatch.setattr(pid1, "children", lambda: [os.getpid()])
    monkeypatch.setattr(os, "kill", lambda pid, sig: None)
    done: list[tuple[int, list[str]]] = []
    worker = threading.Thread(target=lambda: done.append(pid1.end_children(0.1, 0.3)),
                              daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert done, "end_children did not return within 10 s"
    ended, stuck = done[0]
    assert ended == 1 and len(stuck) == 1
    assert stuck[0].startswith(f"{os.getpid()} (python") and ", state " in stuck[0]


def test_children_start_with_default_dispositions() -> None:
    # PID 1 drops terminal signals with a handler, not SIG_IGN: exec resets handlers, so a
    # rescue shell or fsck can still be stopped or hung up.
    result = in_child("""
import json, subprocess
from pyinit import pid1
pid1.drop_terminal_signals()
status = subprocess.run(["cat", "/proc/self/status"], capture_output=True, text=True).stdout
ignored = int(next(l for l in status.splitlines() if l.startswith("SigIgn:")).split()[1], 16)
print(json.dumps({"ignored": [s for s in pid1.TERMINAL_SIGNALS if ignored & (1 << (s - 1))]}))
""")
    assert result == {"ignored": []}


def test_reap_collects_exited_children_without_blocking() -> None:
    result = in_child("""
import json, os, time
from pyinit import pid1
pids = [os.fork() or os._exit(3) for _ in range(2)]
def zombies():
    states = []
    for pid in pids:
        with open(f"/proc/{pid}/stat") as fh:
            states.append(fh.read().rsplit(")", 1)[1].split()[0])
    return states
deadline = time.monotonic() + 10
while zombies() != ["Z", "Z"] and time.monotonic() < deadline:
    time.sleep(0.01)
reaped = pid1.reap()
print(json.dumps({"reaped": sorted(p for p, _ in reaped) == sorted(pids),
                  "codes": [os.waitstatus_to_exitcode(s) for _, s in reaped],
                  "again": pid1.reap()}))
""")
    assert result == {"reaped": True, "codes": [3, 3], "again": []}


def test_take_over_does_nothing_outside_pid_1() -> None:
    before = signal.getsignal(signal.SIGINT)
    pid1.take_over(lambda: None)
    assert signal.getsignal(signal.SIGINT) is before


def test_failure_text_names_stage_error_and_hint() -> None:
    lines = rescue.describe("discover", OSError(2, "no device matched root=LABEL=x"))
    assert lines == ["boot failed in stage discover: no device matched root=LABEL=x",
                     f"try: {rescue.HINTS['discover']}"]
    assert "virtio_pci" in rescue.HINTS["discover"]
    assert rescue.describe("init", TypeError("boom")) == [
        "boot failed in stage init: TypeError: boom", f"try: {rescue.HINTS['init']}"]


@pytest.mark.parametrize("bug", [KeyError("root"), ValueError("bad"), LookupError("x"),
                                 RuntimeError("y")])
def test_a_bug_is_told_from_bad_input(bug: Exception) -> None:
    """A KeyError inside pyinit is not bad input: it says its type and that it is a bug."""
    lines = rescue.describe("discover", bug)
    assert lines[0].startswith(f"boot failed in stage discover: {type(bug).__name__}: ")
    assert lines[1] == f"try: {rescue.HINTS['init']}"


@pytest.mark.parametrize("expected", [
    cmdline.CmdlineError("root=: expected"), DiscoveryError("no device matched"),
    StorageError("vda: locked"), OSError(5, "mount: Input/output error")])
def test_expected_failures_are_their_one_line(expected: Exception) -> None:
    assert rescue.describe("discover", expected)[0] == \
        f"boot failed in stage discover: {rescue.detail(expected)}"


def test_the_failure_path_shows_a_bugs_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    shown: list[str] = []
    monkeypatch.setattr(rescue, "_console", shown.append)
    monkeypatch.setattr(rescue, "power", lambda action: (_ for _ in ()).throw(SystemExit))

    class Boot:
        options = cmdline.parse("rd.shell=0 rd.emergency=reboot")

    def buggy() -> None:
        table: dict[str, int] = {}
        table["missing"] += 1

    try:
        buggy()
    except KeyError as err:
        with pytest.raises(SystemExit):
            rescue.failure("discover", err, Boot())
    assert "Traceback (most recent call last)" in shown[0] and "in buggy" in shown[0]
    with pytest.raises(SystemExit):
        rescue.failure("discover", OSError(2, "gone"), Boot())
    assert "Traceback" not in shown[-2]


def test_after_the_hand_over_a_traceback_needs_no_linecache(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # linecache is deferred (pyinit.lazyimport); once the initramfs is deleted it cannot
    # load, and a bug's traceback is still shown, from the frames alone.
    def gone(error: BaseException) -> list[str]:
        raise ImportError("can't open Zip file: '/usr/lib/python311.zip'")

    monkeypatch.setattr(traceback, "format_exception", gone)

    def buggy() -> None:
        raise KeyError("x")

    try:
        buggy()
    except KeyError as err:
        text = "".join(rescue.trace(err))
        where = rescue.frames(err)
    assert text.startswith("Traceback (most recent call last):\n")
    assert ", in buggy\n" in text and text.endswith("KeyError: 'x'\n")
    assert where[-1][2] == "buggy" and where[-1][0] == __file__


def test_the_shell_runs_as_a_waited_child(tmp_path: Path) -> None:
    said = tmp_path / "said"
    rescue.run_shell(["/bin/sh", "-c", f'echo "$PS1" > {said}; exit 3'],
                     {"PATH": "/usr/bin:/bin", "PS1": "pyinit(exec)# "})
    assert said.read_text() == "pyinit(exec)# \n"  # done when run_shell returned
    rescue.run_shell([str(tmp_path / "absent")], {})  # the child ends with 127, PID 1 goes on


def test_no_console_after_the_hand_over_halts(monkeypatch: pytest.MonkeyPatch) -> None:
    # No shell on the real root and the Python console's files deleted with the initramfs:
    # one line, then halt, not a retry loop without end.
    shown: list[str] = []
    powered: list[str] = []
    monkeypatch.setattr(rescue, "_console", shown.append)
    monkeypatch.setattr(layout, "SHELLS", ())

    def power(action: str) -> None:
        powered.append(action)
        raise SystemExit

    def interact(boot: object, stage: str) -> None:
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(rescue, "power", power)
    monkeypatch.setattr(console, "interact", interact)

    class Boot:
        options = cmdline.parse("rd.emergency=shell")

    with pytest.raises(SystemExit):
        rescue.failure("exec", OSError(2, "no init could be executed"), Boot())
    assert powered == ["halt"]
    assert any("no shell on / and no Python console" in line for line in shown), shown


def test_children_lists_only_direct_children() -> None:
    proc = subprocess.Popen(["sleep", "5"])
    try:
        deadline = time.monotonic() + 5
        while proc.pid not in pid1.children() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.pid in pid1.children()
        assert os.getpid() not in pid1.children()
    finally:
        proc.kill()
        proc.wait()


def test_a_console_makes_every_earlier_probe_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[list[str]] = []
    monkeypatch.setattr(layout, "SHELLS", ("/bin/true",))
    monkeypatch.setattr(rescue, "run_shell", lambda argv, env: ran.append(argv))
    monkeypatch.setattr(rescue, "_console", lambda text: None)

    class Boot:
        options = cmdline.parse("")

    before = Probed.generation
    assert rescue.open_console("mount", Boot())
    assert ran == [["/bin/true"]] and Probed.generation == before + 1
