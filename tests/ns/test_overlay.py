"""The overlay's mounts, as root in a private mount namespace: a read-only lower layer on
a tmpfs tree, the upper in a tmpfs, and what a failure leaves."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pyinit import loopdev, overlay, syscalls
from pyinit.rootspec import parse_root
from tests.ns.test_switchroot import in_namespace

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for mount namespaces")


def read_only_root(top: str) -> str:
    """TOP/sysroot: a tmpfs holding /etc/os-release, remounted read-only (the lower)."""
    root = f"{top}/sysroot"
    os.makedirs(root)
    syscalls.mount("tmpfs", root, "tmpfs", 0, "mode=0755")
    os.makedirs(f"{root}/etc")
    Path(f"{root}/etc/os-release").write_text("ID=lower\n")
    syscalls.mount("none", root, None, syscalls.MS_REMOUNT | syscalls.MS_RDONLY)
    return root


def paths(top: str) -> dict[str, Any]:
    return {"lower": f"{top}/run/rootfsbase", "upper_fs": f"{top}/run/overlayfs",
            "volatile_root": f"{top}/run/systemd/volatile-root"}


def test_writes_land_in_the_upper_layer_and_the_lower_stays(tmp_path: Path) -> None:
    top = str(tmp_path)

    def body() -> dict[str, Any]:
        root = read_only_root(top)
        device = os.stat(root).st_dev
        events: list[tuple[str, dict[str, object]]] = []
        overlay.mount(overlay.Request("rd.overlay", "size=8m"), root,
                      lambda alias: None, lambda e, **f: events.append((e, f)), **paths(top))
        Path(f"{root}/etc/os-release").write_text("ID=changed\n")
        Path(f"{root}/new").write_text("x")
        with open("/proc/self/mountinfo", encoding="utf-8") as fh:
            mounts = {line.split()[4]: line.split(" - ")[1].split()[0] for line in fh}
        return {
            "seen": Path(f"{root}/etc/os-release").read_text(),
            "lower": Path(f"{top}/run/rootfsbase/etc/os-release").read_text(),
            "upper": sorted(os.listdir(f"{top}/run/overlayfs/upper")),
            "types": [mounts.get(root), mounts.get(f"{top}/run/rootfsbase"),
                      mounts.get(f"{top}/run/overlayfs")],
            "volatile": os.readlink(f"{top}/run/systemd/volatile-root"),
            "device": f"/dev/block/{os.major(device)}:{os.minor(device)}",
            "events": [e for e, _ in events],
        }

    seen = in_namespace(body)
    assert seen["seen"] == "ID=changed\n" and seen["lower"] == "ID=lower\n"
    assert seen["upper"] == ["etc", "new"]
    assert seen["types"] == ["overlay", "tmpfs", "tmpfs"]
    assert seen["volatile"] == seen["device"]
    assert seen["events"] == ["overlay_mounted"]


def test_a_failed_overlay_puts_the_root_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    top = str(tmp_path)
    monkeypatch.setattr(overlay, "OFFLINE_SAFE", "no_such_option=1")  # the overlay refuses

    def body() -> dict[str, Any]:
        root = read_only_root(top)
        try:
            overlay.mount(overlay.Request("overlayroot", ""), root, lambda alias: None,
                          lambda e, **f: None, **paths(top))
        except overlay.OverlayError as err:
            error = str(err)
        with open("/proc/self/mountinfo", encoding="utf-8") as fh:
            points = [line.split()[4] for line in fh]
        return {"message": error, "root_back": os.path.ismount(root),
                "release": Path(f"{root}/etc/os-release").read_text(),
                "left": [p for p in points if p.startswith(f"{top}/run")]}

    seen = in_namespace(body)
    assert seen["message"].startswith(f"overlayroot: cannot mount the overlay on {top}/sysroot "
                                    f"(lowerdir={top}/run/rootfsbase,")
    assert seen["message"].endswith(": Invalid argument")
    assert seen["root_back"] and seen["release"] == "ID=lower\n" and seen["left"] == []


def test_a_kernel_without_overlay_says_which_module(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []
    monkeypatch.setattr(overlay, "known", lambda *a: False)
    with pytest.raises(overlay.OverlayError, match=r"^rd.overlay: the kernel has no overlay "
                                                   r"filesystem and the image no overlay module "
                                                   r"\(build it with --add-drivers overlay"):
        overlay.mount(overlay.Request("rd.overlay", ""), str(tmp_path), asked.append,
                      lambda e, **f: None, **paths(str(tmp_path)))
    assert asked == ["fs-overlay"]


def test_a_volatile_root_that_cannot_be_written_takes_the_overlay_down(tmp_path: Path) -> None:
    top = str(tmp_path)

    def body() -> dict[str, Any]:
        root = read_only_root(top)
        Path(f"{top}/afile").write_text("")
        where = {**paths(top), "volatile_root": f"{top}/afile/volatile-root"}
        try:
            overlay.mount(overlay.Request("rd.overlay", ""), root, lambda alias: None,
                          lambda e, **f: None, **where)
        except overlay.OverlayError as err:
            message = str(err)
        with open("/proc/self/mountinfo", encoding="utf-8") as fh:
            kinds = {line.split()[4]: line.split(" - ")[1].split()[0] for line in fh}
        return {"message": message, "root": kinds.get(root),
                "left": [p for p in kinds if p.startswith(f"{top}/run")]}

    seen = in_namespace(body)
    assert seen["message"].startswith("rd.overlay: cannot write ") and seen["root"] == "tmpfs"
    assert seen["left"] == []


def ext4_partition(tmp_path: Path) -> str:
    image = str(tmp_path / "data.ext4")
    with open(image, "wb") as fh:
        fh.truncate(16 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", image], check=True)
    return image


def boot_once(top: str, image: str, asked: overlay.Request, write: str | None
              ) -> dict[str, Any]:
    """One boot's overlay over a fresh read-only root, its upper layer on IMAGE (an ext4
    file on a loop device, as a data partition): what the root shows, then WRITE."""
    os.makedirs(top)
    root = read_only_root(top)
    node, fd = loopdev.attach(image, read_only=False)
    events: list[tuple[str, dict[str, object]]] = []
    try:
        overlay.mount(asked, root, lambda alias: None, lambda e, **f: events.append((e, f)),
                      **paths(top), top_fs=f"{top}/run/overlayfs-rw",
                      partition=(node, "ext4"))
    finally:
        os.close(fd)
    seen = sorted(n for n in os.listdir(root) if n != "etc")
    if write:
        Path(f"{root}/{write}").write_text("x")
    on_partition = sorted(os.listdir(f"{top}/run/overlayfs/overlay"))
    for path in (root, f"{top}/run/overlayfs-rw", f"{top}/run/overlayfs"):
        if os.path.ismount(path):
            syscalls.umount2(path, 0)
    return {"seen": seen, "on_partition": on_partition, "events": events}


def test_a_persistent_upper_layer_survives_reboots_until_a_reset(tmp_path: Path) -> None:
    image = ext4_partition(tmp_path)
    spec = parse_root("/dev/loop")  # what the caller's discovery matched; not read here

    def body() -> dict[str, Any]:
        plain = overlay.Request("rd.overlay", "", spec)
        return {
            "first": boot_once(f"{tmp_path}/1", image, plain, "kept"),
            "second": boot_once(f"{tmp_path}/2", image, plain, None),
            "readonly": boot_once(f"{tmp_path}/3", image, plain._replace(readonly=True),
                                  "lost"),
            "after": boot_once(f"{tmp_path}/4", image, plain, None),
            "reset": boot_once(f"{tmp_path}/5", image, plain._replace(reset=True), None),
        }

    seen = in_namespace(body)
    assert seen["first"]["seen"] == [] and seen["first"]["on_partition"] == ["kept"]
    assert seen["first"]["events"][0][1]["mode"] == "persistent"
    assert seen["second"]["seen"] == ["kept"]  # it survived the "reboot"
    assert seen["readonly"]["seen"] == ["kept"]
    assert seen["readonly"]["events"][0][1]["mode"] == "read-only"
    assert seen["after"]["seen"] == ["kept"]  # the read-only boot's write went to tmpfs
    [(event, fields), mounted] = seen["reset"]["events"]
    assert event == "overlay_reset" and int(fields["removed"]) >= 1
    assert seen["reset"]["seen"] == [] and mounted[0] == "overlay_mounted"


@pytest.mark.parametrize(("partition", "message"), [
    (("/dev/sdz1", "vfat"), "rd.overlay: /dev/sdz1 is vfat, which cannot hold an overlay's "
                            "upper layer (no trusted extended attributes); expected ext4"),
    (("/dev/sdz1", None), "rd.overlay: /dev/sdz1 holds no filesystem"),
])
def test_an_upper_layer_it_cannot_use_puts_the_root_back(
        tmp_path: Path, partition: tuple[str, str | None], message: str) -> None:
    top = str(tmp_path)

    def body() -> dict[str, Any]:
        root = read_only_root(top)
        try:
            overlay.mount(overlay.Request("rd.overlay", "", parse_root("/dev/sdz1")), root,
                          lambda alias: None, lambda e, **f: None, **paths(top),
                          partition=partition)
        except overlay.OverlayError as err:
            error = str(err)
        return {"message": error, "root_back": os.path.ismount(root)}

    seen = in_namespace(body)
    assert seen["message"].startswith(message) and seen["root_back"]


def test_a_read_only_partition_is_one_line(tmp_path: Path) -> None:
    image = ext4_partition(tmp_path)
    top = str(tmp_path)

    def body() -> dict[str, Any]:
        root = read_only_root(top)
        node, fd = loopdev.attach(image, read_only=True)  # a write-protected disk
        try:
            overlay.mount(overlay.Request("rd.overlay", "", parse_root("LABEL=data")), root,
                          lambda alias: None, lambda e, **f: None, **paths(top),
                          partition=(node, "ext4"))
        except overlay.OverlayError as err:
            error = str(err)
        finally:
            os.close(fd)
        return {"message": error, "node": node, "root_back": os.path.ismount(root)}

    seen = in_namespace(body)
    assert seen["message"].startswith(f"rd.overlay: {seen['node']} is read-only, so it cannot "
                                      "hold a persistent upper layer"), seen["message"]
    assert seen["root_back"]


def test_volatile_yes_keeps_only_usr_from_the_image(tmp_path: Path) -> None:
    top = str(tmp_path)

    def body() -> dict[str, Any]:
        root = f"{top}/sysroot"
        os.makedirs(root)
        syscalls.mount("tmpfs", root, "tmpfs", 0, "mode=0755")
        os.makedirs(f"{root}/usr/sbin")
        Path(f"{root}/usr/sbin/init").write_text("#!/bin/sh\n")
        os.symlink("usr/sbin", f"{root}/sbin")
        os.symlink("/etc/elsewhere", f"{root}/notusr")
        os.makedirs(f"{root}/etc")
        syscalls.mount("none", root, None, syscalls.MS_REMOUNT | syscalls.MS_RDONLY)
        events: list[tuple[str, dict[str, object]]] = []
        overlay.mount(overlay.Request("systemd.volatile", "", root_in_tmpfs=True), root,
                      lambda alias: None, lambda e, **f: events.append((e, f)), **paths(top))
        Path(f"{root}/written").write_text("x")
        try:
            Path(f"{root}/usr/x").write_text("x")
            usr_write = "ok"
        except OSError:
            usr_write = "refused"
        return {"names": sorted(os.listdir(root)), "init": os.path.isfile(f"{root}/sbin/init"),
                "usr_write": usr_write, "image": sorted(os.listdir(f"{top}/run/rootfsbase")),
                "event": events[0][1]}

    seen = in_namespace(body)
    # no /etc, no link outside /usr; the API mounts' directories for the hand-over
    assert seen["names"] == ["dev", "proc", "run", "sbin", "sys", "usr", "written"]
    assert seen["init"] and seen["usr_write"] == "refused"
    assert seen["image"] == ["etc", "notusr", "sbin", "usr"]
    assert seen["event"]["mode"] == "tmpfs root" and seen["event"]["links"] == "sbin"


def test_volatile_yes_needs_a_usr(tmp_path: Path) -> None:
    top = str(tmp_path)

    def body() -> dict[str, Any]:
        root = read_only_root(top)
        try:
            overlay.mount(overlay.Request("systemd.volatile", "", root_in_tmpfs=True), root,
                          lambda alias: None, lambda e, **f: None, **paths(top))
        except overlay.OverlayError as err:
            return {"message": str(err), "root_back": os.path.ismount(root)}
        return {"message": ""}

    seen = in_namespace(body)
    assert seen["message"].startswith("systemd.volatile: the root has no /usr to keep")
    assert seen["root_back"]
