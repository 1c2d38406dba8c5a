"""The early coldplug thread and what the modules stage collects from it: its report, its
failure, and a thread that never ends."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from pyinit import coldplug, early, kmod
from pyinit.modindex import ModuleIndex


def run(body: Callable[[list[early.Done]], None]) -> threading.Thread:
    """A thread as early.start() makes one, running BODY(report) instead of early.load."""
    report: list[early.Done] = []
    thread = threading.Thread(target=body, args=(report,), daemon=True)
    thread.start()
    early._RUNNING.append((thread, report))
    return thread


def test_the_thread_reports_what_it_saw_and_did() -> None:
    # On the test machine: no module index (nothing to load), the host's sysfs to look at.
    run(early.load)
    done = early.collect(timeout=60)
    assert done.error is None and done.loaded == []
    assert done.seen and all("/" in key for key in done.seen)  # bus/device names
    assert early.collect() == early.nothing()  # collected once


def test_a_failing_load_fails_the_stage_with_its_words(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse() -> None:
        raise kmod.ModuleError(2, "this image was built for 9.9, the kernel is 7.2")

    monkeypatch.setattr(kmod, "running_kernel_index", refuse)
    run(early.load)
    assert early.collect(timeout=60).error == "this image was built for 9.9, the kernel is 7.2"


def test_a_thread_that_never_ends_is_not_waited_for() -> None:
    stop = threading.Event()

    def stuck(_report: list[early.Done]) -> None:
        stop.wait(60)

    thread = run(stuck)
    start = time.monotonic()
    done = early.collect(timeout=0.3)
    assert time.monotonic() - start < 10
    assert done.error == ("loading the coldplug modules took more than 0.3 s (a module's "
                          "load is stuck in the kernel)")
    stop.set()
    thread.join()


def test_nothing_is_a_fresh_value_each_time() -> None:
    # The modules stage adds to SEEN: a retried stage must start from an empty one.
    early.nothing().seen["virtio/virtio0"] = "virtio:d00000002v00001AF4"
    assert early.nothing().seen == {}


def test_a_thread_that_ends_without_a_report_is_named() -> None:
    run(lambda _report: None)  # as a BaseException past load()'s except Exception would
    assert early.collect(timeout=60).error == "the coldplug thread ended without a report"


def test_start_loads_beside_the_caller_and_collect_gets_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(early, "mount_api", lambda: None)
    monkeypatch.setattr(early, "wanted", lambda: True)
    loading = threading.Event()
    release = threading.Event()

    def slow_coldplug(loader: kmod.Loader, seen: dict[str, str]) -> None:
        loading.set()
        assert release.wait(30)
        seen["virtio/virtio0"] = "virtio:d00000002v00001AF4"

    monkeypatch.setattr(coldplug, "coldplug", slow_coldplug)
    monkeypatch.setattr(kmod, "running_kernel_index", lambda: ModuleIndex("/nonexistent"))
    early.start()
    assert loading.wait(30)  # start() returned while the load runs
    release.set()
    done = early.collect(timeout=30)
    assert done.error is None and done.seen == {"virtio/virtio0": "virtio:d00000002v00001AF4"}


def test_rd_break_before_the_modules_loads_nothing_early(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from pyinit import cmdline

    monkeypatch.setattr(cmdline, "read", lambda args: cmdline.parse("rd.break=modules"))

    def never() -> None:
        raise AssertionError("the index was read: something would have loaded")

    monkeypatch.setattr(kmod, "running_kernel_index", never)
    run(early.load)
    done = early.collect(timeout=60)
    assert done.error is None and done.loaded == [] and done.seen == {}
    assert done.events == [("early_skipped", {"reason": "rd.break before the modules"})]


def test_pyinit_early_1_turns_the_early_start_on(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "cmdline"
    path.write_bytes(b"root=/dev/vda pyinit.early=1 quiet\n")
    assert early.wanted(str(path))
    for off in (b"root=/dev/vda quiet\n", b"root=/dev/vda pyinit.early=0\n",
                b"root=/dev/vda pyinit.early=11\n"):
        path.write_bytes(off)
        assert not early.wanted(str(path))
