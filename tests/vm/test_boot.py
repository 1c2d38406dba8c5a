"""Real kernels boot real root disks through pyinit, on both hand-over paths."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from pyinit import lazyimport
from tests.vm import harness
from tests.vm.conftest import DRIVERS, Setup
from tests.vm.harness import BootResult

STAGES = ["cmdline", "modules", "discover", "mount", "switch_root"]
EXPECTED_METHOD = {"debian-6.1": "move", "debian-7": "pivot_root"}


def meminfo(result: BootResult) -> dict[str, int]:
    return {k.rstrip(":"): int(v) for k, v in (line.split() for line in result.lines("MEMINFO"))}


def root_mount(result: BootResult) -> list[str]:
    for line in result.lines("MOUNTINFO"):
        fields = line.split()
        if fields[4] == "/":
            return fields
    raise AssertionError(f"no / in the real init's mountinfo:\n{result.log[-2000:]}")


def test_real_init_runs_as_pid_1(default_boot: BootResult) -> None:
    assert "TESTINIT done" in default_boot.log, default_boot.log[-3000:]
    assert default_boot.lines("TESTINIT pid=") == ["1"]
    assert default_boot.lines("TESTINIT argv0=") == ["/sbin/init"]
    assert default_boot.lines("TESTINIT argc=") == ["0"]
    # The kernel's environment for init (HOME, TERM); SHLVL, PATH and PWD are the shell's.
    assert default_boot.lines("TESTINIT env=") == [
        "SHLVL=1 HOME=/ TERM=linux PATH=/sbin:/usr/sbin:/bin:/usr/bin PWD=/"]


def test_hand_over_method_matches_the_kernel(setup: Setup, default_boot: BootResult) -> None:
    events = default_boot.events("switch_root")
    assert [e["method"] for e in events] == [EXPECTED_METHOD[setup.kernel.name]], events
    budget = json.loads((Path(__file__).parents[1] / "import_budget.json").read_text())
    assert int(events[0]["modules"]) <= budget["max_modules"]  # measured in the guest
    # Bound at their import statements and never executed: every DEFERRED name is imported
    # on the way (else its entry is stale); the others are UNUSED ones the image lacks.
    deferred = set(events[0]["deferred"].split(","))
    assert set(lazyimport.DEFERRED) <= deferred <= set(lazyimport.UNUSED + lazyimport.DEFERRED)
    # On 7.x the root mount's parent is mount 1 (nullfs) after pivot_root.
    if setup.kernel.name == "debian-7":
        assert root_mount(default_boot)[1] == "1"


def test_the_default_image_carries_no_udevd(setup: Setup) -> None:
    # Built with no --udev: a plain ext4 root needs none (issue 13), and the summary says why.
    assert "  udev: none (no dm or md stack needs it)" in setup.build_summary
    assert "udev " not in setup.build_summary.split("udev: none")[0]  # no udev part


def test_every_stage_logs_its_duration(default_boot: BootResult) -> None:
    stages = default_boot.events("stage")
    assert [s["stage"] for s in stages] == STAGES
    # Each stage's duration fits between the end of the stage before and its own end (the
    # events' t= stamps, from CLOCK_BOOTTIME): a duration measured from anything else (boot,
    # the first stage) would not.
    for before, stage in itertools.pairwise(stages):
        gap = float(stage["t"]) - float(before["t"])
        assert 0 < float(stage["duration"]) <= gap + 0.002, (before, stage)


def test_root_found_by_uuid_and_mounted_read_only_by_default(
        setup: Setup, default_boot: BootResult) -> None:
    found = default_boot.events("root_found")
    assert found and found[0]["uuid"] == setup.disk.uuid and found[0]["device"] == "/dev/vda"
    options = root_mount(default_boot)[5].split(",")
    assert "ro" in options, root_mount(default_boot)


def test_no_initramfs_file_is_reachable(default_boot: BootResult) -> None:
    assert default_boot.lines("TESTINIT reachable") == []
    mounts = [line.split()[4] for line in default_boot.lines("MOUNTINFO")]
    assert sorted(mounts) == ["/", "/dev", "/proc", "/run", "/sys"]


def test_initramfs_memory_was_released(default_boot: BootResult, unpacked_bytes: int) -> None:
    # With root= on the command line the kernel unpacks into ramfs: its pages are
    # Unevictable. tmpfs pages would count as Shmem.
    mem = meminfo(default_boot)
    held_kb = mem["Unevictable"] + mem["Shmem"]
    image_kb = unpacked_bytes // 1024
    assert held_kb * 50 < image_kb, (
        f"after the hand-over Unevictable={mem['Unevictable']} kB and Shmem={mem['Shmem']} kB "
        f"are still held; the image unpacks to {image_kb} kB")


def test_virtio_blk_loaded_from_the_image(setup: Setup, default_boot: BootResult) -> None:
    loaded = [e["module"] for e in default_boot.events("module_loaded")]
    modules = default_boot.lines("MODULE ")
    assert "virtio_blk" in loaded and "virtio_blk" in modules
    if setup.kernel.name == "debian-6.1":
        assert "virtio_pci" in loaded  # a module on 6.1, found by its PCI modalias


def test_rw_init_and_arguments_are_honoured(custom_boot: BootResult) -> None:
    assert "TESTINIT done" in custom_boot.log, custom_boot.log[-3000:]
    assert custom_boot.lines("TESTINIT argv0=") == ["/sbin/altinit"]
    # What the kernel passed to /init: the word it did not know, then what follows "--".
    assert custom_boot.lines("TESTINIT args=") == ["single alpha beta gamma"]
    assert custom_boot.lines("TESTINIT argc=") == ["3"]
    assert "rw" in root_mount(custom_boot)[5].split(",")


def test_the_kernels_environment_reaches_the_real_init(custom_boot: BootResult) -> None:
    env = custom_boot.lines("TESTINIT env=")[0].split()
    assert "PYINIT_TEST=yes" in env and "TERM=linux" in env and "HOME=/" in env


def test_a_bad_optional_value_is_a_warning_not_a_failed_boot(custom_boot: BootResult) -> None:
    warnings = [e["detail"] for e in custom_boot.events("cmdline_warning")]
    assert warnings == ["rd.timeout=abc: expected a number of seconds; ignored, rd.timeout "
                        "stays 60", "rootflags= is empty: expected a value; ignored, rootflags "
                        "stays unset"]
    assert not custom_boot.events("failure")


@pytest.mark.parametrize(("setup", "fmt"), [
    ("debian-7", "gzip"), ("debian-7", "xz"), ("debian-7", "lz4"), ("debian-7", "none"),
    ("debian-6.1", "xz"), ("debian-6.1", "lz4")], indirect=["setup"])
def test_every_compression_boots(setup: Setup, tmp_path: Path, fmt: str) -> None:
    image = str(tmp_path / f"initrd.{fmt}")
    harness.build_image(image, setup.kernel.moddir, setup.kernel.kver,
                        DRIVERS[setup.kernel.name], compression=fmt)
    result = harness.boot(setup.kernel.vmlinuz, image, [setup.disk.path],
                          f"console=ttyS0 panic=-1 root=UUID={setup.disk.uuid} rd.shell=0 "
                          "rd.emergency=poweroff", str(tmp_path / "boot.log"), timeout=240)
    assert "TESTINIT done" in result.log, result.log[-3000:]
    assert [e["method"] for e in result.events("switch_root")] == [
        EXPECTED_METHOD[setup.kernel.name]]


def test_default_options_from_the_builder_config(setup: Setup, tmp_path: Path) -> None:
    conf = tmp_path / "pyinit.toml"
    conf.write_text('cmdline = "init=/sbin/altinit rd.timeout=30"\n')
    image = str(tmp_path / "initrd.img")
    harness.build_image(image, setup.kernel.moddir, setup.kernel.kver,
                        DRIVERS[setup.kernel.name], extra=["--config", str(conf)])
    # The kernel's own line wins over the defaults: rd.timeout=30 stays, init= is the image's.
    result = harness.boot(setup.kernel.vmlinuz, image, [setup.disk.path],
                          f"console=ttyS0 panic=-1 root=UUID={setup.disk.uuid} rd.shell=0 "
                          "rd.emergency=poweroff -- one", str(tmp_path / "boot.log"))
    assert result.lines("TESTINIT argv0=") == ["/sbin/altinit"], result.log[-3000:]
    assert result.lines("TESTINIT args=") == ["one"]
