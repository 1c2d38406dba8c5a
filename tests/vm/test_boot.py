"""Real kernels boot real root disks through pyinit, on both hand-over paths."""

from __future__ import annotations

from tests.vm.conftest import Setup
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
    assert default_boot.lines("TESTINIT env=") == [
        "SHLVL=1 HOME=/ TERM=linux PATH=/sbin:/usr/sbin:/bin:/usr/bin PWD=/"]


def test_hand_over_method_matches_the_kernel(setup: Setup, default_boot: BootResult) -> None:
    events = default_boot.events("switch_root")
    assert [e["method"] for e in events] == [EXPECTED_METHOD[setup.kernel.name]], events
    # On 7.x the root mount's parent is mount 1 (nullfs) after pivot_root.
    if setup.kernel.name == "debian-7":
        assert root_mount(default_boot)[1] == "1"


def test_every_stage_logs_its_duration(default_boot: BootResult) -> None:
    stages = default_boot.events("stage")
    assert [s["stage"] for s in stages] == STAGES
    for stage in stages:
        assert float(stage["duration"]) >= 0


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
    assert custom_boot.lines("TESTINIT args=") == ["alpha beta gamma"]
    assert custom_boot.lines("TESTINIT argc=") == ["2"]
    assert "rw" in root_mount(custom_boot)[5].split(",")
