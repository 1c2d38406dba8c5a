"""The Debian package: the same bytes from the same tree, root:root with fixed modes,
lintian without errors, its maintainer scripts, and its errors in one line."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from pyinit.builder import debpkg


def data_tar(deb: Path) -> tarfile.TarFile:
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True,
                          check=True).stdout
    return tarfile.open(fileobj=io.BytesIO(data))


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(debpkg.build(str(tmp_path_factory.mktemp("deb"))))


def test_two_builds_are_the_same_bytes(deb: Path, tmp_path: Path) -> None:
    again = Path(debpkg.build(str(tmp_path)))
    assert hashlib.sha256(again.read_bytes()).digest() == hashlib.sha256(deb.read_bytes()).digest()


def test_files_are_root_owned_with_fixed_modes_and_one_mtime(deb: Path) -> None:
    epoch = debpkg.source_date_epoch()
    members = data_tar(deb).getmembers()
    assert members
    for member in members:
        assert (member.uid, member.gid, member.uname, member.gname) == (0, 0, "root", "root")
        assert member.mtime == epoch, member.name
        if member.isdir():
            assert member.mode == 0o755, member.name
        elif member.isfile():
            assert member.mode in (0o644, 0o755), (member.name, oct(member.mode))
    modes = {m.name.lstrip("."): m.mode for m in members}
    assert modes["/usr/share/pyinit/rootfs-skel/init"] == 0o755
    assert modes["/usr/share/pyinit/rootfs-skel/etc/initrd-release"] == 0o644
    assert modes["/usr/sbin/update-initramfs"] == 0o755


def test_the_control_file_names_a_real_maintainer(deb: Path) -> None:
    control = subprocess.run(["dpkg-deb", "--field", str(deb), "Maintainer"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert control == debpkg.maintainer() and "localhost" not in control


@pytest.mark.skipif(shutil.which("lintian") is None, reason="lintian is not installed")
def test_lintian_finds_no_error(deb: Path) -> None:
    done = subprocess.run(["lintian", "--tag-display-limit", "0", str(deb)],
                          capture_output=True, text=True, timeout=300)
    errors = [line for line in done.stdout.splitlines() if line.startswith("E:")]
    assert errors == [], done.stdout


def test_prerm_removes_the_compiled_files(tmp_path: Path) -> None:
    site = tmp_path / "site"
    for sub in ("pyinit/__pycache__", "pyinit/builder/__pycache__"):
        (site / sub).mkdir(parents=True)
        (site / sub / "x.cpython-311.pyc").write_bytes(b"pyc")
    (site / "pyinit/init.py").write_text("")
    script = tmp_path / "prerm"
    script.write_text(debpkg.PRERM.replace(debpkg.SITE, str(site)))
    subprocess.run(["sh", str(script), "remove"], check=True, timeout=30)
    left = sorted(str(p.relative_to(site)) for p in site.rglob("*"))
    assert left == ["pyinit", "pyinit/builder", "pyinit/init.py"]


def test_the_trigger_updates_as_update_initramfs_u() -> None:
    triggered = debpkg.POSTINST.split("triggered)", 1)[1].split(";;", 1)[0]
    assert "update-initramfs -u" in triggered and "--update all" not in triggered


def test_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert debpkg.main([]) == 1
    assert capsys.readouterr().err == (
        "debpkg: error: expected one argument, the directory to write the package in "
        "(python3 -m pyinit.builder.debpkg OUTDIR), found 0\n")
    assert debpkg.main([str(tmp_path / "none")]) == 1
    assert capsys.readouterr().err == (f"debpkg: error: {tmp_path}/none: expected a directory "
                                       "to write the package in, found none\n")
    repo = tmp_path / "repo"
    (repo / "pyinit").mkdir(parents=True)
    with pytest.raises(debpkg.PackageError, match=r"expected the compiled cffi module "
                                                  r"\(_syscalls.\*.so\), found none"):
        debpkg.stage(str(tmp_path / "root"), repo=str(repo))


def test_a_bad_source_date_epoch_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(debpkg.PackageError, match=r"^SOURCE_DATE_EPOCH=yesterday: expected "):
        debpkg.source_date_epoch()
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert debpkg.source_date_epoch() == 1700000000
    assert os.environ["SOURCE_DATE_EPOCH"] == "1700000000"
