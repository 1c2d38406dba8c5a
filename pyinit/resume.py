"""resume=: wake a hibernated system instead of booting it again.

Once the device resume= names exists (after LUKS and LVM, for swap on LVM on LUKS), and
before anything is mounted (an ext4 mount replays its journal even read-only), its numbers
go to /sys/power/resume (resume_offset= first, for a swap file). When it holds a
hibernation image the kernel restores it there and then: this process ends with the
machine's state restored. When it holds none, the write only tells the kernel where to
hibernate next time.
"""

from __future__ import annotations

from collections.abc import Callable

from pyinit.blockdev import BlockDevice

SYS_POWER = "/sys/power"
SWAP_TYPES = ("swap", "swsuspend")


def resume_from(dev: BlockDevice, offset: int | None, emit: Callable[..., None],
                warn: Callable[..., None], sys_power: str = SYS_POWER) -> None:
    if dev.fstype not in SWAP_TYPES and offset is None:  # a swap file: its filesystem
        warn("resume_skipped", device=dev.node,
             reason=f"expected a swap device, found {dev.fstype or 'no signature'}")
        return
    emit("resume", device=dev.node, type=dev.fstype, offset=offset or 0)  # swsuspend: image
    try:
        if offset is not None:
            with open(f"{sys_power}/resume_offset", "w", encoding="ascii") as fh:
                fh.write(str(offset))
        with open(f"{sys_power}/resume", "w", encoding="ascii") as fh:
            fh.write(f"{dev.devnum[0]}:{dev.devnum[1]}")
    except OSError as err:
        warn("resume_failed", device=dev.node, error=err.strerror)
