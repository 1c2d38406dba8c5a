"""The distribution hooks as shell scripts, run with the arguments and environment Debian's
kernel packages and kernel-install give them; post-update.d; --update's targets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyinit.builder import distro


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


def run(hook: Path, *args: str, **env: str) -> None:
    subprocess.run([str(hook), *args], check=True, timeout=30,
                   env={"PATH": "/usr/bin:/bin", **env})


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


def test_kernel_install_plugin(hooks: tuple[Path, Path]) -> None:
    root, record = hooks
    plugin = root / "etc/kernel/install.d/50-pyinit.install"
    staging = "/tmp/staging-area"
    args = ("add", "6.9.0", "/boot/efi/abc/6.9.0", "/usr/lib/modules/6.9.0/vmlinuz")
    run(plugin, *args, KERNEL_INSTALL_LAYOUT="bls", KERNEL_INSTALL_STAGING_AREA=staging)
    run(plugin, *args, KERNEL_INSTALL_LAYOUT="uki", KERNEL_INSTALL_STAGING_AREA=staging,
        KERNEL_INSTALL_INITRD_GENERATOR="pyinit")
    run(plugin, *args, KERNEL_INSTALL_LAYOUT="bls", KERNEL_INSTALL_STAGING_AREA=staging,
        KERNEL_INSTALL_INITRD_GENERATOR="dracut")  # another generator: nothing
    run(plugin, *args, KERNEL_INSTALL_LAYOUT="compat", KERNEL_INSTALL_STAGING_AREA=staging)
    run(plugin, *args, "/boot/given-initrd", KERNEL_INSTALL_LAYOUT="bls",
        KERNEL_INSTALL_STAGING_AREA=staging)  # an initrd was given
    run(plugin, "remove", "6.9.0", "/boot/efi/abc/6.9.0", KERNEL_INSTALL_LAYOUT="bls",
        KERNEL_INSTALL_STAGING_AREA=staging)
    want = f"--kver 6.9.0 -o {staging}/initrd --force"
    assert calls(record) == [want, want]


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
    (modules / "6.1.0-1").mkdir()
    (modules / "6.1.0-3").mkdir()
    assert distro.targets("all", str(boot), str(modules)) == ["6.1.0-1", "6.1.0-3"]
    assert distro.targets("6.1.0-1", str(boot), str(modules)) == ["6.1.0-1"]
    with pytest.raises(distro.DistroError, match=r"--update 6.1.0-2: expected the kernel's "
                                                 r"modules in .*, found none"):
        distro.targets("6.1.0-2", str(boot), str(modules))
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
