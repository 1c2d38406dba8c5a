"""--boot-test: boot a kernel with an image in qemu against a copy-on-write view of a root
device, up to the real init, before anyone reboots into it.

The root device (default: this machine's own root device) is opened read-only with
``snapshot=on``: the guest's writes go to a temporary overlay, the disk is never written.
KVM is used where it works (a kernel line on the serial console within a few seconds),
TCG (software emulation) otherwise; the report says which. A boot passes when pyinit hands
over and the real init runs (its first line, or no failure within GRACE seconds); it fails
with pyinit's failure line, a kernel panic, or the timeout.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

QEMU = "qemu-system-x86_64"
KVM_PROBE = 8.0  # seconds for the kernel's first line under KVM before falling back to TCG
GRACE = 15.0  # seconds after the hand-over without a failure that count as a pass
RUN_INIT = "Run /init as init process"


class BootTestError(ValueError):
    """The test cannot be run (no qemu, no kernel, no root device)."""


@dataclass
class Outcome:
    passed: bool
    accel: str
    initrd_seconds: float | None
    stopped: str  # where it stopped: the failure line, or what the real init printed
    log: str


def host_root_options(cmdline: str = "/proc/cmdline") -> list[str]:
    """rootfstype= and rootflags= from this machine's command line (a btrfs subvol=), which
    the guest needs to mount this machine's root the same way."""
    try:
        with open(cmdline, encoding="utf-8", errors="replace") as fh:
            words = fh.read().split()
    except OSError:
        return []
    return [w for w in words if w.startswith(("rootfstype=", "rootflags="))]


def root_device(root: str | None) -> tuple[str, str, str]:
    """(what qemu opens, the root= for it, the disk interface to show it on). Default: the
    block device this machine's root filesystem is on, given to the guest as its disk, with
    this machine's rootfstype= and rootflags=. (A root on dm or md is the already-opened
    device: the test then shows the image can mount it, not that it assembles the stack.)"""
    extra: list[str] = []
    if root is None:
        from pyinit.builder import hostonly

        root = hostonly.root_mount()[2]
        extra = host_root_options()
    if not os.path.exists(root):
        raise BootTestError(f"--root {root}: expected a block device or disk image, found "
                            "none")
    try:
        uuid = subprocess.run(["blkid", "-p", "-o", "value", "-s", "UUID", root],
                              capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        uuid = ""
    name = os.path.basename(os.path.realpath(root))
    disk_if = "nvme" if name.startswith("nvme") else "sata" if name.startswith("sd") \
        else "virtio"
    default = {"nvme": "/dev/nvme0n1", "sata": "/dev/sda", "virtio": "/dev/vda"}[disk_if]
    return root, " ".join([f"root=UUID={uuid}" if uuid else f"root={default}", *extra]), disk_if


def _printk(log: str, pattern: str) -> float | None:
    m = re.search(r"^\[\s*(\d+\.\d+)\] .*" + pattern, log, re.M)
    return float(m.group(1)) if m else None


def _argv(accel: str, kernel: str, image: str, root: str, cmdline: str, log: str,
          disk_if: str, memory_mb: int) -> list[str]:
    cpu = "host" if accel == "kvm" else "max"
    argv = [QEMU, "-accel", accel, "-cpu", cpu, "-m", str(memory_mb), "-smp", "2",
            "-nodefaults", "-display", "none", "-no-reboot", "-serial", f"file:{log}",
            "-kernel", kernel, "-initrd", image, "-append", cmdline]
    drive = f"file={root},format=raw,readonly=on,snapshot=on"
    if disk_if == "nvme":
        return [*argv, "-drive", f"{drive},if=none,id=root", "-device",
                "nvme,drive=root,serial=pyinit"]
    if disk_if == "sata":
        return [*argv, "-drive", f"{drive},if=none,id=root", "-device", "ahci,id=ahci",
                "-device", "ide-hd,drive=root,bus=ahci.0"]
    return [*argv, "-drive", f"{drive},if=virtio"]


def _run(argv: list[str], log: str, timeout: float,
         done: Callable[[str], bool]) -> tuple[str, bool]:
    """Run qemu until DONE(serial log) is true, it exits, or TIMEOUT; (log, finished)."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    text = ""
    try:
        while time.monotonic() < deadline:
            time.sleep(0.2)
            try:
                with open(log, encoding="utf-8", errors="replace") as fh:
                    text = fh.read()
            except FileNotFoundError:
                text = ""
            if done(text) or proc.poll() is not None:
                return text, True
        return text, False
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def kvm_works(kernel: str, workdir: str) -> bool:
    """Whether a guest runs under KVM here (nested KVM may hang silently)."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    log = os.path.join(workdir, "kvm-probe.log")
    argv = [QEMU, "-accel", "kvm", "-cpu", "host", "-m", "256", "-nodefaults", "-display",
            "none", "-no-reboot", "-serial", f"file:{log}", "-kernel", kernel, "-append",
            "console=ttyS0 panic=-1"]
    text, _ = _run(argv, log, KVM_PROBE, lambda text: "Linux version" in text)
    return "Linux version" in text


def boot_test(image: str, kernel: str, root: str, root_arg: str, disk_if: str = "virtio",
              timeout: float = 600.0, memory_mb: int = 1024) -> Outcome:
    if shutil.which(QEMU) is None:
        raise BootTestError(f"--boot-test: expected {QEMU} on this host (Debian's "
                            "qemu-system-x86 package), found none")
    for what, path in (("--kernel", kernel), ("IMAGE", image), ("--root", root)):
        if not os.path.exists(path):
            raise BootTestError(f"--boot-test: {what} {path}: expected a file, found none")
    with tempfile.TemporaryDirectory(prefix="pyinit-boot-test-") as work:
        accel = "kvm" if kvm_works(kernel, work) else "tcg"
        log = os.path.join(work, "serial.log")
        cmdline = (f"console=ttyS0 panic=-1 {root_arg} ro rd.shell=0 rd.emergency=poweroff")
        ended = re.compile(r"boot failed in stage .*|Kernel panic.*|reboot: Power down")
        handed_at: list[float] = []

        def done(text: str) -> bool:
            if ended.search(text):
                return True
            if "event=switch_root " not in text:
                return False
            # Handed over: the real init's first words, or GRACE seconds in peace.
            handed_at[:] = handed_at or [time.monotonic()]
            return _after_hand_over(text) is not None or \
                time.monotonic() - handed_at[0] > GRACE

        text, _ = _run(_argv(accel, kernel, image, root, cmdline, log, disk_if, memory_mb),
                       log, timeout, done)
    failure = ended.search(text)
    handed = "event=switch_root " in text
    start_t, end_t = _printk(text, re.escape(RUN_INIT)), _printk(text, "event=switch_root ")
    seconds = round(end_t - start_t, 2) if start_t is not None and end_t is not None else None
    passed = handed and "boot failed in stage" not in text and "Kernel panic" not in text
    if failure is not None and "Power down" not in failure.group(0):
        stopped = failure.group(0).strip()
    elif handed:
        stopped = _after_hand_over(text) or "the real init started (nothing printed yet)"
    else:
        stopped = failure.group(0).strip() if failure else "no hand-over within the timeout"
    return Outcome(passed, accel, seconds, stopped, text)


def _after_hand_over(text: str) -> str | None:
    """The first line the real init (not the kernel, not pyinit) printed after the exec."""
    tail = text.split("event=switch_root ", 1)[1].split("\n", 1)[1:]
    for line in (tail[0].splitlines() if tail else []):
        body = re.sub(r"^\[\s*\d+\.\d+\] ", "", line).strip()
        if body and not body.startswith("pyinit:") and not re.match(r"^\[\s*\d", line):
            return body
    return None
