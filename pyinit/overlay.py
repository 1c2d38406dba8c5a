"""An overlay over a read-only root, its upper layer in tmpfs: a stateless device boots its
squashfs, erofs or ext4 image and every write of the session lands in memory.

Grammar (any of them asks; a value that turns it off, or no key, asks nothing):
- dracut's ``rd.overlay`` or ``rd.overlay=tmpfs[:size=N,nr_blocks=N,nr_inodes=N]``;
  ``rd.overlay=0`` turns it off;
- Ubuntu's ``overlayroot=tmpfs``, ``overlayroot=disabled``;
- systemd's ``systemd.volatile=overlay``, ``systemd.volatile=no`` (``state`` is the real
  root's: its fstab-generator mounts /var).
An upper layer on a partition (``rd.overlay=DEVSPEC``, ``overlayroot=/dev/X``) and
``systemd.volatile=yes`` are refused in one line naming the forms this image takes.

The root is mounted read-only on /sysroot as for any boot (rootflags= apply to it, never to
the overlay), then moved to /run/rootfsbase (dracut's place for the lower layer); a tmpfs
at /run/overlayfs holds upper/ and work/; the overlay is mounted on /sysroot, read-write,
with index, xino, redirect_dir and metacopy off, so that the lower image may be replaced
offline (the next A/B update). /run moves into the real root, so both layers stay
reachable there. /run/systemd/volatile-root names the lower layer's block device, as
systemd's own volatile-root does.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import NamedTuple

from pyinit import mountroot, syscalls
from pyinit.cmdline import FALSE, TRUE

LOWER = "/run/rootfsbase"
UPPER_FS = "/run/overlayfs"  # the tmpfs; upper/ and work/ inside
VOLATILE_ROOT = "/run/systemd/volatile-root"
MODULE_ALIAS = "fs-overlay"
# What lets the lower layer change while the overlay is not mounted (kernel overlayfs.rst,
# "Changes to underlying filesystems").
OFFLINE_SAFE = "index=off,xino=off,redirect_dir=off,metacopy=off"
TMPFS_OPTIONS = ("size", "nr_blocks", "nr_inodes")
TMPFS_VALUE = re.compile(r"[0-9]+[kKmMgGtT%]?")
TAKES = "rd.overlay[=tmpfs[:size=N]], overlayroot=tmpfs, systemd.volatile=overlay"


class OverlayError(RuntimeError):
    """The overlay was asked for in a form this image cannot mount, or could not be
    mounted; the message names the key or the layer."""


class Request(NamedTuple):
    key: str  # the command-line word that asked
    tmpfs_options: str  # size=..., for the upper layer's tmpfs ("" for the kernel's default)




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


def _persistent(key: str, value: str) -> OverlayError:
    return OverlayError(f"{key}={value}: an upper layer on a partition is not supported by "
                        f"this pyinit; expected {TAKES}")


def request(params: Mapping[str, str | None]) -> Request | None:
    """The overlay the command line asks for, or None. Raises OverlayError for a form this
    image cannot mount."""
    asked: list[Request] = []
    if "rd.overlay" in params:
        value = params["rd.overlay"]
        if value is None or value == "tmpfs" or value.lower() in TRUE:
            asked.append(Request("rd.overlay", ""))
        elif value.startswith("tmpfs:"):
            asked.append(Request("rd.overlay", _tmpfs_options("rd.overlay", value,
                                                              value.removeprefix("tmpfs:"))))
        elif value.lower() not in FALSE:
            raise _persistent("rd.overlay", value)
    if "overlayroot" in params:
        value = params["overlayroot"] or ""
        if value == "tmpfs":
            asked.append(Request("overlayroot", ""))
        elif value.startswith(("/dev/", "LABEL=", "UUID=", "device:", "crypt:")):
            raise _persistent("overlayroot", value)
        elif value not in ("disabled", ""):
            raise OverlayError(f"overlayroot={value}: expected tmpfs or disabled")
    if "systemd.volatile" in params:
        value = params["systemd.volatile"]
        word = "yes" if value is None else value.lower()
        if word == "overlay":
            asked.append(Request("systemd.volatile", ""))
        elif word in TRUE:
            shown = "systemd.volatile" if value is None else f"systemd.volatile={value}"
            raise OverlayError(f"{shown}: a tmpfs root with /usr from the image is not "
                               "supported by this pyinit; expected overlay, state or no")
        elif word != "state" and word not in FALSE:  # state: the real root's fstab-generator
            raise OverlayError(f"systemd.volatile={value}: expected overlay, state or no")
    return asked[0] if asked else None


def known(name: str = "overlay", proc_filesystems: str = "/proc/filesystems") -> bool:
    return name in mountroot.filesystems(proc_filesystems, nodev=True)


def mount(asked: Request, target: str, load_alias: Callable[[str], object],
          emit: Callable[..., None], lower: str = LOWER, upper_fs: str = UPPER_FS,
          volatile_root: str = VOLATILE_ROOT) -> None:
    """TARGET (the read-only root, mounted) becomes the lower layer of an overlay mounted on
    TARGET. On failure TARGET is put back as it was, so the stage can be tried again."""
    if not known():
        load_alias(MODULE_ALIAS)
        if not known():
            raise OverlayError(f"{asked.key}: the kernel has no overlay filesystem and the "
                               "image no overlay module (build it with --add-drivers overlay, "
                               "or --no-hostonly)")
    device = os.stat(target).st_dev
    os.makedirs(lower, exist_ok=True)
    try:
        syscalls.mount(target, lower, None, syscalls.MS_MOVE)
    except OSError as err:
        raise OverlayError(f"cannot move the root from {target} to {lower}: "
                           f"{os.strerror(err.errno or 0)}") from err
    tmpfs_mounted = False
    try:
        os.makedirs(upper_fs, exist_ok=True)
        data = ",".join(o for o in ("mode=0755", asked.tmpfs_options) if o)
        try:
            syscalls.mount("tmpfs", upper_fs, "tmpfs", syscalls.MS_NOSUID | syscalls.MS_NODEV,
                           data)
        except OSError as err:
            raise OverlayError(f"{asked.key}: cannot mount the upper layer's tmpfs on "
                               f"{upper_fs} ({data}): {os.strerror(err.errno or 0)}") from err
        tmpfs_mounted = True
        upper, work = f"{upper_fs}/upper", f"{upper_fs}/work"
        for path in (upper, work):
            os.mkdir(path, 0o755)
        layers = f"lowerdir={lower},upperdir={upper},workdir={work},{OFFLINE_SAFE}"
        try:
            syscalls.mount("overlay", target, "overlay", 0, layers)
        except OSError as err:
            raise OverlayError(f"{asked.key}: cannot mount the overlay on {target} "
                               f"({layers}): {os.strerror(err.errno or 0)}") from err
        try:
            _volatile_root(device, volatile_root)
        except OSError as err:
            syscalls.umount2(target, syscalls.MNT_DETACH)
            raise OverlayError(f"{asked.key}: cannot write {volatile_root}: "
                               f"{os.strerror(err.errno or 0)}") from err
    except BaseException:
        _put_back(target, lower, upper_fs if tmpfs_mounted else None)
        raise
    emit("overlay_mounted", key=asked.key, lower=lower, upper=f"{upper_fs}/upper",
         upper_type="tmpfs", options=asked.tmpfs_options or "default")


def _put_back(target: str, lower: str, upper_fs: str | None) -> None:
    """Undo a half-made overlay; a step that fails here leaves the first error standing."""
    if upper_fs is not None:
        try:
            syscalls.umount2(upper_fs, 0)
        except OSError:
            pass
    try:
        syscalls.mount(lower, target, None, syscalls.MS_MOVE)
    except OSError:
        pass


def _volatile_root(device: int, link: str) -> None:
    """LINK -> /dev/block/MAJ:MIN of the lower layer (systemd's volatile-root)."""
    os.makedirs(os.path.dirname(link), exist_ok=True)
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(f"/dev/block/{os.major(device)}:{os.minor(device)}", link)
