"""The overlay's grammar: dracut's rd.overlay, Ubuntu's overlayroot, systemd.volatile."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyinit import cmdline, layout, overlay, stages
from pyinit.overlay import OverlayError, Request
from pyinit.rootspec import parse_root


@pytest.mark.parametrize(("line", "expected"), [
    ("rd.overlay", Request("rd.overlay", "")),
    ("rd.overlay=tmpfs", Request("rd.overlay", "")),
    ("rd.overlay=tmpfs:size=512M", Request("rd.overlay", "size=512M")),
    ("rd.overlay=tmpfs:size=50%,nr_inodes=10k", Request("rd.overlay", "size=50%,nr_inodes=10k")),
    ("rd.overlay=0", None),
    ("overlayroot=tmpfs", Request("overlayroot", "")),
    ("overlayroot=disabled", None),
    ("systemd.volatile=overlay", Request("systemd.volatile", "")),
    ("systemd.volatile=yes", Request("systemd.volatile", "", root_in_tmpfs=True)),
    ("systemd.volatile", Request("systemd.volatile", "", root_in_tmpfs=True)),
    ("systemd.volatile=no", None),
    ("systemd.volatile=off", None),
    ("systemd.volatile=state", None),  # the real root's systemd mounts /var
    ("rd.overlay=1", Request("rd.overlay", "")),
    ("rd.overlay=yes", Request("rd.overlay", "")),
    ("root=/dev/vda ro", None),
    # dracut's key first when several ask
    ("systemd.volatile=overlay rd.overlay=tmpfs:size=1g", Request("rd.overlay", "size=1g")),
    ("rd.overlay=0 overlayroot=tmpfs", Request("overlayroot", "")),
    # a persistent upper layer on a partition, wiped first or kept read-only
    ("rd.overlay=LABEL=data", Request("rd.overlay", "", parse_root("LABEL=data"))),
    ("rd.overlay=/dev/vdb rd.overlay.reset=1",
     Request("rd.overlay", "", parse_root("/dev/vdb"), reset=True)),
    ("rd.overlay=UUID=ABC rd.overlay.readonly",
     Request("rd.overlay", "", parse_root("UUID=abc"), readonly=True)),
    ("overlayroot=/dev/vdb", Request("overlayroot", "", parse_root("/dev/vdb"))),
    ("overlayroot=device:dev=LABEL=data,timeout=30",
     Request("overlayroot", "", parse_root("LABEL=data"))),
    ("rd.overlay.reset=1", None),  # the reset alone asks for no overlay
])
def test_what_the_line_asks(line: str, expected: Request | None) -> None:
    options = cmdline.parse(line)
    assert overlay.request(options.raw) == expected
    assert stages.overlay_request(options) == expected


@pytest.mark.parametrize(("line", "message"), [
    ("rd.overlay=tmpfs:size=lots", "rd.overlay=tmpfs:size=lots: expected tmpfs options size=N "
                                   "(N, Nk, Nm, Ng or N%), nr_blocks=N, nr_inodes=N, found "
                                   "size=lots"),
    ("rd.overlay=tmpfs:nr_inodes=50%", "found nr_inodes=50%"),
    ("rd.overlay=tmpfs:mode=0777", "found mode=0777"),
    ("overlayroot=sometimes", "overlayroot=sometimes: expected tmpfs, DEVSPEC or disabled"),
    ("overlayroot=crypt:dev=/dev/vdb", "overlayroot=crypt:dev=/dev/vdb: an encrypted upper "
                                       "layer is not supported"),
    ("overlayroot=device:swap=1", "overlayroot=device:swap=1: expected device:dev=DEVSPEC"),
    ("rd.overlay=/dev/", "rd.overlay=/dev/: expected tmpfs, or the upper layer's partition"),
    ("rd.overlay=LABEL=x rd.overlay.reset=maybe", "rd.overlay.reset=maybe: expected 0 or 1"),
    ("systemd.volatile=overlayfs", "systemd.volatile=overlayfs: expected yes, overlay, state "
                                   "or no"),
])
def test_forms_it_cannot_mount_are_one_line(line: str, message: str) -> None:
    with pytest.raises(OverlayError) as err:
        overlay.request(cmdline.parse(line).raw)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_the_keys_that_import_the_module_are_the_ones_it_reads() -> None:
    for key in layout.OVERLAY_KEYS:
        with pytest.raises(OverlayError):
            overlay.request({key: "tmpfs:nonsense"})


def test_known_reads_nodev_filesystems(tmp_path: Path) -> None:
    proc = tmp_path / "filesystems"
    proc.write_text("nodev\tsysfs\n\text4\nnodev\toverlay\n")
    assert overlay.known("overlay", str(proc)) and overlay.known("ext4", str(proc))
    assert not overlay.known("squashfs", str(proc))
    assert not overlay.known("overlay", "/nonexistent")
