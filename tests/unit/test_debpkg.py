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

from pyinit.builder import debpkg, pyruntime


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


def test_a_group_writable_checkout_still_gives_fixed_modes(tmp_path: Path) -> None:
    """A clone made under umask 002: the staged files are 0644/0755 all the same."""
    repo = tmp_path / "repo"
    source = Path(pyruntime.PYINIT_SRC)
    shutil.copytree(source / "pyinit", repo / "pyinit",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(source / "rootfs-skel", repo / "rootfs-skel")
    for name in ("pyproject.toml", "LICENSE"):
        shutil.copy(source / name, repo / name)
    for path in [repo, *repo.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o020)
    root = tmp_path / "root"
    debpkg.stage(str(root), repo=str(repo))
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode & 0o7777
        assert mode in ((0o755,) if path.is_dir() else (0o644, 0o755)), (path, oct(mode))


def test_the_ar_members_carry_the_epoch_too(deb: Path) -> None:
    data = deb.read_bytes()
    assert data.startswith(b"!<arch>\n")
    offset, mtimes = 8, []
    while offset < len(data):
        header = data[offset:offset + 60]
        mtimes.append(int(header[16:28]))
        size = int(header[48:58])
        offset += 60 + size + (size & 1)
    assert mtimes == [debpkg.source_date_epoch()] * 3


def test_the_trigger_is_activated_with_dpkgs_own_words(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from pyinit.builder import updateinitramfs

    record = tmp_path / "argv"
    fake = tmp_path / "dpkg-trigger"
    fake.write_text(f'#!/bin/sh\necho "$@" > {record}\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    assert updateinitramfs.activate_trigger()
    assert record.read_text() == "--no-await update-initramfs\n"
    fake.write_text("#!/bin/sh\nexit 1\n")
    assert not updateinitramfs.activate_trigger()
