"""The stages after the command line, each a plain function of the options it needs."""

from __future__ import annotations

import errno
import os
import time
from typing import TYPE_CHECKING

from pyinit import (
    cmdline,
    early,
    execinit,
    fsck,
    layout,
    log,
    mountroot,
    pid1,
    rescue,
    switchroot,
)
from pyinit import udevd as udevd_
from pyinit.assemble import Discovery
from pyinit.blockdev import BlockDevice
from pyinit.cmdline import Options
from pyinit.errors import BootError
from pyinit.kmod import Loader, ModuleError, running_kernel_index
from pyinit.match import DiscoveryError
from pyinit.rootspec import RootSpec, RootSpecError, parse_root
from pyinit.uevents import Hotplug

if TYPE_CHECKING:
    from pyinit import liveimg as liveimg_
    from pyinit import overlay as overlay_
    from pyinit import verity as verity_


def _emit(event: str, **fields: object) -> None:
    log.get().info(event, **fields)


def _warn(event: str, **fields: object) -> None:
    log.get().warning(event, **fields)


def load_modules(options: Options, previous: Hotplug | None) -> Hotplug:
    """rd.driver.pre first, then coldplug: every existing device's MODALIAS. With
    pyinit.early=1 the early thread did most of it while the init imported; what it did is
    logged here, and the pass below only loads for devices that came since. A try that fails
    closes what it started (its listener, its udevd), so a retried stage starts clean."""
    if previous is not None:
        previous.close()
    done = early.collect()
    for event, fields in done.events:
        _emit(event, **fields)
    if done.error:
        raise ModuleError(errno.EIO, done.error)
    loader = Loader(running_kernel_index(), options.blacklist, on_event=_emit)
    loader.loaded_here += done.loaded
    loader.load_all(options.driver_pre, reason="rd.driver.pre")
    udev = None
    if udevd_.mode() == "always":
        started = time.monotonic()
        udev = udevd_.Udevd.start()
        _emit("udevd_started", pid=udev.process.pid,
              duration=round(time.monotonic() - started, 3))
    try:
        hotplug = Hotplug(loader, udev)
    except BaseException:
        if udev is not None:
            udev.stop()
        raise
    try:
        devices, with_alias = hotplug.coldplug(done.seen)
        if udev is not None:
            udev.trigger()
    except BaseException:
        hotplug.close()
        raise
    _emit("coldplug", devices=devices, modaliases=with_alias, index=len(loader.index.paths),
          loaded=",".join(sorted(loader.loaded_here)) or "none")
    return hotplug


def discover_root(options: Options, hotplug: Hotplug) -> BlockDevice:
    if options.root is None:
        raise DiscoveryError("no root= on the kernel command line: expected root=/dev/NAME, "
                             "UUID=, LABEL=, PARTUUID=, PARTLABEL= or MAJ:MIN")
    if options.rootdelay:
        time.sleep(options.rootdelay)
    handlers = []
    stacks = storage_stacks()
    if stacks:  # only an image that carries storage stacks imports them
        from pyinit import storage

        env = storage.Env(options, hotplug.loader, _emit, _warn)
        handlers = storage.handlers(env, stacks)
    resume = None if options.noresume else options.resume
    discovery = Discovery(options.root, hotplug, options.timeout,
                          wait_forever=options.rootwait, emit=_emit, warn=_warn,
                          handlers=handlers, resume=resume)
    device = discovery.run()
    _emit("root_found", device=device.node, type=device.props.get("ID_FS_TYPE", ""),
          uuid=device.props.get("ID_FS_UUID", ""), events=hotplug.events)
    if discovery.resume_device is not None:
        from pyinit import resume as resume_

        resume_.resume_from(discovery.resume_device, options.resume_offset, _emit, _warn)
    return device


def storage_stacks() -> list[str]:
    """The storage stacks this image carries (pyinit.layout.STORAGE_FILE), without
    importing pyinit.storage for an image that carries none."""
    try:
        with open(layout.STORAGE_FILE, encoding="ascii") as fh:
            return fh.read().split()
    except OSError:
        return []


class VerityMissing(BootError, RuntimeError):
    """A verity key on the line of an image built without pyinit.verity."""


def verity_requests(options: Options) -> list[verity_.Request]:
    """The verified devices the line asks for, root then usr ([] without their keys, and
    then pyinit.verity is not imported). Raises VerityError for a form this image cannot
    set up."""
    if not any(key in options.raw for key in layout.VERITY_KEYS):
        return []
    try:
        from pyinit import verity
    except ModuleNotFoundError as err:
        if err.name != "pyinit.verity":
            raise  # a module verity needs is missing: a bug, with its traceback
        key = next(k for k in layout.VERITY_KEYS if k in options.raw)
        raise VerityMissing(f"{key}: this image carries no dm-verity support (rebuild it "
                            "with --appliance)") from err
    return verity.requests(options.raw, options.root, options.params)


def verified_root(options: Options) -> Options:
    """The options the root is found and mounted with once verity made it."""
    from pyinit import verity

    return options._replace(root=parse_root(verity.mapped("root")), read_only=True)


def open_verity(request: verity_.Request, options: Options, hotplug: Hotplug) -> None:
    """Wait for the data and hash devices (within rd.timeout together), check them against
    the hash and map /dev/mapper/NAME."""
    from pyinit import verity

    for name in verity.MODULES:
        hotplug.loader.load(name, reason="verity")
    start = time.monotonic()
    found = []
    for spec, key in ((request.data, f"systemd.verity_{request.name}_data"),
                      (request.hash_device, f"systemd.verity_{request.name}_hash")):
        left = max(options.timeout - (time.monotonic() - start), 0.0)
        found.append(Discovery(spec, hotplug, left, wait_forever=options.rootwait, emit=_emit,
                               warn=_warn, key=key).run())
    data, hashed = found
    verity.open_device(request, data.node, data.devnum, hashed.node, hashed.devnum, _emit)


def usr_spec(options: Options, verified: bool) -> RootSpec | None:
    """What /usr is mounted from: mount.usr=, or /dev/mapper/usr for a verified /usr."""
    if verified:
        return parse_root("/dev/mapper/usr")
    text = options.raw.get("mount.usr")
    if text is None:
        return None
    try:
        return parse_root(text)
    except RootSpecError as err:
        raise cmdline.CmdlineError(str(err).replace("root=", "mount.usr=")) from None


def mount_usr(spec: RootSpec, options: Options, hotplug: Hotplug, target: str,
              read_only: bool) -> None:
    """/usr on TARGET/usr (systemd's mount.usr=, mount.usrfstype=, mount.usrflags=)."""
    device = Discovery(spec, hotplug, options.timeout, wait_forever=options.rootwait,
                       emit=_emit, warn=_warn, key="mount.usr").run()
    probed = device.props.get("ID_FS_TYPE")
    fstype = options.raw.get("mount.usrfstype") or None
    if (fstype or probed) and (fstype or probed) not in mountroot.filesystems():
        hotplug.loader.load_optional_alias(f"fs-{fstype or probed}", reason="mount.usr")
    read_only = read_only or (fstype or probed) in mountroot.READ_ONLY
    usr = f"{target}/usr"
    mounted = mountroot.mount_root(device.node, usr, fstype, probed,
                                   options.raw.get("mount.usrflags"), read_only)
    _emit("usr_mounted", device=device.node, target=usr, type=mounted,
          mode="ro" if read_only else "rw")


def mount_root(options: Options, hotplug: Hotplug, device: BlockDevice, target: str) -> None:
    probed = device.props.get("ID_FS_TYPE")
    types = [t for t in (options.rootfstype or probed or "").split(",") if t]
    if types and all(t in mountroot.READ_ONLY for t in types):
        options = options._replace(read_only=True)  # no fsck, no rw to ask for
    known = mountroot.filesystems()
    for fstype in types:
        if fstype and fstype not in known:
            # The kernel would ask /sbin/modprobe for fs-TYPE; the image has none: load it here.
            hotplug.loader.load_optional_alias(f"fs-{fstype}", reason=f"root filesystem {fstype}")
    if not options.read_only:
        result = fsck.run(device.node, options.rootfstype or probed, options.fsck_mode,
                          options.fsck_repair)
        if result.ran:
            _emit("fsck", device=device.node, tool=result.tool, status=result.status)
        if result.reboot:
            _emit("fsck_reboot", device=device.node, reason="fsck fixed errors, asks for reboot")
            rescue.power("reboot")
    fstype = mountroot.mount_root(device.node, target, options.rootfstype,
                                  probed, options.rootflags, options.read_only)
    _emit("root_mounted", device=device.node, target=target, type=fstype,
          mode="ro" if options.read_only else "rw")


def live_request(options: Options) -> liveimg_.Request | None:
    """root=live:'s image file (None for any other root=, and then pyinit.liveimg is not
    imported). Raises LiveError for a bad rd.live.* value."""
    if not (options.raw.get("root") or "").startswith(cmdline.LIVE):
        return None
    from pyinit import liveimg

    return liveimg.request(options.raw)


def mount_live(request: liveimg_.Request, hotplug: Hotplug, device: BlockDevice,
               target: str) -> None:
    from pyinit import liveimg

    loader = hotplug.loader
    liveimg.mount(request, device.node, device.props.get("ID_FS_TYPE"), target,
                  lambda name: loader.load(name, reason="root=live:"),
                  lambda alias: loader.load_optional_alias(alias, reason="root=live:"), _emit)


def overlay_request(options: Options) -> overlay_.Request | None:
    """The overlay the line asks for (None without any of its keys, and then pyinit.overlay
    is not imported). Raises OverlayError for a form this image cannot mount."""
    if not any(key in options.raw for key in layout.OVERLAY_KEYS):
        return None
    from pyinit import overlay

    return overlay.request(options.raw)


def mount_overlay(request: overlay_.Request, options: Options, hotplug: Hotplug,
                  target: str) -> None:
    """The overlay over the mounted root; a persistent upper layer's partition is waited
    for first (within rd.timeout)."""
    from pyinit import overlay

    partition = None
    if request.device is not None:
        found = Discovery(request.device, hotplug, options.timeout,
                          wait_forever=options.rootwait, emit=_emit, warn=_warn,
                          key=request.key).run()
        partition = (found.node, found.props.get("ID_FS_TYPE") or None)
    overlay.mount(request, target, lambda alias: hotplug.loader.load_optional_alias(
        alias, reason="overlay"), _emit, partition=partition)


def hand_over(options: Options, hotplug: Hotplug, new_root: str) -> tuple[str, int, str]:
    """Check, stop listening (and udevd), move the API mounts, switch. Raises only before
    the switch itself succeeded; what cannot be deleted afterwards is logged. Returns the
    method, the number of initramfs entries deleted and the init that will run."""
    init = switchroot.check(new_root, options.init, _warn)
    hotplug.close()
    udev = udevd_.Udevd.running() or hotplug.udev
    if udev is not None:
        udev.stop()
        _emit("udevd_stopped", status=udev.process.returncode)
    switchroot.make_private("/")
    moved = switchroot.move_api_mounts(new_root, _warn)
    try:
        method, removed, errors = switchroot.switch_root(new_root)
    except OSError:
        switchroot.move_back(new_root, moved)  # the console needs /dev, /proc, /sys, /run
        raise
    if errors:
        _warn("initramfs_not_deleted", count=len(errors), first=errors[0])
    return method, removed, init


def exec_init(options: Options, started: tuple[int, int]) -> None:
    """Hand the machine to the real init; returns only by raising (nothing could run).
    STARTED: when the init started (realtime and monotonic microseconds), for systemd."""
    log.close()  # hand_back closes every descriptor above 2
    ended, stuck = pid1.hand_back()
    log.configure(options.log_format, options.quiet)
    if ended:
        log.get().warning("children_ended", count=ended, stuck=",".join(stuck) or "none")
    log.restore_kmsg()
    try:
        execinit.exec_init(options.init, options.init_args, os.environ, started)
    finally:
        # Still ours: the failure path logs, and Ctrl-Alt-Del must again release the real
        # root read-only before rebooting (hand_back gave it to the kernel).
        log.unthrottle_kmsg()
        pid1.take_over(rescue.ctrl_alt_del)
