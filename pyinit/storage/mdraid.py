"""Linux software RAID: assemble arrays incrementally as their members appear.

Every member is handed to ``mdadm --incremental``, which starts the array once all its
members are there. ``rd.md=0`` turns this off; ``rd.md.uuid=`` (repeatable) restricts it to
those arrays. A host-only image carries the host's mdadm.conf. Arrays still incomplete at
2/3 of rd.timeout are started degraded (``mdadm --run``), with a warning that names what is
there and what is missing. root= should name the filesystem (``UUID=``): an array's name
(md0, md127) depends on the homehost and on the order members appear.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pyinit import command
from pyinit.storage import Env, Needs, StorageError, flag, flag_errors, run_dir
from pyinit.storage import values as cmdline_values

if TYPE_CHECKING:
    from pyinit.blockdev import BlockDevice

MDADM = "/sbin/mdadm"
MDADM_CONF = "/etc/mdadm/mdadm.conf"
RUN = "/run/mdadm"
NEEDS = Needs(
    tools=(MDADM,),
    modules=("md_mod",),
    optional_modules=("raid0", "raid1", "raid10", "raid456", "linear"),
    udev_rules=("63-md-raid-arrays.rules",),
    python=("pyinit.storage.mdraid", "pyinit.shutdown"),
    dirs=(RUN,),
)
# When the kernel refuses a member, its own line (quoted in the message) says why.
REFUSED_HINT = ("read the kernel's words in the message: a member \"does not have a valid "
                "superblock\" for this kernel when a newer kernel has run the array (boot "
                "that kernel, or one at least as new); rd.break=discover then `mdadm --examine "
                "DEVICE` shows the superblock; rd.md=0 leaves RAID out")


def norm_uuid(value: str) -> str:
    """mdadm writes a1b2c3d4:e5f6..., blkid a1b2c3d4-e5f6-...: compare the hex digits."""
    return "".join(c for c in value.lower() if c in "0123456789abcdef")


def check_cmdline(params: Sequence[str]) -> list[str]:
    return flag_errors(params, "rd.md") + [
        f"rd.md.uuid={v}: expected the array's UUID (32 hex digits)"
        for v in cmdline_values(params, "rd.md.uuid") if len(norm_uuid(v)) != 32]


class Array:
    def __init__(self, uuid: str) -> None:
        self.uuid = uuid
        self.members: list[str] = []
        self.device = ""  # /dev/mdN once mdadm made it
        self.started = False


def export(output: bytes) -> dict[str, str]:
    """mdadm --export's KEY=value lines."""
    found = {}
    for line in output.decode(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            found[key.strip()] = value.strip()
    return found


def sys_value(device: str, name: str, sys_block: str = "/sys/block",
              link: bool = False) -> str:
    """/sys/block/mdN/md/NAME: its text, or where it links (rdN: the member in slot N)."""
    path = f"{sys_block}/{os.path.basename(device)}/md/{name}"
    try:
        if link:
            return os.readlink(path)
        with open(path, encoding="ascii") as fh:
            return fh.read().strip()
    except OSError:
        return ""


class MdRaid:
    types = ("linux_raid_member",)

    def __init__(self, env: Env) -> None:
        self.env = env
        params = env.options.params
        errors = check_cmdline(params)
        if errors:
            raise StorageError("; ".join(errors))
        self.enabled = flag(params, "rd.md") is not False
        self.only = {norm_uuid(v) for v in cmdline_values(params, "rd.md.uuid")}
        self.arrays: dict[str, Array] = {}

    def offer(self, dev: BlockDevice) -> bool:
        uuid = norm_uuid(dev.props.get("ID_FS_UUID", ""))
        if not self.enabled or (self.only and uuid not in self.only) or dev.holders():
            return False
        array = self.arrays.setdefault(uuid, Array(uuid))
        if dev.node not in array.members:
            array.members.append(dev.node)
        self.env.load_modules(NEEDS, "mdraid")
        run_dir(RUN)
        self.env.before_activation()
        done = self.env.run([MDADM, "--incremental", "--export", dev.node, "--offroot"],
                            check=False)
        result = export(done.stdout)
        if result.get("MD_DEVICE"):
            array.device = "/dev/" + result["MD_DEVICE"].removeprefix("/dev/")
        if done.status != 0 and not array.device:
            raise StorageError(f"mdadm --incremental {dev.node} "
                               f"{command.describe_status(done.status)}: {done.explain()}",
                               hint=REFUSED_HINT)
        started = result.get("MD_STARTED") == "yes"
        if started and not array.started:
            array.started = True
            self.env.emit("md_started", array=array.device, uuid=dev.props.get("ID_FS_UUID"),
                          members=",".join(array.members))
            return True
        return False

    def degrade(self) -> bool:
        acted = False
        for array in self.arrays.values():
            if array.started or not array.device:
                continue
            done = self.env.run([MDADM, "--run", array.device], check=False)
            if done.status != 0:  # too few members even to run degraded: the picture says so
                self.env.warn("md_not_started", array=array.device, uuid=array.uuid,
                              error=done.explain())
                continue
            array.started = True
            total = sys_value(array.device, "raid_disks")
            slots = [str(n) for n in range(int(total) if total.isdigit() else 0)
                     if not sys_value(array.device, f"rd{n}", link=True)]
            self.env.warn("md_degraded", array=array.device, uuid=array.uuid,
                          present=",".join(array.members), expected=total or "?",
                          missing=len(slots), missing_slots=",".join(slots) or "none")
            acted = True
        return acted

    def ready(self, dev: BlockDevice) -> bool:
        return True

    def picture(self) -> list[str]:
        waiting = [f"{a.device or 'md?'} (UUID {a.uuid}, members seen: {', '.join(a.members)})"
                   for a in self.arrays.values() if not a.started]
        return ["arrays inactive: " + "; ".join(waiting)] if waiting else []


def handler(env: Env) -> MdRaid:
    return MdRaid(env)
