"""The build half of appliance roots (pyinit.verity, pyinit.overlay): a read-only squashfs or
erofs image, under dm-verity, with an overlay, replaced whole by an A/B updater.

``--appliance`` (TOML ``appliance = true``) makes the image for such a root: the modules of
verity, squashfs, erofs and overlay (those the kernel has), pyinit.verity, no udevd and
no fsck (a
read-only image has nothing to check; the init finds devices from sysfs and its uevents),
and ``rd.shell=0 rd.emergency=reboot`` as the image's default, so that a slot that fails
reboots and the boot loader's try counter runs out, instead of a console waiting on a
device nobody watches. The real command line still wins over that default.

A host-only build turns it on by itself when this host's root is such a root: / an overlay
over squashfs or erofs, squashfs or erofs itself, or a dm-verity device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from pyinit import verity
from pyinit.builder.kmodules import ModuleTree

MODULES = ("dm_verity", "squashfs", "erofs", "overlay", "loop")
# The init's modules only an appliance image carries (a plain image stays as it was: the
# hashes' extension modules and the verity code are 0.1 MB): pyinit.verity imports
# pyinit.devmapper and the hashes. A roothash= given to an image without them is refused
# in one line (pyinit.stages.verity_requests).
PYTHON = ("pyinit.verity",)
CMDLINE = "rd.shell=0 rd.emergency=reboot"
IMAGE_TYPES = ("squashfs", "erofs")


class ApplianceError(ValueError):
    """--appliance together with something an appliance image does not carry."""


@dataclass
class Appliance:
    on: bool
    reason: str  # for the summary


@dataclass
class Mount:
    point: str
    devnum: tuple[int, int]
    fstype: str
    source: str
    options: str  # the superblock's options (an overlay's lowerdir=...)


def mounts(mountinfo: str = "/proc/self/mountinfo") -> dict[str, Mount]:
    """Each mount point's last mount (the one that shows), from MOUNTINFO."""
    found: dict[str, Mount] = {}
    with open(mountinfo, encoding="utf-8") as fh:
        for line in fh:
            fields = line.split()
            sep = fields.index("-")
            major, minor = (int(x) for x in fields[2].split(":"))
            found[fields[4]] = Mount(fields[4], (major, minor), fields[sep + 1],
                                     fields[sep + 2], fields[sep + 3] if len(fields) > sep + 3
                                     else "")
    return found


def is_verity(devnum: tuple[int, int], sys: str = "/sys") -> bool:
    path = os.path.join(sys, "dev/block", f"{devnum[0]}:{devnum[1]}", "dm/uuid")
    try:
        with open(path, encoding="ascii") as fh:
            return fh.read().startswith(verity.DM_UUID_PREFIX)
    except OSError:
        return False


def image_root(mountinfo: str = "/proc/self/mountinfo", sys: str = "/sys") -> str | None:
    """Why this host's root is an appliance root, or None when it is not one."""
    table = mounts(mountinfo)
    root = table.get("/")
    if root is None:
        return None
    under = root
    if root.fstype == "overlay":
        lowers = [o.removeprefix("lowerdir=") for o in root.options.split(",")
                  if o.startswith("lowerdir=")]
        lower = table.get(lowers[0].split(":")[0]) if lowers else None
        if lower is None:
            return None
        under = lower
    what = f"{under.fstype} {under.source}"
    if is_verity(under.devnum, sys):
        what += " on dm-verity"
    elif under.fstype not in IMAGE_TYPES:
        return None
    return f"/ is an overlay over {what}" if under is not root else f"/ is {what}"


def decide(asked: bool, hostonly: bool, mountinfo: str = "/proc/self/mountinfo",
           sys: str = "/sys") -> Appliance:
    if asked:
        return Appliance(True, "asked for (--appliance or appliance = true)")
    if hostonly:
        reason = image_root(mountinfo, sys)
        if reason is not None:
            return Appliance(True, f"host-only: {reason}")
    return Appliance(False, "")


def check(appliance: Appliance, udev: str, fsck: list[str], udev_rules: list[str]) -> None:
    """An appliance image carries neither udevd nor fsck: asking for them too is refused."""
    if not appliance.on:
        return
    if udev == "systemd" or udev_rules:
        asked = "--udev systemd" if udev == "systemd" else "udev_rules"
        raise ApplianceError(f"{asked}: an appliance image ({appliance.reason}) carries no "
                             "udevd; drop one of them")
    if fsck:
        raise ApplianceError(f"--fsck {' '.join(fsck)}: an appliance image "
                             f"({appliance.reason}) carries no fsck; drop one of them")


def modules(tree: ModuleTree) -> list[str]:
    """The appliance modules this kernel has (as modules or built in)."""
    return [name for name in MODULES if tree.resolve(name)]
