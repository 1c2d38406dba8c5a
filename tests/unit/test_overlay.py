"""The overlay's grammar: dracut's rd.overlay, Ubuntu's overlayroot, systemd.volatile."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyinit import cmdline, layout, overlay, stages
from pyinit.overlay import OverlayError, Request


@pytest.mark.parametrize(("line", "expected"), [
    ("rd.overlay", Request("rd.overlay", "")),
    ("rd.overlay=tmpfs", Request("rd.overlay", "")),
    ("rd.overlay=tmpfs:size=512M", Request("rd.overlay", "size=512M")),
    ("rd.overlay=tmpfs:size=50%,nr_inodes=10k", Request("rd.overlay", "size=50%,nr_inodes=10k")),
    ("rd.overlay=0", None),
    ("overlayroot=tmpfs", Request("overlayroot", "")),
    ("overlayroot=disabled", None),
    ("systemd.volatile=overlay", Request("systemd.volatile", "")),
    ("systemd.volatile=no", None),
    ("systemd.volatile=off", None),
    ("systemd.volatile=state", None),  # the real root's systemd mounts /var
    ("rd.overlay=1", Request("rd.overlay", "")),
    ("rd.overlay=yes", Request("rd.overlay", "")),
    ("root=/dev/vda ro", None),
    # dracut's key first when several ask
    ("systemd.volatile=overlay rd.overlay=tmpfs:size=1g", Request("rd.overlay", "size=1g")),
    ("rd.overlay=0 overlayroot=tmpfs", Request("overlayroot", "")),
])
def test_what_the_line_asks(line: str, expected: Request | None) -> None:
    options = cmdline.parse(line)
    assert overlay.request(options.raw) == expected
    assert stages.overlay_request(options) == expected


@pytest.mark.parametrize(("line", "message"), [
    ("rd.overlay=LABEL=data", "rd.overlay=LABEL=data: an upper layer on a partition is not "
                              "supported by this pyinit; expected rd.overlay[=tmpfs[:size=N]], "
                              "overlayroot=tmpfs, systemd.volatile=overlay"),
    ("rd.overlay=tmpfs:size=lots", "rd.overlay=tmpfs:size=lots: expected tmpfs options size=N "
                                   "(N, Nk, Nm, Ng or N%), nr_blocks=N, nr_inodes=N, found "
                                   "size=lots"),
    ("rd.overlay=tmpfs:nr_inodes=50%", "found nr_inodes=50%"),
    ("rd.overlay=tmpfs:mode=0777", "found mode=0777"),
    ("overlayroot=/dev/vdb", "overlayroot=/dev/vdb: an upper layer on a partition"),
    ("overlayroot=sometimes", "overlayroot=sometimes: expected tmpfs or disabled"),
    ("systemd.volatile=yes", "systemd.volatile=yes: a tmpfs root with /usr from the image is "
                             "not supported by this pyinit; expected overlay, state or no"),
    ("systemd.volatile", "systemd.volatile: a tmpfs root"),
    ("systemd.volatile=overlayfs", "systemd.volatile=overlayfs: expected overlay, state or no"),
])
def test_forms_it_cannot_mount_are_one_line(line: str, message: str) -> None:
    with pytest.raises(OverlayError) as err:
        overlay.request(cmdline.parse(line).raw)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_the_keys_that_import_the_module_are_the_ones_it_reads() -> None:
    for key in layout.OVERLAY_KEYS:
        with pytest.raises(OverlayError):
            overlay.request({key: "/dev/nonsense"})


def test_known_reads_nodev_filesystems(tmp_path: Path) -> None:
    proc = tmp_path / "filesystems"
    proc.write_text("nodev\tsysfs\n\text4\nnodev\toverlay\n")
    assert overlay.known("overlay", str(proc)) and overlay.known("ext4", str(proc))
    assert not overlay.known("squashfs", str(proc))
    assert not overlay.known("overlay", "/nonexistent")
