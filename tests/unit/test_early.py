"""The early coldplug child and what the modules stage collects from it: its report over
the pipe, its failure, and a child that never answers."""

from __future__ import annotations

import os
import time

import pytest

from pyinit import early, kmod


def fork_child(body: object) -> None:
    """A child as early.start() makes one, running BODY(write_end) instead of _child."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            body(write_end)  # type: ignore[operator]
        finally:
            os._exit(0)
    os.close(write_end)
    early._CHILD.append((pid, read_end))


def test_the_child_reports_what_it_saw_and_did() -> None:
    # On the test machine: no module index (nothing to load), the host's sysfs to look at.
    fork_child(early._child)
    done = early.collect(timeout=60)
    assert done.error is None and done.loaded == []
    assert done.seen and all("/" in key for key in done.seen)  # bus/device names
    assert early.collect() == early.nothing()  # collected once


def test_a_failing_child_fails_the_stage_with_its_words(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse() -> None:
        raise kmod.ModuleError(2, "this image was built for 9.9, the kernel is 7.2")

    monkeypatch.setattr(kmod, "running_kernel_index", refuse)
    fork_child(early._child)
    assert early.collect(timeout=60).error == "this image was built for 9.9, the kernel is 7.2"


def test_a_child_that_never_answers_is_ended() -> None:
    fork_child(lambda _fd: time.sleep(60))
    start = time.monotonic()
    done = early.collect(timeout=0.3)
    assert time.monotonic() - start < 10
    assert done.error == "loading the coldplug modules took more than 0.3 s"


def test_nothing_is_a_fresh_value_each_time() -> None:
    # The modules stage adds to SEEN: a retried stage must start from an empty one.
    early.nothing().seen["virtio/virtio0"] = "virtio:d00000002v00001AF4"
    assert early.nothing().seen == {}


def test_a_child_that_dies_without_a_report_is_named() -> None:
    fork_child(lambda _fd: os._exit(3))
    assert early.collect(timeout=60).error == (
        "the coldplug child ended without a report (it crashed)")


def test_a_child_that_outlives_sigkill_does_not_hang_pid_1(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A module load stuck in the kernel (state D) survives SIGKILL: the wait is bounded.
    fork_child(lambda _fd: time.sleep(60))
    pid = early._CHILD[-1][0]
    real_waitpid = os.waitpid
    monkeypatch.setattr(early, "KILL_WAIT", 0.2)
    monkeypatch.setattr(os, "waitpid", lambda p, flags: (0, 0))  # never ends
    start = time.monotonic()
    done = early.collect(timeout=0.2)
    assert time.monotonic() - start < 5
    assert done.error is not None and "still there 0.2 s after SIGKILL" in done.error
    monkeypatch.setattr(os, "waitpid", real_waitpid)
    os.kill(pid, 9)
    real_waitpid(pid, 0)


def test_rd_break_before_the_modules_loads_nothing_early(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from pyinit import cmdline

    monkeypatch.setattr(cmdline, "read", lambda args: cmdline.parse("rd.break=modules"))

    def never() -> None:
        raise AssertionError("the index was read: something would have loaded")

    monkeypatch.setattr(kmod, "running_kernel_index", never)
    fork_child(early._child)
    done = early.collect(timeout=60)
    assert done.error is None and done.loaded == [] and done.seen == {}
    assert done.events == [("early_skipped", {"reason": "rd.break before the modules"})]


def test_pyinit_early_0_turns_the_early_start_off(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "cmdline"
    path.write_bytes(b"root=/dev/vda pyinit.early=0 quiet\n")
    assert not early.wanted(str(path))
    path.write_bytes(b"root=/dev/vda pyinit.early=01\n")
    assert early.wanted(str(path))
