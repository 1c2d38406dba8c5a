"""PID 1 helpers, run in a forked child so the test runner's own children are untouched."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from pyinit import pid1, rescue


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
# Ignores SIGTERM: only the SIGKILL after the grace period ends it.
stubborn = subprocess.Popen(["sh", "-c", "trap '' TERM; exec sleep 100"], **quiet)
time.sleep(0.2)
ended = pid1.end_children(grace=0.5)
print(json.dumps({"ended": ended, "left": pid1.children()}))
""")
    assert result == {"ended": 4, "left": []}


def test_reap_collects_exited_children_without_blocking() -> None:
    result = in_child("""
import json, os, time
from pyinit import pid1
pids = [os.fork() or os._exit(3) for _ in range(2)]
time.sleep(0.3)
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
                     "try: check root= against the devices listed; add the disk's driver to "
                     "the image (--add-drivers), or add rootwait for slow devices"]
    assert rescue.describe("init", TypeError("boom"))[0] == "boot failed in stage init: boom"


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
