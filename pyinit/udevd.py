"""systemd-udevd in the initramfs, when the image carries it.

The image says when the init starts it (pyinit.layout.UDEV_MODE_FILE): "always" (at the
modules stage, as ``mkinitramfs.py --udev systemd`` asks: the init then listens to udev's
processed events and uses its properties and /dev/disk links), or "storage" (only when a
storage stack is about to create dm or md devices, so that their udev database entries,
kept with db_persist, tell the real root's udevd that they are ready). Module loading stays
with the init either way (the image's build-time index; 80-drivers.rules is left out).

Before the hand-over udevd is stopped and its database cleaned, as dracut and the systemd
initrd do; what the rules marked db_persist survives for the real root.
"""

from __future__ import annotations

import os
import subprocess
import time

from pyinit import command, layout
from pyinit.errors import BootError

START_TIMEOUT = 10.0
COMMAND_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


class UdevError(BootError, RuntimeError):
    """udevd did not start, or a udevadm command failed."""


def mode(mode_file: str = layout.UDEV_MODE_FILE) -> str | None:
    """When this image starts udevd: "always", "storage", or None (never)."""
    if not (os.access(layout.UDEVD, os.X_OK) and os.access(layout.UDEVADM, os.X_OK)):
        return None
    try:
        with open(mode_file, encoding="ascii") as fh:
            value = fh.read().strip()
    except OSError:
        return None
    return value if value in layout.UDEV_MODES else None


def udevadm(*args: str) -> None:
    try:
        command.run([layout.UDEVADM, *args], COMMAND_TIMEOUT)
    except command.CommandError as err:
        raise UdevError(str(err)) from err


def _kill(process: subprocess.Popen[bytes]) -> None:
    process.kill()
    try:
        process.wait(timeout=command.KILL_WAIT)
    except subprocess.TimeoutExpired:
        pass  # stuck in the kernel: PID 1's hand-back reports it


class Udevd:
    """The systemd-udevd the init started, until stop() ends it. One at a time: start()
    returns the running one when a stage is tried again."""

    _running: Udevd | None = None

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process

    @classmethod
    def running(cls) -> Udevd | None:
        return cls._running

    @classmethod
    def start(cls) -> Udevd:
        """Start udevd (unless it runs already) and wait, bounded, until its control
        socket answers."""
        if cls._running is not None and cls._running.process.poll() is None:
            return cls._running
        os.makedirs(os.path.dirname(layout.UDEV_CONTROL), exist_ok=True)
        try:
            process = subprocess.Popen([layout.UDEVD], stdin=subprocess.DEVNULL)
        except OSError as err:
            raise UdevError(f"cannot start {layout.UDEVD}: {err.strerror}") from err
        deadline = time.monotonic() + START_TIMEOUT
        while not os.path.exists(layout.UDEV_CONTROL):
            if process.poll() is not None:
                raise UdevError(f"{layout.UDEVD} {command.describe_status(process.returncode)}"
                                " at start")
            if time.monotonic() > deadline:
                _kill(process)
                raise UdevError(f"{layout.UDEVD} did not create {layout.UDEV_CONTROL} within "
                                f"{START_TIMEOUT:g} s")
            time.sleep(0.01)
        # The socket can exist before udevd accepts messages on it: a ping sent in between
        # is refused ("Invalid sender uid 65534": no credentials were attached yet).
        while True:
            try:
                udevadm("control", "--ping")
                break
            except UdevError:
                if process.poll() is not None or time.monotonic() > deadline:
                    _kill(process)
                    raise
                time.sleep(0.05)
        cls._running = cls(process)
        return cls._running

    def trigger(self) -> None:
        """Replay 'add' for the block devices: udev's properties and /dev/disk links are
        what the init wants of it (the init loads modules itself, from its index)."""
        udevadm("trigger", "--type=devices", "--subsystem-match=block", "--action=add")

    def stop(self) -> None:
        """Ask udevd to exit (SIGTERM: it finishes its workers and exits, as on
        `udevadm control --exit`, whose message a udevd can refuse for want of sender
        credentials: "Invalid sender uid 65534", seen here), wait for it (bounded), then
        clean its database; entries the rules marked db_persist stay. Safe to call again."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                _kill(self.process)
            udevadm("info", "--cleanup-db")
        if Udevd._running is self:
            Udevd._running = None
