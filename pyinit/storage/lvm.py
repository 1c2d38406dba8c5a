"""LVM: activate the logical volumes the boot needs, once their volume group is complete.

Which volumes: ``rd.lvm.lv=VG/LV`` and ``rd.lvm.vg=VG`` (dracut's names), and what root=
and resume= name (``/dev/mapper/VG-LV``, hyphens in names doubled as in ``debian--vg-root``,
or ``/dev/VG/LV``). When nothing names a volume (``root=UUID=`` on a generic image), or with
``rd.auto``, every complete volume group is activated; ``rd.lvm=0`` turns LVM off.

How: the lvm program, once per new physical volume: one report of the volume groups it
can see (complete or not, their volumes and segment types), then ``lvchange``/``vgchange
-aay --sysinit`` for what is wanted and complete. The device-mapper targets the segment
types need are loaded first (the kernel would ask a /sbin/modprobe the image lacks). At
2/3 of rd.timeout, wanted groups that are still incomplete are activated in degraded mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pyinit import command
from pyinit.rootspec import RootSpec
from pyinit.storage import Env, Needs, StorageError, auto, flag, flag_errors
from pyinit.storage import values as cmdline_values

if TYPE_CHECKING:
    from pyinit.blockdev import BlockDevice

LVM = "/sbin/lvm"
LVM_CONF = "/etc/lvm/lvm.conf"
RUN = "/run/lvm"
# The image's lvm.conf: no udev database to read, no devices file, no daemons, no
# monitoring, no metadata backups on a root that is not mounted yet.
LVM_CONF_TEXT = """\
# lvm.conf for the initramfs, written by pyinit's builder
devices {
    obtain_device_list_from_udev = 0
    external_device_info_source = "none"
    use_devicesfile = 0
}
global {
    use_lvmpolld = 0
    event_activation = 0
    thin_check_executable = ""
    cache_check_executable = ""
}
activation {
    monitoring = 0
}
backup {
    backup = 0
    archive = 0
}
log {
    syslog = 0
}
"""
# Segment types and the kernel modules they need beside dm_mod: the device-mapper target,
# and what the kernel would otherwise ask a /sbin/modprobe for (dm_raid's md personality,
# dm_cache's default policy). Layout variants (raid5_ls, raid6_zr, raid10_near, raid0_meta)
# go by the part before the underscore, see target_modules.
TARGETS = {"thin": ("dm_thin_pool",), "thin-pool": ("dm_thin_pool",),
           "raid0": ("dm_raid", "raid0"), "raid1": ("dm_raid", "raid1"),
           "raid4": ("dm_raid", "raid456"), "raid5": ("dm_raid", "raid456"),
           "raid6": ("dm_raid", "raid456"), "raid10": ("dm_raid", "raid10"),
           "mirror": ("dm_mirror",), "snapshot": ("dm_snapshot",),
           "cache": ("dm_cache", "dm_cache_smq"), "cache-pool": ("dm_cache", "dm_cache_smq"),
           "writecache": ("dm_writecache",), "integrity": ("dm_integrity",),
           "vdo": ("dm_vdo",), "vdo-pool": ("dm_vdo",)}
TARGET_MODULES = tuple(dict.fromkeys(m for mods in TARGETS.values() for m in mods))
NEEDS = Needs(
    tools=(LVM,),
    modules=("dm_mod",),
    # Every module a segment type may load at boot (TARGETS), where the kernel has it as a
    # module: a generic image sees the volumes only at boot; a host-only one takes those
    # this host has loaded (the segment types its volumes use).
    optional_modules=TARGET_MODULES,
    optional_in_use=True,
    udev_rules=("55-dm.rules", "56-lvm.rules", "60-persistent-storage-dm.rules",
                "95-dm-notify.rules"),
    python=("pyinit.storage.lvm", "pyinit.shutdown"),
    dirs=(RUN,),
)
NOT_VG_DIRS = ("mapper", "disk", "md", "block", "char", "bus", "input", "net", "pts", "shm",
               "snd", "dri", "cpu", "fd", "vfio")


def target_modules(segtype: str) -> tuple[str, ...]:
    """The modules an LV of SEGTYPE (as lvs reports it) needs beside dm_mod."""
    return TARGETS.get(segtype) or TARGETS.get(segtype.partition("_")[0], ())


def split_mapper_name(name: str) -> tuple[str, str] | None:
    """/dev/mapper/ names: VG-LV with every hyphen inside a name doubled."""
    marked = name.replace("--", "\0")
    vg, sep, lv = marked.partition("-")
    if not sep or not vg or not lv or "-" in lv.replace("\0", ""):
        return None
    return vg.replace("\0", "-"), lv.replace("\0", "-")


def volume_of(spec: RootSpec | None) -> tuple[str, str] | None:
    """The VG/LV a root= or resume= path names, if it names one."""
    if spec is None or spec.kind != "path":
        return None
    if spec.value.startswith("/dev/mapper/"):
        return split_mapper_name(spec.value[len("/dev/mapper/"):])
    parts = spec.value.split("/")
    if len(parts) == 4 and parts[1] == "dev" and parts[2] not in NOT_VG_DIRS and parts[3]:
        return parts[2], parts[3]
    return None


def is_name(name: str) -> bool:
    """A volume group or logical volume name as lvm accepts it: letters, digits and +_.-,
    not starting with a hyphen, not . or .."""
    return bool(name) and not name.startswith("-") and name not in (".", "..") and \
        all(c.isascii() and (c.isalnum() or c in "+_.-") for c in name)


class Wanted:
    """What the command line asks for: rd.lvm.lv=/rd.lvm.vg=, and the volumes root= and
    resume= name by path. Without rd.lvm.* and without a root named by path (root=UUID=),
    or with rd.auto, every complete volume group (auto).

    A resume= that names no volume by path (resume=UUID=, /dev/disk/by-uuid/..., MAJ:MIN)
    with the root named by path widens the activation to the root's whole volume group:
    the swap volume is nearly always there (Debian's installer: VG-root and VG-swap_1), and
    it is found only once it is active. rd.lvm.vg= and rd.lvm.lv= are explicit choices:
    with either given, nothing is widened."""

    def __init__(self, params: Sequence[str], root: RootSpec | None,
                 resume: RootSpec | None = None) -> None:
        self.errors: list[str] = flag_errors(params, "rd.lvm")
        self.enabled = flag(params, "rd.lvm") is not False
        self.vgs: set[str] = set()
        for value in cmdline_values(params, "rd.lvm.vg"):
            if is_name(value):
                self.vgs.add(value)
            else:
                self.errors.append(f"rd.lvm.vg={value}: expected a volume group name "
                                   "(letters, digits and +_.-)")
        self.lvs: set[tuple[str, str]] = set()
        for value in cmdline_values(params, "rd.lvm.lv"):
            vg, sep, lv = value.partition("/")
            if not sep or not is_name(vg) or not is_name(lv):
                self.errors.append(f"rd.lvm.lv={value}: expected VG/LV")
            else:
                self.lvs.add((vg, lv))
        explicit = bool(self.vgs or self.lvs)
        by_root = volume_of(root)
        by_resume = volume_of(resume)
        for named in (by_root, by_resume):
            if named:
                self.lvs.add(named)
        if by_root and resume is not None and by_resume is None and not explicit:
            self.vgs.add(by_root[0])
        self.auto = auto(params) or not (explicit or by_root)

    def targets(self, vg: str, lvs: Sequence[str]) -> list[str]:
        """What to activate in VG: the whole group, or the wanted volumes in it."""
        if vg in self.vgs or self.auto:
            return [vg]
        return [f"{vg}/{lv}" for (group, lv) in sorted(self.lvs) if group == vg]


def check_cmdline(params: Sequence[str]) -> list[str]:
    return Wanted(params, None).errors


class Group:
    """One volume group as the lvm report shows it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.missing = 0
        self.lvs: dict[str, str] = {}  # LV name -> segment type


class Lvm:
    types = ("LVM2_member",)

    def __init__(self, env: Env) -> None:
        self.env = env
        options = env.options
        self.wanted = Wanted(options.params, options.root, options.resume)
        if self.wanted.errors:
            raise StorageError("; ".join(self.wanted.errors))
        self.pvs: dict[str, BlockDevice] = {}
        self.groups: dict[str, Group] = {}
        self.done: set[str] = set()

    def lvm(self, *args: str, check: bool = True) -> command.Done:
        udev = int(self.env.udev_running)  # the rest is the image's lvm.conf
        config = f"activation {{ udev_sync = {udev} udev_rules = {udev} }}"
        return self.env.run([LVM, *args, "--config", config], check=check)

    def report(self) -> dict[str, Group]:
        done = self.lvm("lvs", "--all", "--noheadings", "--nosuffix", "--separator", "|",
                        "-o", "vg_name,lv_name,segtype,vg_missing_pv_count", check=False)
        groups: dict[str, Group] = {}
        for line in done.stdout.decode(errors="replace").splitlines():
            fields = [f.strip() for f in line.split("|")]
            if len(fields) != 4 or not fields[0]:
                continue
            group = groups.setdefault(fields[0], Group(fields[0]))
            group.missing = int(fields[3]) if fields[3].isdigit() else 0
            if fields[1] and not fields[1].startswith("["):  # hidden sub-volumes: [x_tdata]
                group.lvs[fields[1]] = fields[2]
            for module in target_modules(fields[2]):
                self.env.load_modules(Needs(modules=(module,)), f"LVM {fields[2]} volumes")
        if done.status != 0 and not groups:
            raise StorageError(f"lvm lvs {command.describe_status(done.status)}: "
                               f"{done.explain()}")
        return groups

    def offer(self, dev: BlockDevice) -> bool:
        if not self.wanted.enabled:
            return False
        self.pvs[dev.node] = dev
        return self.activate(degraded=False)

    def activate(self, degraded: bool) -> bool:
        # dm_mod now; the targets the volumes' segment types need, as report() finds them
        # (loading all of them took 1.5 s under TCG for a linear LV).
        self.env.load_modules(Needs(modules=NEEDS.modules), "LVM")
        self.groups = self.report()
        acted = False
        for vg, group in sorted(self.groups.items()):
            for target in self.wanted.targets(vg, list(group.lvs)):
                if target in self.done or (group.missing and not degraded):
                    continue
                lv = target.partition("/")[2]
                if lv and lv not in group.lvs:
                    raise StorageError(f"rd.lvm.lv={target}: volume group {vg} has no logical "
                                       f"volume {lv} (it has: {', '.join(group.lvs) or 'none'})")
                self.env.before_activation()
                mode = ["--activationmode", "degraded"] if group.missing else []
                verb = "lvchange" if lv else "vgchange"
                done = self.lvm(verb, "-aay", "--sysinit", *mode, target, check=not degraded)
                if done.status != 0:  # degraded: what cannot run incomplete stays off
                    self.env.warn("lvm_not_activated", target=target,
                                  error=done.explain())
                    continue
                self.done.add(target)
                self.env.emit("lvm_activated", target=target, degraded=bool(group.missing))
                acted = True
        return acted

    def degrade(self) -> bool:
        """At 2/3 of the time: wanted groups that are still incomplete start degraded; and
        when root= named a volume by a path no group has (LUKS on LVM: root=/dev/mapper/
        NAME-crypt is no LV), every complete group is activated instead."""
        if not self.pvs:
            return False
        if not self.done and not self.wanted.auto and self.groups:
            self.env.warn("lvm_activating_all", reason="no volume group holds what root= "
                          "and rd.lvm.* name", found=",".join(sorted(self.groups)))
            self.wanted.auto = True
        acted = self.activate(degraded=True)
        for vg, group in self.groups.items():
            if group.missing and any(t in self.done for t in self.wanted.targets(vg, [])):
                self.env.warn("lvm_degraded", vg=vg, missing_pvs=group.missing)
        return acted

    def ready(self, dev: BlockDevice) -> bool:
        return True

    def picture(self) -> list[str]:
        lines = []
        incomplete = [f"{g.name} ({g.missing} physical volumes missing)"
                      for g in self.groups.values() if g.missing]
        if incomplete:
            lines.append("volume groups incomplete: " + ", ".join(incomplete))
        named = self.wanted.vgs | {vg for vg, _ in self.wanted.lvs}
        unseen = sorted(named - set(self.groups))
        if unseen:
            lines.append("volume groups named but not found: " + ", ".join(unseen)
                         + f" (found: {', '.join(sorted(self.groups)) or 'none'})")
        return lines


def handler(env: Env) -> Lvm:
    return Lvm(env)
