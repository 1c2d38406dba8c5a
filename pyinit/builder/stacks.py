"""Which storage stacks an image carries, and what each brings: the builder's side of
pyinit.storage (whose modules hold each stack's needs and configuration formats).

- ``--storage "luks lvm ..."`` (or ``storage = [...]`` in the config) adds stacks by name.
- A host-only image carries the stacks its root and resume devices sit on, read from sysfs
  (``/sys/block/dm-N/slaves``, the dm uuid prefixes ``CRYPT-`` and ``LVM-``, ``md/``, a
  btrfs root), with the host's crypttab entries they need (and those marked ``initramfs``
  or ``x-initrd.attach``), its mdadm.conf, and command-line defaults naming the volumes
  (``rd.lvm.lv=``, ``resume=`` from initramfs-tools' RESUME).
- A generic image (``--no-hostonly``) carries all four. Any image that is not host-only
  carries every crypttab entry that is not ``noauto`` and that it can unlock (see
  crypttab_entries).
"""

from __future__ import annotations

import os
from collections.abc import Container
from dataclasses import dataclass, field

from pyinit import layout, verity
from pyinit.storage import STACKS, Needs, luks, lvm, mdraid, stack_module

RESUME_CONF = "/etc/initramfs-tools/conf.d/resume"
# udevd's database entries for dm devices must survive `udevadm info --cleanup-db` at the
# hand-over, or a systemd root treats them as not ready (Debian 12's 55-dm.rules has no
# db_persist; later lvm2 moved it into 10-dm.rules). Ordered before 55-dm.rules.
DM_PERSIST_RULE = "11-pyinit-dm-persist.rules"
DM_PERSIST_TEXT = """\
# written by pyinit's builder: keep device-mapper devices' udev database entries for the
# real root's udevd (they hold the DM_UDEV_* flags that say the device is ready)
SUBSYSTEM!="block", GOTO="pyinit_dm_end"
KERNEL!="dm-[0-9]*", GOTO="pyinit_dm_end"
ACTION!="add|change", GOTO="pyinit_dm_end"
OPTIONS+="db_persist"
LABEL="pyinit_dm_end"
"""
DMSETUP = "/sbin/dmsetup"  # the dm rules run it
PACKAGES = {"cryptsetup": "cryptsetup-bin", "lvm": "lvm2", "mdadm": "mdadm",
            "dmsetup": "dmsetup"}  # where a missing tool comes from, for the error


class StackError(ValueError):
    """A stack cannot be carried as asked; the message names what is missing."""


@dataclass
class HostStack:
    """What the host's root (and resume) devices sit on."""

    stacks: set[str] = field(default_factory=set)
    luks: list[tuple[str, str]] = field(default_factory=list)  # (LUKS UUID, mapping name)
    lvs: list[tuple[str, str]] = field(default_factory=list)  # (VG, LV)


@dataclass
class Plan:
    stacks: list[str]
    reasons: list[str]
    files: dict[str, tuple[bytes, int]] = field(default_factory=dict)  # path -> (data, mode)
    cmdline: list[str] = field(default_factory=list)  # defaults the image should carry
    needs: list[Needs] = field(default_factory=list)

    @property
    def tools(self) -> list[str]:
        return list(dict.fromkeys(t for n in self.needs for t in n.tools))

    @property
    def dm_or_md(self) -> bool:
        """Whether the boot may create dm or md devices (a systemd root needs udevd then)."""
        return any(s in self.stacks for s in ("luks", "lvm", "mdraid"))


def _uuid_from_hex(text: str) -> str:
    text = text.lower()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:32]}"


def walk(devnum: tuple[int, int], sys: str = "/sys", found: HostStack | None = None
         ) -> HostStack:
    """The stack under the block device DEVNUM, from sysfs."""
    found = found or HostStack()
    todo = [os.path.realpath(os.path.join(sys, "dev/block", f"{devnum[0]}:{devnum[1]}"))]
    seen: set[str] = set()
    while todo:
        path = todo.pop()
        if path in seen or not os.path.isdir(path):
            continue
        seen.add(path)
        dm_uuid = _read(os.path.join(path, "dm/uuid"))
        dm_name = _read(os.path.join(path, "dm/name"))
        if dm_uuid.startswith("CRYPT-LUKS"):
            found.stacks.add("luks")
            hexid = dm_uuid.split("-")[2] if dm_uuid.count("-") >= 3 else ""
            if len(hexid) == 32:
                found.luks.append((_uuid_from_hex(hexid), dm_name))
        elif dm_uuid.startswith("LVM-"):
            found.stacks.add("lvm")
            named = lvm.split_mapper_name(dm_name)
            # An LV's hidden layers (thin pool data, raid legs, snapshot origins) are held
            # by another LVM device: only the LV itself is named for activation.
            if named and named not in found.lvs and not _held_by_lvm(path):
                found.lvs.append(named)
        elif dm_uuid.startswith(verity.DM_UUID_PREFIX):
            pass  # the appliance feature's (pyinit.builder.appliance), not a storage stack
        elif os.path.isdir(os.path.join(path, "dm")):
            raise StackError(f"/dev/{os.path.basename(path)} ({dm_name}, dm uuid "
                             f"{dm_uuid or 'none'}) is under the root: expected LUKS, LVM or "
                             "md devices (or dm-verity), which are all pyinit brings up")
        if os.path.isdir(os.path.join(path, "md")):
            found.stacks.add("mdraid")
        slaves = os.path.join(path, "slaves")
        if os.path.isdir(slaves):
            todo += [os.path.realpath(os.path.join(slaves, s)) for s in os.listdir(slaves)]
    return found


def _held_by_lvm(path: str) -> bool:
    holders = os.path.join(path, "holders")
    try:
        names = os.listdir(holders)
    except OSError:
        return False
    return any(_read(os.path.join(holders, n, "dm/uuid")).startswith("LVM-") for n in names)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def resume_setting(conf: str = RESUME_CONF) -> str | None:
    """initramfs-tools' RESUME= (Debian's installer writes it), when set."""
    for line in _read(conf).splitlines():
        key, sep, value = line.strip().partition("=")
        if key == "RESUME" and sep and value.strip("\"' ") not in ("", "none"):
            return value.strip("\"' ")
    return None


def devnum_of(spec: str) -> tuple[int, int] | None:
    """The device a resume=/root= style value names on this host, if it exists here."""
    path = spec
    for prefix, directory in (("UUID=", "by-uuid"), ("LABEL=", "by-label"),
                              ("PARTUUID=", "by-partuuid"), ("PARTLABEL=", "by-partlabel")):
        if spec.upper().startswith(prefix):
            path = f"/dev/disk/{directory}/{spec[len(prefix):]}"
    try:
        st = os.stat(path)
    except OSError:
        return None
    return os.major(st.st_rdev), os.minor(st.st_rdev)


def crypttab_entries(text: str, host: HostStack, path: str, generic: bool = False,
                     carried: frozenset[str] = frozenset()) -> tuple[str, list[str]]:
    """The crypttab lines the image needs, and one line for each entry left out.

    Needed, always: the host stack's volumes (host-only), and those marked ``initramfs`` or
    ``x-initrd.attach``; these must be usable, or the build is refused (check_carried
    refuses their key files and headers that are not carried). GENERIC (an image that is
    not host-only, which cannot tell the root's entry from the others) adds every other
    entry that is not ``noauto``, as the installer writes them (Debian: ``sda5_crypt
    UUID=... none luks,discard``, nothing marked). Of those, an entry whose key file or
    detached header is not in the image (CARRIED), or that is no LUKS volume (plain swap
    with a random key), is left out rather than refused: the image could not unlock it,
    and a generic build must not fail on a data volume whose key sits on the root, which
    the real root's systemd-cryptsetup opens after the hand-over."""
    keep, left_out = [], []
    names = {name for _, name in host.luks}
    uuids = {uuid for uuid, _ in host.luks}
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        options = fields[3].split(",") if len(fields) > 3 else []
        source = fields[1]
        uuid = source[5:].lower() if source.upper().startswith("UUID=") else ""
        if fields[0] in names or uuid in uuids or "initramfs" in options \
                or "x-initrd.attach" in options:
            keep.append(line.strip())
        elif generic and "noauto" not in options:
            problem = _unusable(line, number, path, carried)
            if problem:
                left_out.append(f"crypttab entry {fields[0]} left out: {problem}")
            else:
                keep.append(line.strip())
    errors = luks.parse_crypttab("\n".join(keep), path)[1]
    if errors:
        raise StackError("; ".join(errors))
    return "".join(line + "\n" for line in keep), left_out


def _unusable(line: str, number: int, path: str, carried: frozenset[str]) -> str:
    """Why the image could not unlock the crypttab entry LINE; "" when it could."""
    volumes, errors = luks.parse_crypttab("\n" * (number - 1) + line, path)
    if errors:
        return errors[0]
    missing = _uncarried(volumes[0], carried)
    if missing:
        file, what = missing[0]
        return (f"its {what} {file} is not in the image (add --luks-key {file} to "
                "unlock it in the initramfs)")
    return ""


def _uncarried(volume: luks.Volume, carried: Container[str]) -> list[tuple[str, str]]:
    """The key file and detached header VOLUME names that are not in CARRIED: (path, what)."""
    files = ((volume.key, "key file"), (volume.options.get("header"), "header"))
    return [(file, what) for file, what in files if file and file not in carried]


def check_carried(entries: str, carried: set[str], path: str) -> None:
    """Every key file and detached header the crypttab entries name goes into the image
    (--luks-key), or the boot would stop on it: refuse the build instead."""
    volumes, _errors = luks.parse_crypttab(entries, path)
    for volume in volumes:
        missing = _uncarried(volume, carried)
        if missing:
            file, what = missing[0]
            raise StackError(f"{path}: {volume.name} needs the {what} {file}, which the "
                             f"image does not carry: add --luks-key {file} (or "
                             f"SRC:{file}), or leave the entry out of the initramfs")


# Paths a key file may not take: the stacks' configuration and what the builder writes
# beside it (the init would read a key there as its own settings).
RESERVED = (layout.STORAGE_FILE, luks.CRYPTTAB, lvm.LVM_CONF, mdraid.MDADM_CONF,
            layout.UDEV_MODE_FILE, layout.DEFAULT_CMDLINE, layout.SHUTDOWN, "/init")


def plan(asked: list[str], hostonly: bool, generic: list[str], luks_keys: list[str],
         crypttab: str = luks.CRYPTTAB, mdadm_conf: str = mdraid.MDADM_CONF,
         host: HostStack | None = None) -> Plan:
    """The stacks to carry and their files. GENERIC: the stacks a generic image adds (those
    the kernel supports); HOST: the stack under the host's root and resume devices
    (host-only builds)."""
    unknown = [s for s in asked if s not in STACKS]
    if unknown:
        raise StackError(f"--storage {' '.join(unknown)}: expected some of "
                         f"{', '.join(STACKS)}")
    reasons = [f"{s} (asked)" for s in asked]
    stacks = set(asked)
    if generic:
        stacks.update(generic)
        reasons.append(f"{', '.join(generic)} (generic image)")
    host = host or HostStack()
    if hostonly:
        for s in sorted(host.stacks - stacks):
            reasons.append(f"{s} (under the host's root)")
        stacks |= host.stacks
    if luks_keys and "luks" not in stacks:
        stacks.add("luks")
        reasons.append("luks (--luks-key)")
    ordered = [s for s in STACKS if s in stacks]
    result = Plan(ordered, reasons, needs=[stack_module(s).NEEDS for s in ordered])
    if not ordered:
        return result
    result.files[layout.STORAGE_FILE] = ("\n".join(ordered).encode() + b"\n", 0o644)
    if "luks" in ordered:
        for key in luks_keys:
            src, _, dest = key.partition(":")
            if not os.path.isfile(src):
                raise StackError(f"--luks-key {key}: expected a regular file, found "
                                 f"{'nothing' if not os.path.exists(src) else 'no file'}")
            if dest and not dest.startswith("/"):
                raise StackError(f"--luks-key {key}: expected SRC or SRC:/PATH in the image")
            if (dest or src) in result.files or (dest or src) in RESERVED:
                raise StackError(f"--luks-key {key}: expected a path of its own in the image, "
                                 f"found {dest or src}, which the image's own configuration "
                                 "uses: choose another")
            with open(src, "rb") as fh:
                result.files[dest or src] = (fh.read(), 0o400)
        wanted = ""
        if os.path.isfile(crypttab):
            with open(crypttab, encoding="utf-8") as fh:
                wanted, left_out = crypttab_entries(
                    fh.read(), host if hostonly else HostStack(), crypttab,
                    generic=not hostonly, carried=frozenset(result.files))
            result.reasons += left_out
        # A LUKS volume under the root that crypttab does not name gets an entry of its
        # own (its mapping name as on the host; the passphrase asked for).
        for uuid, name in host.luks if hostonly else []:
            if name not in wanted and uuid not in wanted:
                wanted += f"{name} UUID={uuid} none luks\n"
        check_carried(wanted, set(result.files), crypttab)
        if wanted:
            result.files[luks.CRYPTTAB] = (wanted.encode(), 0o600)
    if "lvm" in ordered:
        result.files[lvm.LVM_CONF] = (lvm.LVM_CONF_TEXT.encode(), 0o644)
        if hostonly:
            result.cmdline += [f"rd.lvm.lv={vg}/{lv}" for vg, lv in host.lvs]
    if "mdraid" in ordered and os.path.isfile(mdadm_conf):
        with open(mdadm_conf, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
        if any(line.split()[:1] == ["ARRAY"] for line in text.splitlines()):
            result.files[mdraid.MDADM_CONF] = (text.encode(), 0o644)
    return result


def host_stack(root: tuple[int, int], root_fstype: str, sys: str = "/sys") -> tuple[
        HostStack, list[str]]:
    """The stack under the host's root and resume devices, and the command-line defaults
    for resume (initramfs-tools' RESUME=)."""
    found = walk(root, sys)
    if root_fstype == "btrfs":
        found.stacks.add("btrfs")
    cmdline = []
    resume = resume_setting()
    if resume:
        cmdline.append(f"resume={resume}")
        devnum = devnum_of(resume)
        if devnum is not None:
            walk(devnum, sys, found)
    return found, cmdline


def udev_rules(plan_: Plan) -> list[str]:
    """The host rules the stacks' devices use (carried when the image carries udevd)."""
    return list(dict.fromkeys(r for n in plan_.needs for r in n.udev_rules))
