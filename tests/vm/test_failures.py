"""Fault injection: each failure names what was asked and what was found, then does what
rd.emergency asks (here: power off, with the console locked by rd.shell=0)."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from pyinit import layout
from pyinit.builder import cpio
from tests.vm import harness
from tests.vm.conftest import DRIVERS, ON_7X, Setup
from tests.vm.kernels import Kernel

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


@ON_7X
def test_root_malformed(setup: Setup) -> None:
    result = powered_off(setup, "root=PARTUUID=abc/notanoffset", "malformed")
    assert ("boot failed in stage cmdline: root=PARTUUID=abc/notanoffset: expected "
            "PARTUUID=UUID or PARTUUID=UUID/PARTNROFF=N") in result.log


@ON_7X
def test_filesystem_type_unknown(setup: Setup) -> None:
    result = powered_off(setup, f"root=UUID={setup.disk.uuid} rootfstype=nosuchfs", "fstype")
    assert ("boot failed in stage mount: cannot mount /dev/vda on /sysroot (ro): "
            "nosuchfs: No such device; the kernel knows: ") in result.log


@ON_7X
def test_corrupted_superblock(setup: Setup, corrupt_disk: str) -> None:
    result = powered_off(setup, "root=/dev/vda rootfstype=ext4", "corrupt",
                         disks=[corrupt_disk])
    [line] = [x for x in result.log.splitlines()
              if "boot failed in stage mount: cannot mount /dev/vda on /sysroot (ro): ext4: " in x]
    assert '(the kernel said: "EXT4-fs (vda): ' in line, line  # why, in the kernel's words


def test_init_missing_then_fallbacks_fail(setup: Setup, noinit_disk: harness.Disk) -> None:
    result = powered_off(setup, f"root=UUID={noinit_disk.uuid} init=/sbin/missing", "noinit",
                         disks=[noinit_disk.path])
    # Refused before the hand-over, while the console still has /proc, /sys and /dev.
    assert ("boot failed in stage switch_root: no init could be executed: /sbin/missing: does "
            "not exist; /sbin/init: not executable; /etc/init: does not exist; /bin/init: "
            "dangling symbolic link to /nowhere; /bin/sh: does not exist") in result.log
    assert not result.events("switch_root")


@ON_7X
def test_init_not_executable(setup: Setup, noinit_disk: harness.Disk) -> None:
    result = powered_off(setup, f"root=UUID={noinit_disk.uuid}", "noexec",
                         disks=[noinit_disk.path])
    assert "/sbin/init: not executable" in result.log


@ON_7X
def test_required_module_missing_from_the_image(setup: Setup) -> None:
    result = powered_off(setup, f"root=UUID={setup.disk.uuid} rd.driver.pre=virtio_scsi",
                         "nomodule")
    assert ("boot failed in stage modules: module virtio_scsi (rd.driver.pre): not in this "
            "image's module index") in result.log


@ON_7X
def test_bad_command_line_never_crashes(setup: Setup) -> None:
    # The kernel keeps 2048 bytes of command line on x86: fill most of it.
    garbage = ("x" * 900 + " rd.timeout=abc root=UUID= \u00e9\u00e8=\x7f rd.timeout=abc "
               + "y=" * 200 + ' "unbalanced')
    result = powered_off(setup, garbage, "garbage")
    assert "boot failed in stage cmdline: root=UUID=: expected a value after UUID=\n" \
        in result.log.replace("\r", "")
    assert [e["detail"] for e in result.events("cmdline_warning")] == [
        "rd.timeout=abc: expected a number of seconds; ignored, rd.timeout stays 60"] * 2




@ON_7X
def test_panic_reboots_after_the_delay(setup: Setup) -> None:
    # Console allowed, but panic=2 asks for a reboot instead of waiting (as the kernel does).
    result = setup.boot("rd.timeout=2 panic=2 root=LABEL=absent", "panic", timeout=90)
    assert "pyinit: rebooting in 2 s (panic=2)" in result.log
    assert "reboot: Restarting system" in result.log
    assert "rescue console" not in result.log


@pytest.fixture(scope="session")
def badexec_disk(tmp_path_factory: pytest.TempPathFactory) -> harness.Disk:
    """A root whose only init is an executable script with no interpreter: it passes the
    checks before the hand-over, and its exec fails after it."""
    top = tmp_path_factory.mktemp("badexec")
    tree = top / "tree"
    for sub in ("sbin", "etc", "dev", "proc", "sys", "run"):
        (tree / sub).mkdir(parents=True)
    (tree / "sbin/init").write_text("#!/nonexistent/interpreter\n")
    os.chmod(tree / "sbin/init", 0o755)
    (tree / "etc/os-release").write_text("ID=test\n")
    return harness.make_ext4_disk(str(top / "badexec.img"), str(tree))


def test_a_failed_exec_after_the_hand_over_leaves_the_root_clean(
        setup: Setup, badexec_disk: harness.Disk) -> None:
    result = powered_off(setup, f"root=UUID={badexec_disk.uuid} rw", "badexec",
                         disks=[badexec_disk.path])
    assert result.events("switch_root"), result.log[-3000:]
    assert ("boot failed in stage exec: no init could be executed: /sbin/init: No such file "
            "or directory") in result.log
    # The real root was "/" when the machine powered off: remounted read-only first, so its
    # journal is clean (no needs_recovery) and nothing was lost.
    features = subprocess.run(["dumpe2fs", "-h", badexec_disk.path], capture_output=True,
                              text=True, check=True).stdout
    assert "needs_recovery" not in features, features


def test_a_failed_exec_with_the_console_allowed_says_why_there_is_none(
        setup: Setup, badexec_disk: harness.Disk) -> None:
    # After the hand-over the initramfs is gone, and with it the deferred modules' files
    # (pyinit.lazyimport): the failure path must still explain itself and stop, never
    # panic the kernel by PID 1 dying on an import.
    # A halted machine stays on: the boot ends at its timeout, by design.
    result = harness.boot(setup.kernel.vmlinuz, setup.image, [badexec_disk.path],
                          f"console=ttyS0 root=UUID={badexec_disk.uuid} rw rd.emergency=shell",
                          str(setup.workdir / "badexec-shell.log"), timeout=45)
    assert result.timed_out
    assert ("boot failed in stage exec: no init could be executed: /sbin/init: No such file "
            "or directory") in result.log, result.log[-3000:]
    assert "pyinit: no shell on / and no Python console" in result.log
    assert "reboot: System halted" in result.log
    assert "Attempted to kill init" not in result.log and "Traceback" not in result.log


def test_an_image_for_another_kernel_says_so(kernel61: Kernel, kernel7: Kernel,
                                             tmp_path: Path) -> None:
    image = str(tmp_path / "initrd-7.img")
    harness.build_image(image, kernel7.moddir, kernel7.kver, DRIVERS[kernel7.name])
    result = harness.boot(kernel61.vmlinuz, image, [], f"console=ttyS0 panic=-1 {UNATTENDED} "
                          "root=LABEL=anything", str(tmp_path / "mismatch.log"),
                          timeout=POWER_OFF_BOUND)
    assert (f"boot failed in stage modules: this image was built for {kernel7.kver}, the "
            f"kernel is {kernel61.kver}") in result.log, result.log[-3000:]
    assert "reboot: Power down" in result.log


def broken(image: str, path: str) -> str:
    """IMAGE with one more archive appended that replaces PATH with garbage (the kernel
    unpacks the archives in order; a later entry wins)."""
    entries = [cpio.Entry(path.lstrip("/"), stat.S_IFREG | 0o644, b"not python bytecode")]
    out = io.BytesIO()
    cpio.write(out, entries)
    target = image + ".broken"
    with open(image, "rb") as src, open(target, "wb") as dst:
        data = src.read()
        # The kernel reads an uncompressed archive only at a 4-byte boundary.
        dst.write(data + b"\0" * (-len(data) % 4) + out.getvalue())
    return target


@pytest.mark.parametrize("shell", [False, True])
def test_a_broken_image_never_kills_init(kernel7: Kernel, tmp_path: Path, root_tree: Path,
                                         shell: bool) -> None:
    image = str(tmp_path / "initrd.img")
    harness.build_image(image, kernel7.moddir, kernel7.kver, DRIVERS[kernel7.name],
                        extra=["--include", "/bin/busybox", "/bin/busybox"] if shell else [])
    bad = broken(image, f"{layout.SITE}/pyinit/init.pyc")
    vm = harness.InteractiveVM(kernel7.vmlinuz, bad, [], "console=ttyS0 panic=-1",
                               str(tmp_path))
    try:
        vm.expect(r"pyinit: cannot start: \w+Error: .*the image is broken, rebuild it")
        if shell:
            vm.expect(r"pyinit: starting /bin/busybox")
            vm.send("echo alive-$((6*7))\n")
            vm.expect(r"alive-42")
        else:
            vm.expect(r"pyinit: no shell in the image; waiting")
            time.sleep(3)
        assert "Kernel panic" not in vm.log and "Attempted to kill init" not in vm.log
        assert vm.proc.poll() is None  # still running: -no-reboot would have ended it
    finally:
        vm.stop()
