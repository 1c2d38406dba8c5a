"""update-initramfs as pyinit provides it: initramfs-tools' choice of kernel, its -c/-u/-d,
an image that does not exist, and the trigger under dpkg."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyinit.builder import updateinitramfs as ui


@pytest.mark.parametrize(("newer", "older"), [
    ("6.1.0-10-amd64", "6.1.0-9-amd64"),
    ("7.2.13+deb14-cloud-amd64", "6.18.44-1"),
    ("6.18.44-2", "6.18.44-1"),
    ("1.0", "1.0~rc1"),
    ("1:0.1", "2.0"),
    ("6.1.0-9a", "6.1.0-9"),
])
def test_debian_version_order(newer: str, older: str) -> None:
    assert ui.compare_versions(newer, older) > 0 > ui.compare_versions(older, newer)
    assert ui.compare_versions(newer, newer) == 0
    assert ui.newest([older, newer, older]) == newer


def test_kernel_order_puts_release_candidates_first() -> None:
    """linux-version sort: 6.13-rc7 comes before 6.13, -trunk before -1 (dpkg alone would
    say otherwise)."""
    assert ui.compare_versions("6.13-rc7-amd64", "6.13-amd64") > 0
    assert ui.newest(["6.13-rc7-amd64", "6.13-amd64"]) == "6.13-amd64"
    assert ui.newest(["6.1.0-trunk-amd64", "6.1.0-1-amd64"]) == "6.1.0-1-amd64"
    # Not ASCII: no traceback, an order all the same.
    assert ui.compare_versions("\u00b2:1", "1") != 0 and ui.compare_versions("1.\u0663", "1.3")


@pytest.fixture()
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """Three installed kernels; images for two of them (not the newest)."""
    boot, modules = tmp_path / "boot", tmp_path / "modules"
    boot.mkdir()
    for kver in ("6.1.0-9-amd64", "6.1.0-10-amd64", "6.1.0-11-amd64"):
        (boot / f"vmlinuz-{kver}").write_text("k")
        (modules / kver).mkdir(parents=True)
    for kver in ("6.1.0-9-amd64", "6.1.0-10-amd64"):
        (boot / f"initrd.img-{kver}").write_text("i")
    return boot, modules


def call(tree: tuple[Path, Path], *argv: str, env: dict[str, str] | None = None,
         trigger: bool = True) -> tuple[int, list[list[str]], list[str]]:
    boot, modules = tree
    built: list[list[str]] = []
    triggered: list[str] = []

    def fake_trigger() -> bool:
        triggered.append("update-initramfs")
        return trigger

    def build(args: list[str]) -> int:
        built.append(args)
        return 0

    code = ui.main(list(argv), boot=str(boot), modules=str(modules), env=env or {},
                   build=build, trigger=fake_trigger, hook=str(boot / "pyinit-hook"))
    return code, [a[:2] for a in built], triggered


def test_update_takes_the_newest_kernel_that_has_an_image(tree: tuple[Path, Path]) -> None:
    assert call(tree, "-u")[:2] == (0, [["--update", "6.1.0-10-amd64"]])  # never uname -r
    assert call(tree, "-u", "-k", "all")[:2] == (0, [["--update", "6.1.0-10-amd64"],
                                                     ["--update", "6.1.0-9-amd64"]])
    assert call(tree, "-u", "-k", "6.1.0-9-amd64")[:2] == (0, [["--update", "6.1.0-9-amd64"]])


def test_updating_an_image_that_does_not_exist_says_so_and_succeeds(
        tree: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    boot, _ = tree
    assert call(tree, "-u", "-k", "6.1.0-11-amd64")[:2] == (0, [])
    assert capsys.readouterr().out == (
        f"update-initramfs: {boot}/initrd.img-6.1.0-11-amd64 does not exist: nothing to "
        "update (update-initramfs -c -k 6.1.0-11-amd64 creates it)\n")
    for image in boot.glob("initrd.img-*"):
        image.unlink()
    assert call(tree, "-u")[:2] == (0, [])
    assert "no initramfs in" in capsys.readouterr().out


def test_create_and_delete(tree: tuple[Path, Path]) -> None:
    assert call(tree, "-c", "-k", "6.1.0-11-amd64")[:2] == (0, [["--update", "6.1.0-11-amd64"]])
    assert [k for _, k in call(tree, "-c", "-k", "all")[1]] == [
        "6.1.0-10-amd64", "6.1.0-11-amd64", "6.1.0-9-amd64"]
    assert call(tree, "-d", "-k", "6.1.0-9-amd64")[:2] == (0, [["--remove", "6.1.0-9-amd64"]])
    boot, _ = tree
    (boot / "initrd.img-6.1.0-9-amd64.bak").write_text("a copy")
    (boot / "initrd.img-5.10.0-1-amd64").write_text("a kernel no longer installed")
    assert call(tree, "-d", "-k", "all")[:2] == (0, [["--remove", "6.1.0-10-amd64"],
                                                     ["--remove", "6.1.0-9-amd64"]])


def test_bad_input_is_one_line(tree: tuple[Path, Path],
                               capsys: pytest.CaptureFixture[str]) -> None:
    assert call(tree, "-c")[:2] == (1, [])
    assert capsys.readouterr().err == ("update-initramfs: error: -c: expected -k KVER or -k "
                                       "all, found no -k\n")
    assert call(tree, "-x")[0] == 2
    assert capsys.readouterr().err.startswith("update-initramfs: error: option -x not "
                                              "recognized; usage:")
    assert call(tree)[0] == 2
    assert "expected -c, -u or -d, found none" in capsys.readouterr().err


def test_a_bare_update_under_dpkg_activates_the_trigger(
        tree: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    dpkg = {"DPKG_MAINTSCRIPT_PACKAGE": "firmware-misc-nonfree"}
    assert call(tree, "-u", env=dpkg) == (0, [], ["update-initramfs"])
    assert capsys.readouterr().out == "update-initramfs: deferring update (trigger activated)\n"
    # pyinit's own trigger run, an explicit -k, and a failed activation build now.
    assert call(tree, "-u", env={"DPKG_MAINTSCRIPT_PACKAGE": "pyinit"})[1:] == (
        [["--update", "6.1.0-10-amd64"]], [])
    assert call(tree, "-u", "-k", "all", env=dpkg)[2] == []
    assert call(tree, "-u", env=dpkg, trigger=False)[1:] == (
        [["--update", "6.1.0-10-amd64"]], ["update-initramfs"])
    assert call(tree, "-u")[2] == []  # not under dpkg


def test_initramfs_tools_left_over_hook_leaves_the_build_to_pyinits(
        tree: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    boot, _ = tree
    hook = boot / "pyinit-hook"
    kernel_install = {"DEB_MAINT_PARAMS": "configure"}
    assert call(tree, "-c", "-k", "6.1.0-11-amd64", env=kernel_install)[1] == [
        ["--update", "6.1.0-11-amd64"]]  # no pyinit hook: initramfs-tools' builds it
    hook.write_text("#!/bin/sh\n")
    hook.chmod(0o755)
    assert call(tree, "-c", "-k", "6.1.0-11-amd64", env=kernel_install)[:2] == (0, [])
    assert "makes the image of 6.1.0-11-amd64 in this kernel install" in capsys.readouterr().out
    assert call(tree, "-c", "-k", "6.1.0-11-amd64")[1] == [["--update", "6.1.0-11-amd64"]]
