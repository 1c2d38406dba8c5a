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
    assert early.collect() == early.NOTHING  # collected once


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
