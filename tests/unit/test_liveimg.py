"""root=live: in dracut's grammar: the partition, the image file on it, rd.live.ram."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pyinit import cmdline, liveimg, loopdev, stages
from pyinit.liveimg import LiveError, Request
from pyinit.rootspec import parse_root


@pytest.mark.parametrize(("line", "expected"), [
    ("root=live:LABEL=LIVE", Request("/LiveOS", "squashfs.img", False)),
    ("root=live:/dev/sr0 rd.live.dir=/images rd.live.squashimg=rootfs.erofs rd.live.ram=1",
     Request("/images", "rootfs.erofs", True)),
    ("root=live:UUID=abc rd.live.ram", Request("/LiveOS", "squashfs.img", True)),
    ("root=/dev/vda rd.live.ram=1", None),  # rd.live.* alone asks for nothing
])
def test_what_the_line_asks(line: str, expected: Request | None) -> None:
    options = cmdline.parse(line)
    assert not options.errors
    assert stages.live_request(options) == expected


def test_root_names_the_partition() -> None:
    options = cmdline.parse("root=live:LABEL=LIVE")
    assert options.root == parse_root("LABEL=LIVE")
    assert options.root is not None and options.root.text == "live:LABEL=LIVE"  # messages
    assert Request("/LiveOS/", "squashfs.img", False).path == "/run/initramfs/live/LiveOS/" \
        "squashfs.img"


@pytest.mark.parametrize(("line", "message"), [
    ("root=live:LABEL=x rd.live.ram=maybe", "rd.live.ram=maybe: expected 0 or 1"),
    ("root=live:LABEL=x rd.live.squashimg=a/b", "rd.live.squashimg=a/b: expected a file name"),
    ("root=live:LABEL=x rd.live.dir=/../etc", "rd.live.dir=/../etc: expected a directory"),
])
def test_bad_values_are_one_line(line: str, message: str) -> None:
    with pytest.raises(LiveError, match=message):
        stages.live_request(cmdline.parse(line))


def test_a_bad_live_root_is_an_error() -> None:
    assert cmdline.parse("root=live:").errors
    assert cmdline.parse("root=live:NOPE=x/y").errors


@pytest.mark.skipif(shutil.which("mksquashfs") is None, reason="needs squashfs-tools")
def test_the_image_must_be_squashfs_or_erofs(tmp_path: Path) -> None:
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree/file").write_text("x")
    image = tmp_path / "squashfs.img"
    subprocess.run(["mksquashfs", str(tmp_path / "tree"), str(image), "-quiet", "-no-progress"],
                   check=True)
    assert liveimg.image_type(str(image)) == "squashfs"
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n" * 100)
    with pytest.raises(LiveError, match=r"notes.txt: expected a squashfs or erofs image, found "
                                        r"no filesystem"):
        liveimg.image_type(str(text))
    copy = liveimg.copy_to_ram(str(image), str(tmp_path / "ram.img"))
    assert Path(copy).read_bytes() == image.read_bytes()
    assert not (tmp_path / "ram.img.partial").exists()
    with pytest.raises(LiveError, match=r"rd.live.ram=1: cannot copy .*missing"):
        liveimg.copy_to_ram(str(tmp_path / "missing"), str(tmp_path / "ram2.img"))
    assert not os.path.exists(tmp_path / "ram2.img.partial")


def test_the_loop_structures_are_the_kernels() -> None:
    assert loopdev.INFO64.size == 232 and loopdev.CONFIG.size == 304
    info = loopdev._info("/run/x.img", True)
    assert loopdev.INFO64.unpack(info)[8] == loopdev.LO_FLAGS_READ_ONLY | \
        loopdev.LO_FLAGS_AUTOCLEAR


def test_no_loop_control_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(OSError, match=r"loop /x: cannot open .*/control: No such file or "
                                      r"directory \(is the loop module loaded\?\)"):
        loopdev.attach("/x", control=str(tmp_path / "control"))
