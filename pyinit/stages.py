"""The stages after the command line, each a plain function of the options it needs."""

from __future__ import annotations

import os
import time

from pyinit import execinit, fsck, log, mountroot, pid1, rescue, switchroot, udevd
from pyinit.cmdline import Options
from pyinit.discover import BlockDevice, Discovery, DiscoveryError, Hotplug
from pyinit.kmod import Loader
from pyinit.modindex import ModuleIndex


def _emit(event: str, **fields: object) -> None:
    log.get().info(event, **fields)


def load_modules(options: Options) -> Hotplug:
    """rd.driver.pre first, then coldplug: every existing device's MODALIAS."""
    base = f"/lib/modules/{os.uname().release}"
    loader = Loader(ModuleIndex.load(base), options.blacklist, on_event=_emit)
    loader.load_all(options.driver_pre, reason="rd.driver.pre")
    udev = None
    if udevd.present():
        started = time.monotonic()
        udev = udevd.Udevd.start()
        _emit("udevd_started", pid=udev.process.pid,
              duration=round(time.monotonic() - started, 3))
    hotplug = Hotplug(loader, udev)
    devices, with_alias = hotplug.coldplug()
    if udev is not None:
        udev.trigger()
    _emit("coldplug", devices=devices, modaliases=with_alias, index=len(loader.index.paths),
          loaded=",".join(sorted(loader.loaded_here)) or "none")
    return hotplug


def discover_root(options: Options, hotplug: Hotplug) -> BlockDevice:
    if options.root is None:
        raise DiscoveryError("no root= on the kernel command line: expected root=/dev/NAME, "
                             "UUID=, LABEL=, PARTUUID=, PARTLABEL= or MAJ:MIN")
    if options.rootdelay:
        time.sleep(options.rootdelay)
    discovery = Discovery(options.root, hotplug, options.timeout,
                          wait_forever=options.rootwait, emit=_emit)
    device = discovery.run()
    _emit("root_found", device=device.node, type=device.props.get("ID_FS_TYPE", ""),
          uuid=device.props.get("ID_FS_UUID", ""), events=hotplug.events)
    return device


def mount_root(options: Options, hotplug: Hotplug, device: BlockDevice, target: str) -> None:
    probed = device.props.get("ID_FS_TYPE")
    known = mountroot.filesystems()
    for fstype in (options.rootfstype or probed or "").split(","):
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


def hand_over(hotplug: Hotplug, new_root: str) -> tuple[str, int]:
    hotplug.close()
    if hotplug.udev is not None:
        _emit("udevd_stopped", status=hotplug.udev.process.returncode)
    switchroot.make_private("/")
    switchroot.move_api_mounts(new_root)
    return switchroot.switch_root(new_root)


def exec_init(options: Options) -> None:
    ended = pid1.hand_back()
    if ended:
        log.configure(options.log_format, options.quiet)
        log.get().warning("children_ended", count=ended)
    try:
        execinit.exec_init(options.init, options.init_args)
    finally:
        log.configure(options.log_format, options.quiet)  # hand_back closed the kmsg fd
