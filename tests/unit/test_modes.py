"""Which modules an image carries: host-only, generic or listed, chosen by an explicit switch
(command line, then configuration), else by what was asked for; --add-drivers adds to the
mode's set and chooses the listed mode only when no mode was asked for. The summary says
which mode and why."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pyinit.builder import config
from tests.unit.test_build import mkinitramfs
from tests.vm.kernels import Kernel


def summary(kernel: Kernel, tmp_path: Path, *args: str, toml: str = "") -> tuple[str, int]:
    """The summary's modules line and how many modules it counts."""
    extra = []
    if toml:
        (tmp_path / "mode.toml").write_text(toml)
        extra = ["--config", str(tmp_path / "mode.toml")]
    done = mkinitramfs("-o", str(tmp_path / "i.img"), "--force", "--kver", kernel.kver,
                       "--kmoddir", kernel.moddir, "--udev", "none", *extra, *args)
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if x.startswith("  modules ("))
    match = re.search(r"\): (\d+)", line)
    assert match, line
    return done.stdout, int(match.group(1))


VIRTIO = ("--add-drivers", "virtio_blk virtio_pci")


def test_no_hostonly_with_add_drivers_keeps_the_generic_set(kernel7: Kernel,
                                                            tmp_path: Path) -> None:
    out, count = summary(kernel7, tmp_path, "--no-hostonly", *VIRTIO)
    assert "modules (generic: asked for (--no-hostonly))" in out
    _, generic = summary(kernel7, tmp_path, "--no-hostonly")
    assert count >= generic > 30  # added to the generic set, not instead of it
    assert "  storage: " in out and "lvm" in out  # the generic image's stacks


def test_add_drivers_alone_is_the_listed_mode(kernel7: Kernel, tmp_path: Path) -> None:
    out, count = summary(kernel7, tmp_path, *VIRTIO)
    assert "modules (listed: drivers named (--add-drivers or add_drivers) without" in out
    assert 1 <= count < 10 and "  storage: " not in out  # virtio_pci is built into 7.x
    out, _ = summary(kernel7, tmp_path, "--listed", *VIRTIO)
    assert "modules (listed: asked for (--listed))" in out


def test_no_flags_for_another_kernel_is_generic(kernel7: Kernel, tmp_path: Path) -> None:
    out, _ = summary(kernel7, tmp_path)
    assert f"modules (generic: {kernel7.kver} is not the running kernel)" in out


def test_the_configuration_keeps_its_mode_and_the_command_line_wins(kernel7: Kernel,
                                                                   tmp_path: Path) -> None:
    toml = 'add_drivers = ["virtio_blk", "virtio_pci"]\nhostonly = false\n'
    out, count = summary(kernel7, tmp_path, toml=toml)
    assert f"modules (generic: asked for ({tmp_path}/mode.toml:2: hostonly = false))" in out
    assert count > 30
    out, count = summary(kernel7, tmp_path, "--listed", toml=toml)
    assert "modules (listed: asked for (--listed))" in out and count < 10
    out, _ = summary(kernel7, tmp_path, "--no-hostonly", toml='mode = "listed"\n')
    assert "modules (generic: asked for (--no-hostonly))" in out


def test_two_mode_switches_are_one_line(kernel7: Kernel, tmp_path: Path) -> None:
    done = mkinitramfs("-o", str(tmp_path / "i.img"), "--kver", kernel7.kver, "--kmoddir",
                       kernel7.moddir, "--hostonly", "--no-hostonly")
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "--no-hostonly: not allowed with argument --hostonly" in done.stderr
    assert not (tmp_path / "i.img").exists()


def test_a_built_in_driver_is_named(kernel7: Kernel, tmp_path: Path) -> None:
    out, count = summary(kernel7, tmp_path, "--add-drivers", "ext4")
    assert f"note: built into kernel {kernel7.kver}, nothing to carry: ext4" in out
    assert count == 0
    out, _ = summary(kernel7, tmp_path, "--add-drivers", "virtio_blk")  # virtio_pci built in
    assert "note: " not in out


def test_a_virtio_driver_without_its_bus_is_named(kernel61: Kernel, tmp_path: Path) -> None:
    """Debian 12's kernel has virtio_pci as a module: virtio_blk alone finds no disk."""
    out, _ = summary(kernel61, tmp_path, "--add-drivers", "virtio_blk")
    assert "note: virtio_blk without a virtio transport" in out and "add virtio_pci" in out
    out, _ = summary(kernel61, tmp_path, *VIRTIO)
    assert "note: " not in out


@pytest.mark.parametrize(("switch", "mode", "default", "add", "running", "expected"), [
    ("generic", "listed", ("host-only", "--update"), ["x"], True, "generic"),
    (None, "listed", ("host-only", "--update"), [], True, "listed"),
    (None, None, ("host-only", "--update"), ["x"], False, "host-only"),
    (None, None, None, ["x"], True, "listed"),
    (None, None, None, [], True, "host-only"),
    (None, None, None, [], False, "generic"),
])
def test_mode_precedence(switch: str | None, mode: str | None,
                         default: tuple[str, str] | None, add: list[str], running: bool,
                         expected: str) -> None:
    settings = config.Settings(add_drivers=add, mode=mode, mode_source="f:1: mode")
    chosen, why = config.choose_mode(switch, settings, default, "6.1.0", running)
    assert chosen == expected and why
