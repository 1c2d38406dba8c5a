"""root= against block devices: which one it names, and refusing to guess between two."""

from __future__ import annotations

import os

from pyinit.blockdev import BY_PATH, BlockDevice
from pyinit.errors import BootError
from pyinit.rootspec import RootSpec


class DiscoveryError(BootError, RuntimeError):
    """The root device was not found, or root= matched more than one device."""


CONTAINERS = ("raid", "crypto")  # ID_FS_USAGE of LUKS, LVM PVs and md members: never a root
# An LV's hidden layers show its filesystem too (raid legs, a snapshot's origin copy, a
# thin pool's data): never the root. Their dm names carry these, or their dm uuids a suffix.
LVM_LAYERS = ("_rimage_", "_mimage_", "_tdata", "_tmeta", "_cdata", "_cmeta", "_corig",
              "_vdata", "_wcorig")
LVM_UUID = len("LVM-") + 64  # VG and LV uuids: longer means a layer (-real, -cow, -pool)


def lvm_layer(dev: BlockDevice) -> bool:
    uuid = dev.props.get("DM_UUID", "")
    return uuid.startswith("LVM-") and (
        len(uuid) > LVM_UUID or any(m in dev.props.get("DM_NAME", "") for m in LVM_LAYERS))


def matches(spec: RootSpec, dev: BlockDevice, containers: bool = False) -> bool:
    """Whether SPEC names DEV. A container (LUKS, an LVM PV, an md member) is never named
    by its UUID or label unless CONTAINERS (as crypttab and rd.luks.uuid= name LUKS)."""
    props = dev.props
    if lvm_layer(dev):
        return False
    if spec.kind == "path":
        if spec.value == dev.node or spec.value in dev.links:
            return True
        if spec.value.startswith(BY_PATH) and "ID_PATH" in props:
            return spec.value[len(BY_PATH):] == props["ID_PATH"]
        try:
            st = os.stat(spec.value)
        except OSError:
            return False
        return os.major(st.st_rdev) == dev.devnum[0] and os.minor(st.st_rdev) == dev.devnum[1]
    if spec.kind == "devnum":
        return spec.devnum == dev.devnum
    if spec.kind in ("uuid", "label") and props.get("ID_FS_USAGE") in CONTAINERS and \
            not containers:
        return False  # an md member with its superblock at the end shows the array's fs too
    if spec.kind == "uuid":
        return props.get("ID_FS_UUID", "").lower() == spec.value
    if spec.kind == "label":
        return props.get("ID_FS_LABEL") == spec.value
    if spec.kind == "partuuid":
        return props.get("ID_PART_ENTRY_UUID", "").lower() == spec.value
    if spec.kind == "partlabel":
        return props.get("ID_PART_ENTRY_NAME") == spec.value
    return False


def one_filesystem(devices: list[BlockDevice]) -> bool:
    """Whether DEVICES are the members of one multi-device filesystem (btrfs: one UUID,
    each its own UUID_SUB), which the kernel mounts from any of them."""
    kinds = {(d.props.get("ID_FS_TYPE"), d.props.get("ID_FS_UUID")) for d in devices}
    subs = {d.props.get("ID_FS_UUID_SUB") for d in devices}
    return len(kinds) == 1 and next(iter(kinds))[0] == "btrfs" and len(subs) == len(devices)


def find_root(spec: RootSpec, devices: dict[str, BlockDevice]) -> BlockDevice | None:
    """The one device root= names among DEVICES; DiscoveryError when it names several."""
    found = [d for d in devices.values() if matches(spec, d)]
    if spec.partnroff and found:
        base = found[0]
        want = (base.partnum or 0) + spec.partnroff
        found = [d for d in devices.values()
                 if d.disk == base.disk and d.partnum == want and d.devtype == "partition"]
    if len(found) > 1 and one_filesystem(found):
        return sorted(found, key=lambda d: d.node)[0]  # the members of one btrfs
    if len(found) > 1:
        names = ", ".join(d.summary() for d in sorted(found, key=lambda d: d.node))
        raise DiscoveryError(f"root={spec.text}: {spec.describe()} matches {len(found)} "
                             f"devices, refusing to guess: {names}")
    return found[0] if found else None
