"""What the real init inherits from pyinit: PID 1, no stray descriptors, default signals,
no leftover or zombie processes."""

from __future__ import annotations

from tests.vm.harness import BootResult


def test_no_stray_descriptors(default_boot: BootResult) -> None:
    # fds of `ls /proc/self/fd` run by the real init: 0-2 and ls's own directory fd.
    assert default_boot.lines("FDLS") == ["0 1 2 3"]


def test_default_signal_dispositions(default_boot: BootResult) -> None:
    # Python ignores SIGPIPE and SIGXFSZ; none of that may reach the real init's children.
    assert default_boot.lines("SIGNALS") == ["SigBlk: 0000000000000000 "
                                             "SigIgn: 0000000000000000"]


def test_no_other_processes_and_no_zombies(default_boot: BootResult) -> None:
    procs = [line.split() for line in default_boot.lines("PROC ")]
    assert [p[0] for p in procs] == ["1"], procs
    assert not [p for p in procs if p[2] == "Z"]
