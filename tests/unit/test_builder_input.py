"""Bad input to mkinitramfs.py, hermetically: each is one line on stderr and exit status 1,
and nothing is left behind."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from pyinit.builder import cli, pyruntime

REPO = Path(__file__).resolve().parents[2]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _limit_memory() -> None:
    # A builder that reads /dev/zero dies of MemoryError at 2 GiB instead of taking the
    # machine's memory with it.
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def mkinitramfs(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The command in a child, so that a builder that blocks (on a FIFO) fails the test by
    its timeout instead of hanging the run."""
    return subprocess.run([sys.executable, str(REPO / "mkinitramfs.py"), *args],
                          capture_output=True, text=True, timeout=60, cwd=cwd,
                          preexec_fn=_limit_memory)


def fake_kernel(root: Path) -> Path:
    """A modules directory of a kernel with every driver built in."""
    moddir = root / "modules"
    moddir.mkdir()
    for name in ("modules.dep", "modules.builtin"):
        (moddir / name).write_text("")
    return moddir


def one_line_error(code: int, err: str) -> str:
    assert code == 1, err
    assert err.startswith("mkinitramfs.py: error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize(("epoch", "message"), [
    ("4294967296", "SOURCE_DATE_EPOCH=4294967296: expected at most 4294967295"),
    ("9" * 5000, "SOURCE_DATE_EPOCH=" + "9" * 40 + ": expected at most"),
    ("-1", "SOURCE_DATE_EPOCH='-1': expected a whole number of seconds"),
    ("1e9", "SOURCE_DATE_EPOCH='1e9': expected a whole number of seconds"),
], ids=["2^32", "5000 digits", "negative", "float"])
def test_source_date_epoch_must_fit_the_header(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch, epoch: str,
                                               message: str) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", epoch)
    code, _out, err = run(capsys, "-o", str(tmp_path / "i.img"), "--kmoddir", str(tmp_path))
    assert message in one_line_error(code, err)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("kver", "message"), [
    ("../../evil", "--kver '../../evil': expected a kernel release as uname -r prints it"),
    ("6.1\tx", "--kver '6.1\\tx': expected a kernel release"),
    ("..", "--kver '..': expected a kernel release"),
])
def test_kver_must_be_a_safe_path_component(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            kver: str, message: str) -> None:
    moddir = tmp_path / "modules"
    moddir.mkdir()
    code, _out, err = run(capsys, "-o", str(tmp_path / "i.img"), "--kver", kver,
                          "--kmoddir", str(moddir), "--udev", "none")
    assert message in one_line_error(code, err)
    assert list(tmp_path.iterdir()) == [moddir]


def test_a_kernel_without_modules_is_an_error(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    # No --add-drivers, not host-only (not the running kernel): this built an image with
    # no modules at all, exit 0.
    code, _out, err = run(capsys, "-o", str(tmp_path / "i.img"), "--kver", "9.9.9-nope",
                          "--udev", "none")
    assert ("--kmoddir /lib/modules/9.9.9-nope: expected the modules of kernel 9.9.9-nope, "
            "found no directory") in one_line_error(code, err)
    assert list(tmp_path.iterdir()) == []


def test_a_module_tree_without_modules_builtin_says_so(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    moddir = tmp_path / "modules"
    moddir.mkdir()
    (moddir / "modules.dep").write_text("")
    code, _out, err = run(capsys, "-o", str(tmp_path / "i.img"), "--kver", "9.9.9",
                          "--kmoddir", str(moddir), "--add-drivers", "ext4", "--udev", "none")
    assert (f"{moddir}/modules.builtin: expected depmod's list of built-in modules"
            in one_line_error(code, err))
    assert sorted(tmp_path.iterdir()) == [moddir]


@pytest.mark.parametrize("what", ["fifo", "/dev/zero", "directory"])
def test_include_of_a_non_regular_file_is_refused(tmp_path: Path, what: str) -> None:
    src = {"fifo": str(tmp_path / "fifo"), "directory": str(tmp_path)}.get(what, what)
    if what == "fifo":
        os.mkfifo(src)
    found = {"fifo": "a FIFO", "/dev/zero": "a character device", "directory": "a directory"}
    moddir = fake_kernel(tmp_path)
    done = mkinitramfs("-o", str(tmp_path / "i.img"), "--kver", "9.9.9", "--kmoddir",
                       str(moddir), "--udev", "none", "--include", src, "/x")
    assert (f"--include {src} /x: expected a regular file, found {found[what]}"
            in one_line_error(done.returncode, done.stderr))
    assert not (tmp_path / "i.img").exists()


def test_config_and_list_of_a_fifo_are_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    done = mkinitramfs("-o", str(tmp_path / "i.img"), "--config", str(fifo))
    assert (f"{fifo}: expected a TOML file, found a FIFO"
            in one_line_error(done.returncode, done.stderr))
    done = mkinitramfs("--list", str(fifo))
    assert f"{fifo}: expected an image file, found a FIFO" in one_line_error(done.returncode,
                                                                             done.stderr)
    done = mkinitramfs("--extract", "/dev/zero", str(tmp_path / "x"))
    assert ("/dev/zero: expected an image file, found a character device"
            in one_line_error(done.returncode, done.stderr))
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(("fmt", "level", "message"), [
    ("gzip", "10", "--compress-level 10: expected 0 to 9 for gzip"),
    ("xz", "12", "--compress-level 12: expected 0 to 9 for xz"),
    ("zstd", "23", "--compress-level 23: expected 1 to 22 for zstd"),
    ("lz4", "0", "--compress-level 0: expected 1 to 12 for lz4"),
])
def test_a_level_the_compressor_does_not_take(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              fmt: str, level: str, message: str) -> None:
    moddir = fake_kernel(tmp_path)
    code, _out, err = run(capsys, "-o", str(tmp_path / "i.img"), "--kver", "9.9.9", "--kmoddir",
                          str(moddir), "--udev", "none", "--compress", fmt,
                          "--compress-level", level)
    assert message in one_line_error(code, err)
    assert list(tmp_path.iterdir()) == [moddir]


def fake_python(tmp_path: Path, script: str) -> str:
    path = tmp_path / "python"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return str(path)


@pytest.mark.parametrize(("script", "found"), [
    ("echo '{}'", "found '{}'"),
    ("echo 'Python 3.11.2'", "found 'Python 3.11.2'"),
    ("printf '\\377\\376'", "found '\ufffd\ufffd'"),
    ('echo \'{"failed": {}, "version": [3], "executable": "x", "prefix": "/", "zip_path": "z", '
     '"stdlib": "/", "platstdlib": "/", "site": [], "modules": {}}\'', "found '{\"failed\""),
])
def test_a_python_that_does_not_report_is_refused(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str],
                                                  script: str, found: str) -> None:
    python = fake_python(tmp_path, script)
    moddir = fake_kernel(tmp_path)
    code, _out, err = run(capsys, "-o", str(tmp_path / "i.img"), "--kver", "9.9.9", "--kmoddir",
                          str(moddir), "--udev", "none", "--python", python)
    message = one_line_error(code, err)
    assert f"{python}: expected pyprobe.py's JSON report on stdout, {found}" in message
    assert not (tmp_path / "i.img").exists()


def test_a_python_that_hangs_is_stopped(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pyruntime, "PROBE_TIMEOUT", 1)
    python = fake_python(tmp_path, "exec sleep 30\n")
    moddir = fake_kernel(tmp_path)
    code, _out, err = run(capsys, "-o", str(tmp_path / "i.img"), "--kver", "9.9.9", "--kmoddir",
                          str(moddir), "--udev", "none", "--python", python)
    assert (f"{python}: expected pyprobe.py to report within 1 s, found it still running"
            in one_line_error(code, err))


def test_a_python_without_the_cffi_module_says_how_to_build_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = ('{"failed": {"pyinit.init": "ModuleNotFoundError: No module named '
              "'pyinit._syscalls'\"}, \"version\": [3, 11], \"executable\": \"x\", "
              '"prefix": "/", "zip_path": "z", "stdlib": "/", "platstdlib": "/", "site": [], '
              '"modules": {}}')
    python = fake_python(tmp_path, f"cat <<'EOF'\n{report}\nEOF\n")
    moddir = fake_kernel(tmp_path)
    code, _out, err = run(capsys, "-o", str(tmp_path / "i.img"), "--kver", "9.9.9", "--kmoddir",
                          str(moddir), "--udev", "none", "--python", python)
    assert (f"pyinit's cffi module is not built: run `pip install -e .` in {REPO})"
            in one_line_error(code, err))


@pytest.mark.parametrize("argv", [["--compress", "bogus"], ["-o"], ["--bogus"],
                                  ["--include", "one"]])
def test_argument_errors_are_one_line_and_status_1(capsys: pytest.CaptureFixture[str],
                                                    argv: list[str]) -> None:
    code, _out, err = run(capsys, *argv)
    assert "(see mkinitramfs.py --help)" in one_line_error(code, err)


# mkinitramfs.py with one Python module made unimportable, as in a clone where
# `pip install -e .` never ran.
WITHOUT = """
import runpy, sys
sys.modules[sys.argv[1]] = None
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize(("module", "listing"), [("elftools", False), ("zstandard", False),
                                                ("zstandard", True)],
                         ids=["at start", "first used to build", "first used to list"])
def test_a_missing_dependency_says_pip_install(tmp_path: Path, module: str,
                                               listing: bool) -> None:
    moddir = fake_kernel(tmp_path)
    zstd_image = tmp_path / "z.img"
    zstd_image.write_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 16)
    args = (["--list", str(zstd_image)] if listing else
            ["-o", str(tmp_path / "i.img"), "--kver", "9.9.9", "--kmoddir", str(moddir),
             "--udev", "none"])
    done = subprocess.run([sys.executable, "-c", WITHOUT, module, str(REPO / "mkinitramfs.py"),
                           *args], capture_output=True, text=True, timeout=120)
    assert (f"expected the Python module {module}, found none: run `pip install -e .` in {REPO}"
            in one_line_error(done.returncode, done.stderr))
    assert not (tmp_path / "i.img").exists()


@pytest.mark.parametrize("force", [[], ["--force"]], ids=["", "--force"])
def test_output_that_is_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    force: list[str]) -> None:
    moddir = fake_kernel(tmp_path)
    code, _out, err = run(capsys, "-o", str(tmp_path), "--kver", "9.9.9", "--kmoddir",
                          str(moddir), "--udev", "none", *force)
    assert (f"-o {tmp_path}: expected the image's file name, found a directory"
            in one_line_error(code, err))
    assert list(tmp_path.iterdir()) == [moddir]
