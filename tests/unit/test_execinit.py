"""Which init runs, seen from outside the new root (before the hand-over) as from inside."""

from __future__ import annotations

import os
from pathlib import Path

from pyinit import execinit


def debian_like(root: Path) -> None:
    """Debian 12's merged /usr: /sbin -> usr/sbin, /sbin/init -> /lib/systemd/systemd, the
    shared library under the multiarch directory."""
    (root / "usr/sbin").mkdir(parents=True)
    (root / "usr/lib/systemd").mkdir(parents=True)
    (root / "usr/lib/x86_64-linux-gnu/systemd").mkdir(parents=True)
    os.symlink("usr/sbin", root / "sbin")
    os.symlink("usr/lib", root / "lib")
    (root / "usr/lib/systemd/systemd").write_text("#!/bin/true\n")
    (root / "usr/lib/systemd/systemd").chmod(0o755)
    os.symlink("/lib/systemd/systemd", root / "usr/sbin/init")
    (root / "usr/lib/x86_64-linux-gnu/systemd/libsystemd-shared-252.so").write_text("")


def test_systemd_and_its_version_in_debians_layout(tmp_path: Path) -> None:
    debian_like(tmp_path)
    assert execinit.is_systemd("/sbin/init", str(tmp_path))
    assert execinit.systemd_version(str(tmp_path)) == 252
    assert execinit.choose(None, str(tmp_path))[0] == ("/sbin/init", None)
    assert execinit.systemd_version(str(tmp_path / "usr/sbin")) is None


def test_each_candidate_says_why_it_cannot_run(tmp_path: Path) -> None:
    (tmp_path / "sbin").mkdir()
    (tmp_path / "sbin/init").write_text("not executable")
    os.symlink("/nowhere", tmp_path / "sbin/altinit")
    assert execinit.choose("/sbin/altinit", str(tmp_path)) == [
        ("/sbin/altinit", "dangling symbolic link to /nowhere"),
        ("/sbin/init", "not executable"), ("/etc/init", "does not exist"),
        ("/bin/init", "does not exist"), ("/bin/sh", "does not exist")]
