"""The distribution hooks as shell scripts, run with the arguments and environment Debian's
kernel packages and kernel-install give them; post-update.d; --update's targets, its bad
input and its --boot-test; the packages pyproject installs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from pyinit.builder import boottest, cli, distro
from pyinit.builder.pipeline import Result
from tests.unit.test_output import read_only


@pytest.fixture()
def hooks(tmp_path: Path) -> tuple[Path, Path]:
    """The hooks installed under a scratch root, calling a recorder instead of the builder."""
    record = tmp_path / "calls"
    recorder = tmp_path / "recorder"
    recorder.write_text(f'#!/bin/sh\necho "$@" >> {record}\n')
    recorder.chmod(0o755)
    written = distro.install_hooks(str(tmp_path / "root"), command=str(recorder))
    assert [os.path.relpath(p, tmp_path / "root") for p in written] == [
        "etc/kernel/postinst.d/pyinit", "etc/kernel/postrm.d/pyinit",
        "etc/kernel/install.d/50-pyinit.install", "etc/systemd/system/pyinit-shutdown.service"]
    enabled = tmp_path / "root/etc/systemd/system/sysinit.target.wants/pyinit-shutdown.service"
    assert os.readlink(enabled) == "/etc/systemd/system/pyinit-shutdown.service"
    unit = (tmp_path / "root/etc/systemd/system/pyinit-shutdown.service").read_text()
    assert f"ExecStop={recorder} --prepare-shutdown" in unit
    assert "ConditionPathExists=/run/initramfs/storage-active" in unit
    return tmp_path / "root", record


def run(hook: Path, *args: str, check: bool = True,
        **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(hook), *args], check=check, timeout=30, capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin", **env})


def calls(record: Path) -> list[str]:
    return record.read_text().splitlines() if record.exists() else []


def test_debian_postinst_and_postrm_hooks(hooks: tuple[Path, Path]) -> None:
    root, record = hooks
    postinst = root / "etc/kernel/postinst.d/pyinit"
    postrm = root / "etc/kernel/postrm.d/pyinit"
    run(postinst, "6.1.0-9-amd64", "/boot/vmlinuz-6.1.0-9-amd64",
        DEB_MAINT_PARAMS="configure 6.1.99-1")
    run(postinst, "6.1.0-9-amd64", "/boot/vmlinuz-6.1.0-9-amd64",
        DEB_MAINT_PARAMS="'abort-upgrade' '6.1.99-1'")
    run(postinst, "6.1.0-9-amd64", "/boot/vmlinuz-6.1.0-9-amd64", INITRD="No")
    run(postinst, "6.1.0-8-amd64", "/boot/vmlinuz-6.1.0-8-amd64")  # by hand: no params
    run(postrm, "6.1.0-9-amd64", "/boot/vmlinuz-6.1.0-9-amd64", DEB_MAINT_PARAMS="remove")
    run(postrm, "6.1.0-9-amd64", "/boot/vmlinuz-6.1.0-9-amd64", DEB_MAINT_PARAMS="upgrade")
    assert calls(record) == ["--update 6.1.0-9-amd64", "--update 6.1.0-8-amd64",
                             "--remove 6.1.0-9-amd64"]


@pytest.mark.parametrize("args", [(), ("", "/boot/vmlinuz-")], ids=["missing", "empty"])
def test_debian_hooks_without_a_kernel_version_fail_in_one_line(
        hooks: tuple[Path, Path], args: tuple[str, ...]) -> None:
    root, record = hooks
    for name in ("postinst.d", "postrm.d"):
        hook = root / "etc/kernel" / name / "pyinit"
        done = run(hook, *args, check=False, DEB_MAINT_PARAMS="configure")
        assert done.returncode == 1 and done.stdout == "", done
        assert done.stderr == (f"{hook}: expected the kernel version as the first argument "
                               "(KVER /boot/vmlinuz-KVER), found none\n")
    assert calls(record) == []


def test_kernel_install_plugin(hooks: tuple[Path, Path]) -> None:
    root, record = hooks
    plugin = root / "etc/kernel/install.d/50-pyinit.install"
    staging = "/tmp/staging-area"
    args = ("add", "6.9.0", "/boot/efi/abc/6.9.0", "/usr/lib/modules/6.9.0/vmlinuz")
    run(plugin, *args, KERNEL_INSTALL_LAYOUT="bls", KERNEL_INSTALL_STAGING_AREA=staging)
    run(plugin, *args, KERNEL_INSTALL_LAYOUT="uki", KERNEL_INSTALL_STAGING_AREA=staging,
        KERNEL_INSTALL_INITRD_GENERATOR="pyinit")
    quiet = run(plugin, *args, KERNEL_INSTALL_LAYOUT="bls", KERNEL_INSTALL_STAGING_AREA=staging,
                KERNEL_INSTALL_INITRD_GENERATOR="dracut")  # another generator: nothing
    assert quiet.stdout == quiet.stderr == ""
    verbose = run(plugin, *args, KERNEL_INSTALL_LAYOUT="bls", KERNEL_INSTALL_VERBOSE="1",
                  KERNEL_INSTALL_STAGING_AREA=staging, KERNEL_INSTALL_INITRD_GENERATOR="dracut")
    assert verbose.stdout == "pyinit: initrd generator is dracut, not pyinit: nothing to do\n"
    assert verbose.stderr == ""
    run(plugin, *args, KERNEL_INSTALL_LAYOUT="compat", KERNEL_INSTALL_STAGING_AREA=staging)
    run(plugin, *args, "/boot/given-initrd", KERNEL_INSTALL_LAYOUT="bls",
        KERNEL_INSTALL_STAGING_AREA=staging)  # an initrd was given
    run(plugin, "remove", "6.9.0", "/boot/efi/abc/6.9.0", KERNEL_INSTALL_LAYOUT="bls",
        KERNEL_INSTALL_STAGING_AREA=staging)
    want = f"--kver 6.9.0 -o {staging}/initrd --force"
    assert calls(record) == [want, want]


def test_hooks_left_after_pyinit_was_removed_do_nothing(hooks: tuple[Path, Path]) -> None:
    """apt-get install initramfs-tools removes pyinit but keeps its hooks (conffiles): the
    next kernel install must not fail on the missing command."""
    root, record = hooks
    (record.parent / "recorder").unlink()
    for hook, args in (("postinst.d/pyinit", ("6.1.0-9-amd64", "/boot/vmlinuz-6.1.0-9-amd64")),
                       ("postrm.d/pyinit", ("6.1.0-9-amd64", "/boot/vmlinuz-6.1.0-9-amd64")),
                       ("install.d/50-pyinit.install", ("add", "6.9.0", "/e", "/k"))):
        done = run(root / "etc/kernel" / hook, *args, check=False,
                   DEB_MAINT_PARAMS="configure", KERNEL_INSTALL_LAYOUT="bls",
                   KERNEL_INSTALL_STAGING_AREA="/tmp/x")
        assert (done.returncode, done.stdout, done.stderr) == (0, "", ""), (hook, done)


def test_post_update_runs_like_run_parts(tmp_path: Path) -> None:
    directory = tmp_path / "post-update.d"
    directory.mkdir()
    log = tmp_path / "log"
    for name, mode in (("10-first", 0o755), ("20-second", 0o755), ("30.disabled", 0o755),
                       ("40-not-executable", 0o644)):
        script = directory / name
        script.write_text(f'#!/bin/sh\necho "{name} $1 $2" >> {log}\n')
        script.chmod(mode)
    said: list[str] = []
    distro.post_update("6.9.0", "/boot/initrd.img-6.9.0", str(directory), said.append)
    assert log.read_text().splitlines() == ["10-first 6.9.0 /boot/initrd.img-6.9.0",
                                            "20-second 6.9.0 /boot/initrd.img-6.9.0"]
    (directory / "50-fails").write_text("#!/bin/sh\necho broken >&2\nexit 3\n")
    (directory / "50-fails").chmod(0o755)
    with pytest.raises(distro.DistroError, match=r"50-fails 6.9.0 /boot/initrd.img-6.9.0 "
                                                 r"exited with status 3: broken"):
        distro.post_update("6.9.0", "/boot/initrd.img-6.9.0", str(directory), said.append)
    distro.post_update("6.9.0", "x", str(tmp_path / "absent"), said.append)  # no directory


def test_update_targets_and_remove(tmp_path: Path) -> None:
    boot, modules = tmp_path / "boot", tmp_path / "modules"
    boot.mkdir()
    modules.mkdir()
    for kver in ("6.1.0-1", "6.1.0-2", "6.1.0-3"):
        (boot / f"vmlinuz-{kver}").write_text("k")
    for kver in ("6.1.0-1", "6.1.0-3", "6.1.0-4"):
        (modules / kver).mkdir()
    warnings: list[str] = []
    assert distro.targets("all", str(boot), str(modules), warnings.append) == [
        "6.1.0-1", "6.1.0-3"]
    assert warnings == [  # a kernel without modules, modules without their kernel: named
        f"--update all: skipping 6.1.0-2: expected its modules in {modules}/6.1.0-2, "
        "found none",
        f"--update all: skipping the modules in {modules}/6.1.0-4: expected their kernel "
        f"{boot}/vmlinuz-6.1.0-4, found none"]
    assert distro.targets("6.1.0-1", str(boot), str(modules)) == ["6.1.0-1"]
    with pytest.raises(distro.DistroError, match=r"--update 6.1.0-2: expected the kernel's "
                                                 r"modules in .*, found none"):
        distro.targets("6.1.0-2", str(boot), str(modules))
    with pytest.raises(distro.DistroError, match=rf"^--update 6.1.0-4: expected the kernel "
                                                 rf"{boot}/vmlinuz-6.1.0-4, found none$"):
        distro.targets("6.1.0-4", str(boot), str(modules))
    for bad, found in (("", "an empty word"), ("../etc", "a path")):
        with pytest.raises(distro.DistroError, match=f"expected a kernel version .KVER., "
                                                     f"found {found}$"):
            distro.targets(bad, str(boot), str(modules))
        with pytest.raises(distro.DistroError, match=f"^--remove.*found {found}$"):
            distro.remove(bad, str(boot))
    with pytest.raises(distro.DistroError, match=r"--update 6.1.0-1: expected .*/nowhere, "
                                                 r"found no directory"):
        distro.targets("6.1.0-1", str(tmp_path / "nowhere"), str(modules))
    (boot / "initrd.img-6.1.0-1").write_text("image")
    assert distro.remove("6.1.0-1", str(boot)) == str(boot / "initrd.img-6.1.0-1")
    assert distro.remove("6.1.0-1", str(boot)) is None
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("40 30 0:5 / /dev rw - devtmpfs udev rw\n")  # no mount at /
    assert distro.running_in_chroot(str(mountinfo))


def test_the_hooks_fallback_command_runs_the_builder(tmp_path: Path) -> None:
    # Hooks written from a checkout without the console script call python3 -m ...cli.
    (tmp_path / "initrd.img-6.9.0").write_text("image")
    done = subprocess.run([sys.executable, "-m", "pyinit.builder.cli", "--remove", "6.9.0",
                           "--boot-dir", str(tmp_path)], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{tmp_path}/initrd.img-6.9.0: removed\n"


def test_every_package_directory_is_installed_by_pyproject() -> None:
    # A package left out of the list is missing from a non-editable `pip install .`.
    repo = Path(__file__).parents[2]
    with open(repo / "pyproject.toml", "rb") as fh:
        listed = tomllib.load(fh)["tool"]["setuptools"]["packages"]
    found = sorted(os.path.relpath(d, repo).replace(os.sep, ".")
                   for d, _dirs, files in os.walk(repo / "pyinit") if "__init__.py" in files)
    assert "pyinit.storage" in found
    assert sorted(listed) == found


KVER = "6.9.0"


@pytest.fixture()
def kernel_tree(tmp_path: Path) -> tuple[Path, Path]:
    """A boot directory with the kernel KVER and its previous image, and KVER's modules."""
    boot, moddir = tmp_path / "boot", tmp_path / "modules" / KVER
    boot.mkdir()
    moddir.mkdir(parents=True)
    (boot / f"vmlinuz-{KVER}").write_bytes(b"kernel")
    (boot / f"initrd.img-{KVER}").write_bytes(b"the previous image")
    return boot, moddir


@pytest.fixture()
def fake_build(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """--update without the build (its image is b"the new image") and without this host's
    post-update.d; returns the post-update calls."""
    monkeypatch.setattr(cli, "build", lambda cfg: Result(b"the new image", 13, {}, 1))
    updated: list[tuple[str, str]] = []
    monkeypatch.setattr(distro, "post_update",
                        lambda kver, image, say: updated.append((kver, image)))
    return updated


def update(capsys: pytest.CaptureFixture[str], boot: Path, moddir: Path,
           *extra: str) -> tuple[int, str, str]:
    code = cli.main(["--update", KVER, "--boot-dir", str(boot), "--kmoddir", str(moddir),
                     "--udev", "none", *extra])
    out, err = capsys.readouterr()
    return code, out, err


def staged_names(boot: Path) -> list[str]:
    return [n for n in os.listdir(boot) if n.startswith(".pyinit-") or "pyinit-test" in n]


def fake_boot_test(boot: Path, passes: bool,
                   seen: list[str]) -> Callable[[str, str | None, str | None], boottest.Outcome]:
    def boot_test(image: str, kernel: str | None, root: str | None) -> boottest.Outcome:
        seen.append(image)
        assert kernel == str(boot / f"vmlinuz-{KVER}")
        assert Path(image).read_bytes() == b"the new image"
        assert (boot / f"initrd.img-{KVER}").read_bytes() == b"the previous image"
        # Named as the builder's temporary files, which the next build removes after a
        # SIGKILL (an "initrd.img-KVER.pyinit-test" would stay for ever).
        assert os.path.dirname(image) == str(boot)
        assert re.fullmatch(rf"\.pyinit-{os.getpid()}-\w{{8}}\.tmp", os.path.basename(image))
        stopped = "TESTINIT" if passes else "boot failed in stage discover: no device matched"
        return boottest.Outcome(passes, "tcg", 1.5, stopped, "")
    return boot_test


def update_with_boot_test(kernel_tree: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str], passes: bool,
                          ) -> tuple[int, str, str, Path, list[str]]:
    """--update KVER --boot-test with a boot test that PASSES or not: (exit status, stdout,
    stderr, the image's path, the images the boot test saw)."""
    boot, moddir = kernel_tree
    seen: list[str] = []
    monkeypatch.setattr(cli, "run_boot_test", fake_boot_test(boot, passes, seen))
    code, out, err = update(capsys, boot, moddir, "--boot-test")
    return code, out, err, boot / f"initrd.img-{KVER}", seen


def test_update_with_a_failed_boot_test_keeps_the_previous_image(
        kernel_tree: tuple[Path, Path], fake_build: list[tuple[str, str]],
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err, image, seen = update_with_boot_test(kernel_tree, monkeypatch, capsys,
                                                         passes=False)
    assert (code, err) == (1, f"mkinitramfs.py: error: --update {KVER}: the new image failed "
                              "its boot test (boot failed in stage discover: no device "
                              f"matched); {image} is unchanged\n")
    assert len(seen) == 1 and image.read_bytes() == b"the previous image"
    assert staged_names(kernel_tree[0]) == [] and fake_build == []


def test_update_with_a_passed_boot_test_replaces_the_image(
        kernel_tree: tuple[Path, Path], fake_build: list[tuple[str, str]],
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err, image, seen = update_with_boot_test(kernel_tree, monkeypatch, capsys,
                                                        passes=True)
    assert (code, err) == (0, ""), err
    assert out.startswith(f"{image}: ")
    assert len(seen) == 1 and image.read_bytes() == b"the new image"
    assert staged_names(kernel_tree[0]) == [] and fake_build == [(KVER, str(image))]


def test_update_refuses_a_read_only_boot_before_building(
        kernel_tree: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    boot, moddir = kernel_tree

    def no_build(cfg: object) -> Result:
        raise AssertionError("built for a boot directory that cannot take the image")

    monkeypatch.setattr(cli, "build", no_build)
    monkeypatch.setattr(os, "statvfs", read_only(os.statvfs))
    code, _out, err = update(capsys, boot, moddir)
    assert (code, err) == (1, f"mkinitramfs.py: error: --update {KVER}: expected a writable "
                              f"{boot}, found a read-only filesystem\n")
    assert (boot / f"initrd.img-{KVER}").read_bytes() == b"the previous image"


def test_update_all_names_what_it_skips(kernel_tree: tuple[Path, Path],
                                        fake_build: list[tuple[str, str]],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    boot, moddir = kernel_tree
    (boot / "vmlinuz-6.8.0").write_bytes(b"a kernel whose modules were removed")
    code = cli.main(["--update", "all", "--boot-dir", str(boot), "--kmoddir", str(moddir),
                     "--udev", "none"])
    _out, err = capsys.readouterr()
    assert code == 0, err
    assert err == (f"mkinitramfs.py: warning: --update all: skipping 6.8.0: expected its "
                   f"modules in {moddir.parent}/6.8.0, found none\n")
    assert fake_build == [(KVER, str(boot / f"initrd.img-{KVER}"))]


@pytest.mark.parametrize("option", ["--update", "--remove"])
def test_an_empty_kernel_version_is_named(option: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main([option, "", "--boot-dir", str(tmp_path)])
    _out, err = capsys.readouterr()
    assert (code, err) == (1, f"mkinitramfs.py: error: {option}: expected a kernel version "
                              "(KVER), found an empty word\n")


def test_the_debian_package_writes_the_same_hooks(tmp_path: Path) -> None:
    from pyinit.builder import debpkg

    debpkg.stage(str(tmp_path))
    for path, text in distro.hooks("the pyinit package", debpkg.COMMAND):
        path = debpkg.KERNEL_INSTALL if path == distro.KERNEL_INSTALL else path
        written = (tmp_path / path.lstrip("/")).read_text()
        assert written == text, path
    postinst = (tmp_path / distro.POSTINST.lstrip("/")).read_text()
    assert "expected the kernel version" in postinst


def test_a_hook_for_a_command_in_a_path_with_a_space_still_runs(tmp_path: Path) -> None:
    where = tmp_path / "my tools"
    where.mkdir()
    record = tmp_path / "calls"
    recorder = where / "recorder"
    recorder.write_text(f'#!/bin/sh\necho "$@" >> {record}\n')
    recorder.chmod(0o755)
    import shlex

    written = distro.install_hooks(str(tmp_path / "root"), command=shlex.quote(str(recorder)))
    done = run(Path(written[0]), "6.1.0-9-amd64", "/boot/vmlinuz-6.1.0-9-amd64")
    assert done.stderr == "" and calls(record) == ["--update 6.1.0-9-amd64"]


def test_a_hook_calling_a_module_does_nothing_once_the_module_is_gone(tmp_path: Path) -> None:
    import shlex

    command = f"{shlex.quote(sys.executable)} -m pyinit_no_such_module.cli"
    written = distro.install_hooks(str(tmp_path / "root"), command=command)
    done = run(Path(written[0]), "6.1.0-9-amd64", "/boot/vmlinuz-6.1.0-9-amd64", check=False)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
