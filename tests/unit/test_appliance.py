"""The appliance image: --appliance (or appliance = true, or a host-only build on an image
root) carries verity, squashfs, erofs and overlay, no udevd and no fsck, and makes a failed
boot reboot by default."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pyinit import layout
from pyinit.builder import appliance
from tests.unit.test_build import mkinitramfs
from tests.vm.kernels import Kernel

ROOT = "22 1 {dev} / / rw,relatime shared:1 - {fstype} {source} {options}\n"
LOWER = "30 22 7:0 / /run/rootfsbase ro shared:2 - squashfs /dev/loop0 ro\n"


def host(tmp_path: Path, root: str, extra: str = "", dm_uuid: str = "") -> tuple[str, str]:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(root + extra)
    sys = tmp_path / "sys"
    if dm_uuid:
        (sys / "dev/block/254:0/dm").mkdir(parents=True)
        (sys / "dev/block/254:0/dm/uuid").write_text(dm_uuid + "\n")
    return str(mountinfo), str(sys)


@pytest.mark.parametrize(("root", "extra", "dm_uuid", "reason"), [
    (ROOT.format(dev="0:30", fstype="overlay", source="overlay",
                 options="rw,lowerdir=/run/rootfsbase,upperdir=/run/o/upper,workdir=/run/o/w"),
     LOWER, "", "/ is an overlay over squashfs /dev/loop0"),
    (ROOT.format(dev="254:0", fstype="erofs", source="/dev/mapper/root", options="ro"), "",
     "CRYPT-VERITY-0123-root", "/ is erofs /dev/mapper/root on dm-verity"),
    (ROOT.format(dev="254:0", fstype="ext4", source="/dev/mapper/root", options="ro"), "",
     "CRYPT-VERITY-0123-root", "/ is ext4 /dev/mapper/root on dm-verity"),
    (ROOT.format(dev="8:1", fstype="squashfs", source="/dev/sda1", options="ro"), "", "",
     "/ is squashfs /dev/sda1"),
    (ROOT.format(dev="254:0", fstype="ext4", source="/dev/mapper/vg-root", options="rw"), "",
     "LVM-abc", None),
    (ROOT.format(dev="0:30", fstype="overlay", source="overlay",
                 options="rw,lowerdir=/lower,upperdir=/u,workdir=/w"),
     "31 22 8:1 / /lower ro - ext4 /dev/sda1 ro\n", "", None),
    (ROOT.format(dev="8:1", fstype="ext4", source="/dev/sda1", options="rw"), "", "", None),
])
def test_the_host_root_is_recognised(tmp_path: Path, root: str, extra: str, dm_uuid: str,
                                     reason: str | None) -> None:
    mountinfo, sys = host(tmp_path, root, extra, dm_uuid)
    assert appliance.image_root(mountinfo, sys) == reason
    decided = appliance.decide(False, True, mountinfo, sys)
    assert decided.on == (reason is not None)
    assert not appliance.decide(False, False, mountinfo, sys).on  # only host-only looks


def build(kernel: Kernel, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return mkinitramfs("-o", str(tmp_path / "i.img"), "--force", "--kver", kernel.kver,
                       "--kmoddir", kernel.moddir, "--add-drivers", "virtio_blk", *args)


def test_an_appliance_image(kernel7: Kernel, tmp_path: Path) -> None:
    done = build(kernel7, tmp_path, "--appliance")
    assert done.returncode == 0, done.stderr
    assert "udev: none (an appliance image (asked for (--appliance or appliance = true)))" \
        in done.stdout
    assert "appliance: no fsck, rd.shell=0 rd.emergency=reboot by default" in done.stdout
    listing = mkinitramfs("--list", str(tmp_path / "i.img")).stdout
    for name in ("dm-verity", "dm-mod", "squashfs", "erofs", "overlay", "loop", "virtio_blk"):
        assert f"/{name}.ko" in listing, name  # .ko or .ko.xz
    assert "systemd-udevd" not in listing and "sbin/fsck" not in listing
    out = tmp_path / "x"
    assert mkinitramfs("--extract", str(tmp_path / "i.img"), str(out)).returncode == 0
    assert (out / layout.DEFAULT_CMDLINE.lstrip("/")).read_text() == appliance.CMDLINE + "\n"
    plain = build(kernel7, tmp_path, "--udev", "none")
    assert "  appliance:" not in plain.stdout and "dm_verity" not in plain.stdout


def test_the_configuration_turns_it_on(kernel7: Kernel, tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('appliance = true\ncmdline = "rd.timeout=20"\n')
    done = build(kernel7, tmp_path, "--config", str(tmp_path / "a.toml"))
    assert done.returncode == 0, done.stderr
    out = tmp_path / "x"
    mkinitramfs("--extract", str(tmp_path / "i.img"), str(out))
    assert (out / layout.DEFAULT_CMDLINE.lstrip("/")).read_text() == \
        f"{appliance.CMDLINE} rd.timeout=20\n"  # the configuration's words come later: win


@pytest.mark.parametrize(("args", "toml", "message"), [
    (("--appliance", "--udev", "systemd"), "", "--udev systemd: an appliance image (asked for "
     "(--appliance or appliance = true)) carries no udevd; drop one of them"),
    (("--appliance", "--fsck", "ext4"), "", "--fsck ext4: an appliance image (asked for "
     "(--appliance or appliance = true)) carries no fsck; drop one of them"),
    ((), 'appliance = "yes"\n', "appliance: expected true or false, found a string 'yes'"),
])
def test_what_an_appliance_refuses(kernel7: Kernel, tmp_path: Path, args: tuple[str, ...],
                                   toml: str, message: str) -> None:
    extra: tuple[str, ...] = ()
    if toml:
        (tmp_path / "a.toml").write_text(toml)
        extra = ("--config", str(tmp_path / "a.toml"))
    done = build(kernel7, tmp_path, *args, *extra)
    assert done.returncode == 1
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "i.img").exists()
