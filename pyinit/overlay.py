"""An overlay over a read-only root: a stateless device boots its squashfs, erofs or ext4
image and every write lands in memory (tmpfs), or on a data partition that survives
reboots and that a factory reset wipes.

Grammar (any of them asks; a value that turns it off, or no key, asks nothing):
- dracut's ``rd.overlay`` or ``rd.overlay=tmpfs[:size=N,nr_blocks=N,nr_inodes=N]``; the
  upper layer on a partition with ``rd.overlay=DEVSPEC`` (LABEL=, UUID=, PARTUUID=,
  /dev/...): ``overlay/`` with ``ovlwork/`` beside it on that filesystem;
  ``rd.overlay.reset=1`` wipes both before mounting (the factory reset);
  ``rd.overlay.readonly`` mounts the partition read-only with a tmpfs layer on top;
  ``rd.overlay=0`` turns it off;
- Ubuntu's ``overlayroot=tmpfs``, ``overlayroot=DEVSPEC`` (or ``device:dev=DEVSPEC``),
  ``overlayroot=disabled``;
- systemd's ``systemd.volatile=overlay``, ``systemd.volatile=no`` (``state`` is the real
  root's: its fstab-generator mounts /var); ``systemd.volatile=yes`` (or the bare key)
  makes the root a tmpfs holding only the image's /usr (read-only) and its merged-/usr
  links (bin, sbin, lib...), as systemd-volatile-root does. An encrypted overlayroot
  (``crypt:``) is refused in one line.

The root is mounted read-only on /sysroot as for any boot (rootflags= apply to it, never to
the overlay), then moved to /run/rootfsbase (dracut's place for the lower layer); the
upper layer's filesystem (the tmpfs, or the partition) is /run/overlayfs; the overlay is
mounted on /sysroot, read-write, with index, xino, redirect_dir and metacopy off, so that
the lower image may be replaced offline (the next A/B update). /run moves into the real
root, so both layers stay reachable there. /run/systemd/volatile-root names the lower
layer's block device, as systemd's own volatile-root does.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable, Mapping
from typing import NamedTuple

from pyinit import layout, mountroot, syscalls
from pyinit.cmdline import FALSE, TRUE
from pyinit.errors import BootError
from pyinit.rootspec import RootSpec, RootSpecError, parse_root

LOWER = "/run/rootfsbase"
UPPER_FS = "/run/overlayfs"  # the tmpfs (upper/, work/) or the partition (overlay/, ovlwork/)
TOP_FS = "/run/overlayfs-rw"  # rd.overlay.readonly: the tmpfs over the read-only partition
VOLATILE_ROOT = "/run/systemd/volatile-root"
MODULE_ALIAS = "fs-overlay"
# What lets the lower layer change while the overlay is not mounted (kernel overlayfs.rst,
# "Changes to underlying filesystems").
OFFLINE_SAFE = "index=off,xino=off,redirect_dir=off,metacopy=off"
TMPFS_OPTIONS = ("size", "nr_blocks", "nr_inodes")
TMPFS_VALUE = re.compile(r"[0-9]+[kKmMgGtT%]?")
# Filesystems that cannot hold an upper layer: no trusted xattrs, or read-only by design.
NO_UPPER = ("vfat", "msdos", "exfat", "ntfs", "ntfs3", "iso9660", "udf", "squashfs",
            "erofs", "cramfs")


class OverlayError(BootError, RuntimeError):
    """The overlay was asked for in a form this image cannot mount, or could not be
    mounted; the message names the key or the layer."""


class Request(NamedTuple):
    key: str  # the command-line word that asked
    tmpfs_options: str  # size=..., for the upper layer's tmpfs ("" for the kernel's default)
    device: RootSpec | None = None  # the partition that holds a persistent upper layer
    reset: bool = False  # rd.overlay.reset: wipe the persistent layer first
    readonly: bool = False  # rd.overlay.readonly: keep the persistent layer unchanged
    root_in_tmpfs: bool = False  # systemd.volatile=yes: a tmpfs root, /usr from the image




def _tmpfs_options(key: str, value: str, text: str) -> str:
    options = []
    for option in (o for o in text.split(",") if o):
        name, sep, setting = option.partition("=")
        good = name in TMPFS_OPTIONS and sep and TMPFS_VALUE.fullmatch(setting) \
            and (name == "size" or not setting.endswith("%"))
        if not good:
            raise OverlayError(f"{key}={value}: expected tmpfs options size=N (N, Nk, Nm, Ng "
                               f"or N%), nr_blocks=N, nr_inodes=N, found {option}")
        options.append(f"{name}={setting}")
    return ",".join(options)


def _device(key: str, value: str) -> RootSpec:
    try:
        return parse_root(value)
    except RootSpecError as err:
        raise OverlayError(f"{key}={value}: expected tmpfs, or the upper layer's partition "
                           f"({str(err).partition('expected ')[2] or err})") from err


def _switch(params: Mapping[str, str | None], key: str) -> bool:
    if key not in params:
        return False
    value = params[key]
    if value is not None and value.lower() not in (*TRUE, *FALSE):
        raise OverlayError(f"{key}={value}: expected 0 or 1")
    return value is None or value.lower() in TRUE


def request(params: Mapping[str, str | None]) -> Request | None:
    """The overlay the command line asks for, or None. Raises OverlayError for a form this
    image cannot mount."""
    asked: list[Request] = []
    persistent = {"reset": _switch(params, "rd.overlay.reset"),
                  "readonly": _switch(params, "rd.overlay.readonly")}
    if "rd.overlay" in params:
        value = params["rd.overlay"]
        if value is None or value == "tmpfs" or value.lower() in TRUE:
            asked.append(Request("rd.overlay", ""))
        elif value.startswith("tmpfs:"):
            asked.append(Request("rd.overlay", _tmpfs_options("rd.overlay", value,
                                                              value.removeprefix("tmpfs:"))))
        elif value.lower() not in FALSE:
            asked.append(Request("rd.overlay", "", _device("rd.overlay", value), **persistent))
    if "overlayroot" in params:
        value = params["overlayroot"] or ""
        if value == "tmpfs":
            asked.append(Request("overlayroot", ""))
        elif value.startswith("crypt:"):
            raise OverlayError(f"overlayroot={value}: an encrypted upper layer is not "
                               "supported by this pyinit; expected tmpfs, DEVSPEC or disabled")
        elif value.startswith(("/dev/", "LABEL=", "UUID=", "PARTUUID=", "PARTLABEL=",
                               "device:")):
            spec = value.removeprefix("device:")
            if value.startswith("device:"):
                fields = dict(f.partition("=")[::2] for f in spec.split(","))
                if "dev" not in fields:
                    raise OverlayError(f"overlayroot={value}: expected device:dev=DEVSPEC")
                spec = fields["dev"]
            asked.append(Request("overlayroot", "", _device("overlayroot", spec),
                                 **persistent))
        elif value not in ("disabled", ""):
            raise OverlayError(f"overlayroot={value}: expected tmpfs, DEVSPEC or disabled")
    if "systemd.volatile" in params:
        value = params["systemd.volatile"]
        word = "yes" if value is None else value.lower()
        if word == "overlay":
            asked.append(Request("systemd.volatile", ""))
        elif word in TRUE:  # the root is a tmpfs, with only /usr from the image
            asked.append(Request("systemd.volatile", "", root_in_tmpfs=True))
        elif word != "state" and word not in FALSE:  # state: the real root's fstab-generator
            raise OverlayError(f"systemd.volatile={value}: expected yes, overlay, state or no")
    return asked[0] if asked else None


def known(name: str = "overlay", proc_filesystems: str = "/proc/filesystems") -> bool:
    return name in mountroot.filesystems(proc_filesystems, nodev=True)


def mount(asked: Request, target: str, load_alias: Callable[[str], object],
          emit: Callable[..., None], lower: str = LOWER, upper_fs: str = UPPER_FS,
          volatile_root: str = VOLATILE_ROOT, top_fs: str = TOP_FS,
          partition: tuple[str, str | None] | None = None) -> None:
    """TARGET (the read-only root, mounted) becomes the lower layer of an overlay mounted on
    TARGET; PARTITION is the (node, probed type) of ASKED.device, found by the caller. On
    failure TARGET is put back as it was, so the stage can be tried again."""
    device = os.stat(target).st_dev
    if asked.root_in_tmpfs:  # no overlay at all
        _usr_in_tmpfs(asked, target, emit, lower, volatile_root, device)
        return
    if not known():
        load_alias(MODULE_ALIAS)
        if not known():
            raise OverlayError(f"{asked.key}: the kernel has no overlay filesystem and the "
                               "image no overlay module (build it with --add-drivers overlay, "
                               "or --no-hostonly)")
    _move(target, lower)
    mounted: list[str] = []  # what a failure takes down, the last first
    reset = 0
    try:
        if partition is None:
            _tmpfs(asked, upper_fs, mounted)
            lowers, upper, work, kind = lower, f"{upper_fs}/upper", f"{upper_fs}/work", "tmpfs"
        else:
            _partition(asked, partition, upper_fs, load_alias, mounted)
            layer, kind = f"{upper_fs}/overlay", partition[0]
            if asked.readonly:
                if not os.path.isdir(layer):
                    raise OverlayError(f"{asked.key}: {partition[0]} has no overlay/ to keep "
                                       "unchanged; boot once without rd.overlay.readonly")
                _tmpfs(asked, top_fs, mounted)
                lowers, upper, work = f"{layer}:{lower}", f"{top_fs}/upper", f"{top_fs}/work"
            else:
                lowers, upper, work = lower, layer, f"{upper_fs}/ovlwork"
                if asked.reset:
                    reset = wipe(upper) + wipe(work)
                    emit("overlay_reset", device=partition[0], removed=reset)
        for path in (upper, work):
            os.makedirs(path, 0o755, exist_ok=True)
        layers = f"lowerdir={lowers},upperdir={upper},workdir={work},{OFFLINE_SAFE}"
        try:
            syscalls.mount("overlay", target, "overlay", 0, layers)
        except OSError as err:
            raise OverlayError(f"{asked.key}: cannot mount the overlay on {target} "
                               f"({layers}): {os.strerror(err.errno or 0)}") from err
        mounted.append(target)
        _volatile_root(asked, device, volatile_root)
    except BaseException:
        _put_back(target, lower, mounted)
        raise
    emit("overlay_mounted", key=asked.key, lower=lower, upper=upper, upper_type=kind,
         options=asked.tmpfs_options or "default",
         mode="read-only" if asked.readonly else "persistent" if partition else "volatile")


def _usr_in_tmpfs(asked: Request, target: str, emit: Callable[..., None], lower: str,
                  volatile_root: str, device: int) -> None:
    """systemd.volatile=yes: TARGET becomes a tmpfs with the image's /usr bound read-only
    and the image's top-level links into /usr copied (a merged-/usr system's /sbin/init);
    the image stays reachable at LOWER."""
    if not os.path.isdir(f"{target}/usr") or not os.listdir(f"{target}/usr"):
        raise OverlayError(f"{asked.key}: the root has no /usr to keep in a tmpfs root; "
                           "expected a merged-/usr image (or systemd.volatile=overlay)")
    links = {name: os.readlink(f"{target}/{name}") for name in sorted(os.listdir(target))
             if os.path.islink(f"{target}/{name}")
             and os.readlink(f"{target}/{name}").lstrip("/").startswith("usr/")}
    _move(target, lower)
    mounted: list[str] = []
    try:
        _tmpfs(asked, target, mounted)
        for directory in ("/usr", *layout.API_MOUNTS):  # the API mounts move in here
            os.mkdir(f"{target}{directory}", 0o755)
        for name, points in links.items():
            os.symlink(points, f"{target}/{name}")
        try:
            syscalls.mount(f"{lower}/usr", f"{target}/usr", None, syscalls.MS_BIND)
            mounted.append(f"{target}/usr")
            syscalls.mount("none", f"{target}/usr", None,
                           syscalls.MS_REMOUNT | syscalls.MS_BIND | syscalls.MS_RDONLY)
        except OSError as err:
            raise OverlayError(f"{asked.key}: cannot bind the image's /usr into the tmpfs "
                               f"root: {os.strerror(err.errno or 0)}") from err
        _volatile_root(asked, device, volatile_root)
    except BaseException:
        _put_back(target, lower, mounted)
        raise
    emit("overlay_mounted", key=asked.key, lower=lower, upper=target, upper_type="tmpfs",
         options=asked.tmpfs_options or "default", mode="tmpfs root",
         links=",".join(links) or "none")


def _tmpfs(asked: Request, where: str, mounted: list[str]) -> None:
    os.makedirs(where, exist_ok=True)
    data = ",".join(o for o in ("mode=0755", asked.tmpfs_options) if o)
    try:
        syscalls.mount("tmpfs", where, "tmpfs", syscalls.MS_NOSUID | syscalls.MS_NODEV, data)
    except OSError as err:
        raise OverlayError(f"{asked.key}: cannot mount the upper layer's tmpfs on "
                           f"{where} ({data}): {os.strerror(err.errno or 0)}") from err
    mounted.append(where)


def _partition(asked: Request, partition: tuple[str, str | None], where: str,
               load_alias: Callable[[str], object], mounted: list[str]) -> None:
    """The persistent upper layer's partition on WHERE: read-write, or read-only."""
    node, fstype = partition
    if not fstype:
        raise OverlayError(f"{asked.key}: {node} holds no filesystem; expected one for the "
                           "upper layer (ext4, xfs, btrfs)")
    if fstype in NO_UPPER:
        raise OverlayError(f"{asked.key}: {node} is {fstype}, which cannot hold an overlay's "
                           "upper layer (no trusted extended attributes); expected ext4, xfs "
                           "or btrfs")
    if not known(fstype):
        load_alias(f"fs-{fstype}")
    flags = syscalls.MS_NOSUID | syscalls.MS_NODEV
    if asked.readonly:
        flags |= syscalls.MS_RDONLY
    os.makedirs(where, exist_ok=True)
    try:
        syscalls.mount(node, where, fstype, flags)
    except OSError as err:
        if err.errno in (errno.EROFS, errno.EACCES) and not asked.readonly:
            raise OverlayError(f"{asked.key}: {node} is read-only, so it cannot hold a "
                               f"persistent upper layer ({os.strerror(err.errno or 0)}); "
                               "rd.overlay.readonly keeps a layer unchanged under a tmpfs") \
                from err
        raise OverlayError(f"{asked.key}: cannot mount {node} ({fstype}) on {where}: "
                           f"{os.strerror(err.errno or 0)}") from err
    mounted.append(where)


def wipe(directory: str) -> int:
    """Remove what DIRECTORY holds (never following a link); returns how many entries."""
    removed = 0
    if not os.path.isdir(directory) or os.path.islink(directory):
        return 0
    for top, dirs, files in os.walk(directory, topdown=False):
        for name in files:
            os.unlink(os.path.join(top, name))
            removed += 1
        for name in dirs:
            path = os.path.join(top, name)
            os.unlink(path) if os.path.islink(path) else os.rmdir(path)
            removed += 1
    return removed


def _put_back(target: str, lower: str, mounted: list[str]) -> None:
    """Undo a half-made overlay; a step that fails here leaves the first error standing."""
    for path in reversed(mounted):
        try:
            syscalls.umount2(path, syscalls.MNT_DETACH if path == target else 0)
        except OSError:
            pass
    try:
        syscalls.mount(lower, target, None, syscalls.MS_MOVE)
    except OSError:
        pass


def _move(target: str, lower: str) -> None:
    os.makedirs(lower, exist_ok=True)
    try:
        syscalls.mount(target, lower, None, syscalls.MS_MOVE)
    except OSError as err:
        raise OverlayError(f"cannot move the root from {target} to {lower}: "
                           f"{os.strerror(err.errno or 0)}") from err


def _volatile_root(asked: Request, device: int, link: str) -> None:
    """LINK -> /dev/block/MAJ:MIN of the lower layer (systemd's volatile-root)."""
    try:
        os.makedirs(os.path.dirname(link), exist_ok=True)
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(f"/dev/block/{os.major(device)}:{os.minor(device)}", link)
    except OSError as err:
        raise OverlayError(f"{asked.key}: cannot write {link}: "
                           f"{os.strerror(err.errno or 0)}") from err
