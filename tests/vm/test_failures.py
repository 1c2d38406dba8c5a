"""Fault injection: each failure names what was asked and what was found, then does what
rd.emergency asks (here: power off, with the console locked by rd.shell=0)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.vm import harness
from tests.vm.conftest import Setup

UNATTENDED = "rd.shell=0 rd.emergency=poweroff"
POWER_OFF_BOUND = 90.0  # wall seconds under TCG, boot included


@pytest.fixture(scope="session")
def corrupt_disk(tmp_path_factory: pytest.TempPathFactory, root_tree: Path) -> str:
    path = str(tmp_path_factory.mktemp("corrupt") / "corrupt.img")
    harness.make_ext4_disk(path, str(root_tree))
    with open(path, "r+b") as fh:  # zero the primary superblock (offset 1024)
        fh.seek(1024)
        fh.write(b"\0" * 1024)
    return path


@pytest.fixture(scope="session")
def noinit_disk(tmp_path_factory: pytest.TempPathFactory) -> harness.Disk:
    """A root with no usable init: /sbin/init not executable, /bin/init dangling, no sh."""
    top = tmp_path_factory.mktemp("noinit")
    tree = top / "tree"
    for sub in ("sbin", "bin", "etc", "dev", "proc", "sys", "run"):
        (tree / sub).mkdir(parents=True)
    (tree / "sbin/init").write_text("#!/bin/sh\necho never\n")
    os.chmod(tree / "sbin/init", 0o644)
    os.symlink("/nowhere", tree / "bin/init")
    return harness.make_ext4_disk(str(top / "noinit.img"), str(tree))


def powered_off(setup: Setup, cmdline: str, name: str,
                disks: list[str] | None = None) -> harness.BootResult:
    result = setup.boot(f"{UNATTENDED} {cmdline}", name, timeout=POWER_OFF_BOUND, disks=disks)
    assert "pyinit: rd.emergency=poweroff" in result.log, result.log[-3000:]
    assert "reboot: Power down" in result.log
    assert "Attempted to kill init" not in result.log
    assert "TESTINIT" not in result.log
    return result


def test_root_absent(setup: Setup) -> None:
    result = powered_off(setup, "root=UUID=00000000-0000-4000-8000-000000000000 rd.timeout=5",
                         "absent")
    assert ("boot failed in stage discover: no device matched "
            "root=UUID=00000000-0000-4000-8000-000000000000") in result.log
    assert f"within 5 s; block devices seen: /dev/vda (254:0) TYPE=ext4 UUID={setup.disk.uuid}" \
        in result.log
    assert "try: check root= against the devices listed" in result.log


def test_root_malformed(setup: Setup) -> None:
    result = powered_off(setup, "root=PARTUUID=abc/notanoffset", "malformed")
    assert ("boot failed in stage cmdline: root=PARTUUID=abc/notanoffset: expected "
            "PARTUUID=UUID or PARTUUID=UUID/PARTNROFF=N") in result.log


def test_filesystem_type_unknown(setup: Setup) -> None:
    result = powered_off(setup, f"root=UUID={setup.disk.uuid} rootfstype=nosuchfs", "fstype")
    assert ("boot failed in stage mount: cannot mount /dev/vda on /sysroot (ro): "
            "nosuchfs: No such device; the kernel knows: ") in result.log


def test_corrupted_superblock(setup: Setup, corrupt_disk: str) -> None:
    result = powered_off(setup, "root=/dev/vda rootfstype=ext4", "corrupt",
                         disks=[corrupt_disk])
    assert "boot failed in stage mount: cannot mount /dev/vda on /sysroot (ro): ext4: " \
        in result.log


def test_init_missing_then_fallbacks_fail(setup: Setup, noinit_disk: harness.Disk) -> None:
    result = powered_off(setup, f"root=UUID={noinit_disk.uuid} init=/sbin/missing", "noinit",
                         disks=[noinit_disk.path])
    assert ("boot failed in stage exec: no init could be executed: /sbin/missing: does not "
            "exist; /sbin/init: not executable; /etc/init: does not exist; /bin/init: "
            "dangling symbolic link to /nowhere; /bin/sh: does not exist") in result.log


def test_init_not_executable(setup: Setup, noinit_disk: harness.Disk) -> None:
    result = powered_off(setup, f"root=UUID={noinit_disk.uuid}", "noexec",
                         disks=[noinit_disk.path])
    assert "/sbin/init: not executable" in result.log


def test_required_module_missing_from_the_image(setup: Setup) -> None:
    result = powered_off(setup, f"root=UUID={setup.disk.uuid} rd.driver.pre=virtio_scsi",
                         "nomodule")
    assert ("boot failed in stage modules: module virtio_scsi (rd.driver.pre): not in this "
            "image's module index") in result.log


def test_bad_command_line_never_crashes(setup: Setup) -> None:
    # The kernel keeps 2048 bytes of command line on x86: fill most of it.
    garbage = ("x" * 900 + " rd.timeout=abc root=UUID= \u00e9\u00e8=\x7f rd.timeout=abc "
               + "y=" * 200 + ' "unbalanced')
    result = powered_off(setup, garbage, "garbage")
    assert "boot failed in stage cmdline: rd.timeout=abc: expected a number of seconds; " \
           "root=UUID=: expected a value after UUID=" in result.log




def test_panic_reboots_after_the_delay(setup: Setup) -> None:
    # Console allowed, but panic=2 asks for a reboot instead of waiting (as the kernel does).
    result = setup.boot("rd.timeout=2 panic=2 root=LABEL=absent", "panic", timeout=90)
    assert "pyinit: rebooting in 2 s (panic=2)" in result.log
    assert "reboot: Restarting system" in result.log
    assert "rescue console" not in result.log
