"""The stages' order and their failure paths, with the syscalls and children replaced by
recorders: nothing irreversible before the checks, nothing left running by a failed try,
and the init's own Ctrl-Alt-Del back after a failed exec."""

from __future__ import annotations

import errno
import subprocess
import sys
from typing import Any

import pytest

from pyinit import early, execinit, pid1, rescue, stages, switchroot, udevd, uevents
from pyinit.cmdline import Options, parse
from pyinit.kmod import ModuleError


class FakeHotplug:
    def __init__(self) -> None:
        self.udev = None
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every step of the hand-over, recorded in order."""
    done: list[str] = []

    def check(new_root: str, requested: str | None, warn: Any) -> str:
        done.append("check")
        return "/sbin/init"

    monkeypatch.setattr(switchroot, "check", check)
    monkeypatch.setattr(switchroot, "make_private", lambda path="/": done.append("private"))

    def move(new_root: str, warn: Any) -> list[str]:
        done.append("move")
        return ["/dev", "/proc"]

    monkeypatch.setattr(switchroot, "move_api_mounts", move)
    monkeypatch.setattr(switchroot, "move_back",
                        lambda new_root, moved: done.append(f"back {','.join(moved)}"))
    monkeypatch.setattr(udevd.Udevd, "running", classmethod(lambda cls: None))
    return done


def test_a_refused_root_moves_nothing(calls: list[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(new_root: str, requested: str | None, warn: Any) -> str:
        calls.append("check")
        raise switchroot.HandOverError(errno.ENOENT, "/sysroot/sbin/init: not found")

    monkeypatch.setattr(switchroot, "check", refuse)
    hotplug = FakeHotplug()
    with pytest.raises(switchroot.HandOverError):
        stages.hand_over(Options(), hotplug, "/sysroot")  # type: ignore[arg-type]
    assert calls == ["check"] and hotplug.closed == 0  # the console keeps /proc, /sys, uevents


def test_a_switch_that_fails_puts_the_api_mounts_back(
        calls: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(new_root: str) -> tuple[str, int, list[str]]:
        calls.append("switch")
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(switchroot, "switch_root", fail)
    with pytest.raises(OSError):
        stages.hand_over(Options(), FakeHotplug(), "/sysroot")  # type: ignore[arg-type]
    assert calls == ["check", "private", "move", "switch", "back /dev,/proc"]


def test_the_hand_over_checks_before_it_moves(calls: list[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def switch(new_root: str) -> tuple[str, int, list[str]]:
        calls.append("switch")
        return "move", 3, []

    monkeypatch.setattr(switchroot, "switch_root", switch)
    assert stages.hand_over(Options(), FakeHotplug(), "/sysroot") == (  # type: ignore[arg-type]
        "move", 3, "/sbin/init")
    assert calls == ["check", "private", "move", "switch"]


def test_a_failed_exec_gives_ctrl_alt_del_back_to_the_init(
        monkeypatch: pytest.MonkeyPatch) -> None:
    taken: list[object] = []
    monkeypatch.setattr(pid1, "hand_back", lambda: (0, []))
    monkeypatch.setattr(pid1, "take_over", taken.append)

    def cannot(*args: object) -> None:
        raise execinit.ExecError("no init: tried /sbin/init (not found)")

    monkeypatch.setattr(execinit, "exec_init", cannot)
    with pytest.raises(execinit.ExecError):
        stages.exec_init(Options(), (0, 0))
    assert taken == [rescue.ctrl_alt_del]


def test_a_failed_coldplug_closes_what_it_started(monkeypatch: pytest.MonkeyPatch) -> None:
    closed: list[str] = []

    class Listener:
        def __init__(self, loader: object, udev: object = None) -> None:
            self.udev = udev

        def coldplug(self, seen: object = None) -> tuple[int, int]:
            raise ModuleError(errno.EIO, "virtio_blk: Input/output error")

        def close(self) -> None:
            closed.append("listener")

    class Index:
        def __init__(self) -> None:
            self.paths: dict[str, str] = {}
            self.builtin: set[str] = set()

    monkeypatch.setattr(stages, "Hotplug", Listener)
    monkeypatch.setattr(stages, "running_kernel_index", Index)
    monkeypatch.setattr(udevd, "mode", lambda: None)
    monkeypatch.setattr(early, "collect", early.nothing)
    with pytest.raises(ModuleError):
        stages.load_modules(parse(""), None)
    assert closed == ["listener"]


def test_the_early_childs_failure_fails_the_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(early, "collect",
                        lambda: early.Done([], [], {}, "this image was built for 6.1"))
    with pytest.raises(ModuleError, match=r"this image was built for 6\.1"):
        stages.load_modules(parse(""), None)


def test_closing_the_listener_twice_is_safe() -> None:
    stopped: list[int] = []

    class Udev:
        def stop(self) -> None:
            stopped.append(1)

    hotplug = uevents.Hotplug(None, Udev())  # type: ignore[arg-type]
    hotplug.close()
    hotplug.close()
    assert len(stopped) == 2  # Udevd.stop itself is idempotent
    with pytest.raises(RuntimeError, match="the listener was closed"):
        hotplug.next_event(0.1)


def test_stopping_udevd_twice_stops_it_once(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[tuple[str, ...]] = []
    monkeypatch.setattr(udevd, "udevadm", lambda *args: ran.append(args))
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    udev = udevd.Udevd(process)
    udevd.Udevd._running = udev
    udev.stop()
    udev.stop()
    assert process.returncode is not None and ran == [("info", "--cleanup-db")]
    assert udevd.Udevd.running() is None


def test_storage_keys_stop_a_boot_whose_image_carries_no_stack(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from pyinit import cmdline, init, log

    monkeypatch.setattr(stages, "storage_stacks", lambda: [])
    monkeypatch.setattr(log, "configure", lambda *args: None)
    boot = init.Boot()
    boot.options = parse("root=/dev/mapper/vg-root rd.lvm.lv=vg/root")
    with pytest.raises(cmdline.CmdlineError, match=r"rd\.lvm\.lv=vg/root: this image carries "
                                                   r"no LVM support"):
        boot.check_cmdline()
    boot.options = parse("root=/dev/vda rd.luks=0 rd.timeout=5")  # off: asks for nothing
    boot.check_cmdline()
    assert cmdline.storage_stack("rd.luks.uuid") == "luks"
    assert cmdline.storage_stack("rd.lvmx") is None and cmdline.storage_stack("luksy") is None
