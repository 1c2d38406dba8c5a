"""The overlay's mounts, as root in a private mount namespace: a read-only lower layer on
a tmpfs tree, the upper in a tmpfs, and what a failure leaves."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from pyinit import overlay, syscalls
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


def paths(top: str) -> dict[str, str]:
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
