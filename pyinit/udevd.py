"""systemd-udevd in the initramfs, when the image carries it (mkinitramfs.py --udev systemd).

The init starts udevd as its own child, replays the coldplug events (udevadm trigger) and
then listens to udev's processed events through pyudev. Module loading stays with the init
(the image's build-time index; the builder leaves out 80-drivers.rules). Before the
hand-over udevd is stopped and its database cleaned, as dracut and the systemd initrd do,
so the real root's udevd starts from a clean state.
"""

from __future__ import annotations

import os
import subprocess
import time

from pyinit.layout import UDEV_CONTROL as CONTROL
from pyinit.layout import UDEVADM, UDEVD

START_TIMEOUT = 10.0
COMMAND_TIMEOUT = 30.0


class UdevError(RuntimeError):
    """udevd did not start, or a udevadm command failed."""


def present() -> bool:
    return os.access(UDEVD, os.X_OK) and os.access(UDEVADM, os.X_OK)


def _udevadm(*args: str) -> None:
    command = [UDEVADM, *args]
    try:
        done = subprocess.run(command, capture_output=True, timeout=COMMAND_TIMEOUT,
                              check=False)  # bytes: text mode would need the locale module
    except subprocess.TimeoutExpired as err:
        raise UdevError(f"{' '.join(command)}: no answer within {COMMAND_TIMEOUT:g} s") from err
    if done.returncode != 0:
        last = (done.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        raise UdevError(f"{' '.join(command)} exited with status {done.returncode}: {last}")


class Udevd:
    """The systemd-udevd the init started, until stop() ends it."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process

    @classmethod
    def start(cls) -> Udevd:
        """Start udevd and wait (bounded) until its control socket answers."""
        os.makedirs("/run/udev", exist_ok=True)
        try:
            process = subprocess.Popen([UDEVD],
                                       stdin=subprocess.DEVNULL)
        except OSError as err:
            raise UdevError(f"cannot start {UDEVD}: {err.strerror}") from err
        deadline = time.monotonic() + START_TIMEOUT
        while not os.path.exists(CONTROL):
            if process.poll() is not None:
                raise UdevError(f"{UDEVD} exited with status {process.returncode} at start")
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                raise UdevError(f"{UDEVD} did not create {CONTROL} within {START_TIMEOUT:g} s")
            time.sleep(0.01)
        # The socket can exist before udevd accepts messages on it: a ping sent in between
        # is refused ("Invalid sender uid 65534": no credentials were attached yet).
        while True:
            try:
                _udevadm("control", "--ping")
                return cls(process)
            except UdevError:
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()
                    process.wait()
                    raise
                time.sleep(0.05)

    def trigger(self) -> None:
        """Replay 'add' for every subsystem and device (coldplug through udev)."""
        _udevadm("trigger", "--type=subsystems", "--action=add")
        _udevadm("trigger", "--type=devices", "--action=add")

    def stop(self) -> None:
        """Ask udevd to exit, wait for it (bounded), then clean its database."""
        if self.process.poll() is None:
            try:
                _udevadm("control", "--exit")
            except UdevError:
                self.process.terminate()
            try:
                self.process.wait(timeout=COMMAND_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        _udevadm("info", "--cleanup-db")
