"""Writing the image: stale temporary files, concurrent builds, signals during the write
and a closed stdout. Nothing is lost or left half-written."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pyinit.builder import cache, output
from tests.unit.test_builder_input import REPO, fake_kernel, mkinitramfs


def temp_files(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.startswith(".pyinit-"))


def test_temporary_files_of_dead_builds_are_removed(tmp_path: Path) -> None:
    child = subprocess.Popen(["true"])
    child.wait()  # its PID names no process now
    stale = f".pyinit-{child.pid}-abcd_123.tmp"
    live = f".pyinit-{os.getpid()}-abcd_123.tmp"  # a build still running: kept
    for name in (stale, live, ".pyinit-notes", "other.tmp"):
        (tmp_path / name).write_bytes(b"left over")
    output.write_atomically(str(tmp_path / "i.img"), b"image", force=False)
    assert (tmp_path / "i.img").read_bytes() == b"image"
    assert sorted(os.listdir(tmp_path)) == sorted([live, ".pyinit-notes", "other.tmp",
                                                   "i.img"])


def test_an_image_that_appears_during_the_write_is_kept(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "i.img"
    real_fsync = os.fsync

    def other_build_finishes(fd: int) -> None:
        real_fsync(fd)
        target.write_bytes(b"the other build's image")

    monkeypatch.setattr(os, "fsync", other_build_finishes)
    with pytest.raises(output.OutputError, match=r"the file appeared while the image was "
                                                 r"written \(another build\?\); expected --force"):
        output.write_atomically(str(target), b"mine", force=False)
    assert target.read_bytes() == b"the other build's image"
    assert temp_files(tmp_path) == []
    output.write_atomically(str(target), b"mine", force=True)
    assert target.read_bytes() == b"mine" and temp_files(tmp_path) == []


# The builder in a child whose fsync of the image announces itself and then waits, so the
# test can signal it in the middle of the write.
SLOW_WRITE = """
import os, sys, time
sys.path.insert(0, sys.argv[1])
from pyinit.builder import cli

def slow_fsync(fd):
    open(sys.argv[2], "w").close()
    time.sleep(60)

os.fsync = slow_fsync
sys.exit(cli.main(sys.argv[3:]))
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT],
                         ids=["SIGTERM", "SIGHUP", "SIGINT"])
def test_a_signal_during_the_write_leaves_no_temporary_file(tmp_path: Path,
                                                            signum: signal.Signals) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    marker = tmp_path / "writing"
    child = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITE, str(REPO), str(marker), "-o", str(out_dir / "i.img"),
         "--kver", "9.9.9", "--kmoddir", str(fake_kernel(tmp_path)), "--udev", "none",
         "--no-early-microcode"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "the build never reached the write"
            time.sleep(0.05)
        assert len(temp_files(out_dir)) == 1  # the image, written, not yet in place
        child.send_signal(signum)
        _out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 1, err
    assert err == (f"mkinitramfs.py: error: interrupted by {signum.name} (no image "
                   "written)\n")
    assert os.listdir(out_dir) == []


def test_a_closed_stdout_loses_only_the_summary(tmp_path: Path) -> None:
    image = tmp_path / "i.img"
    moddir = fake_kernel(tmp_path)
    for args in (["-o", str(image), "--kver", "9.9.9", "--kmoddir", str(moddir),
                  "--udev", "none"], ["--list", str(image)]):
        read, write = os.pipe()
        os.close(read)  # `| head` that has exited
        try:
            done = subprocess.run([sys.executable, str(REPO / "mkinitramfs.py"), *args],
                                  stdout=write, stderr=subprocess.PIPE, text=True, timeout=120)
        finally:
            os.close(write)
        assert done.returncode == 0 and done.stderr == "", done.stderr
        assert image.stat().st_size > 0
    assert mkinitramfs("--list", str(image)).returncode == 0


def test_an_interrupted_cache_store_leaves_no_temporary_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(src: str, dst: str) -> None:
        raise KeyboardInterrupt  # what a signal raises in the middle of the store

    monkeypatch.setattr(os, "replace", interrupted)
    segment = cache.Segment(b"data", 4, {}, {}, 0, {})
    with pytest.raises(KeyboardInterrupt):
        cache.store({"k": 1}, [], segment, str(tmp_path))
    assert os.listdir(tmp_path) == []


def read_only(real: Callable[[str], os.statvfs_result]) -> Callable[[str], os.statvfs_result]:
    """os.statvfs as on a filesystem mounted read-only (root's access() would say writable)."""
    def statvfs(path: str) -> os.statvfs_result:
        found = real(path)
        return os.statvfs_result((*found[:8], found.f_flag | os.ST_RDONLY, found[9]))
    return statvfs


def test_a_read_only_directory_is_refused_before_the_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "i.img"
    target.write_bytes(b"the previous image")
    monkeypatch.setattr(os, "statvfs", read_only(os.statvfs))
    monkeypatch.setattr(tempfile, "mkstemp", None)  # never reached
    with pytest.raises(output.OutputError, match=rf"^-o {target}: expected a writable "
                                                 rf"{tmp_path}, found a read-only filesystem$"):
        output.write_atomically(str(target), b"new", force=True)
    assert target.read_bytes() == b"the previous image"


def test_no_space_left_is_one_line_naming_the_image(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "initrd.img-6.9.0"
    target.write_bytes(b"the previous image")
    real_write = os.write

    def disk_fills_up(fd: int, data: bytes | memoryview) -> int:
        real_write(fd, memoryview(data)[:3])  # part of the image, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", disk_fills_up)
    with pytest.raises(output.OutputError) as caught:
        output.write_atomically(str(target), b"the new image", force=True)
    assert str(caught.value) == (f"-o {target}: expected to write the image, found: No space "
                                 "left on device; the previous image is unchanged")
    monkeypatch.undo()
    assert target.read_bytes() == b"the previous image"
    assert temp_files(tmp_path) == []


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES], ids=["EROFS", "EACCES"])
def test_a_refused_temporary_file_is_named_by_the_image(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    target = tmp_path / "initrd.img-6.9.0"

    def refused(prefix: str, suffix: str, dir: str) -> tuple[int, str]:
        raise OSError(code, os.strerror(code), os.path.join(dir, f"{prefix}abcdefgh{suffix}"))

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    with pytest.raises(output.OutputError) as caught:
        output.write_atomically(str(target), b"the new image", force=False)
    assert str(caught.value) == (f"-o {target}: expected to write the image, found: "
                                 f"{os.strerror(code)}")  # not the temporary file's name
    assert os.listdir(tmp_path) == []


def test_a_refused_rename_keeps_the_previous_image(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "initrd.img-6.9.0"
    target.write_bytes(b"the previous image")

    def refused(src: str, dst: str) -> None:
        raise OSError(errno.EACCES, os.strerror(errno.EACCES), src, dst)

    monkeypatch.setattr(os, "replace", refused)
    with pytest.raises(output.OutputError, match=r"^-o .*/initrd.img-6.9.0: expected to write "
                                                 r"the image, found: Permission denied; the "
                                                 r"previous image is unchanged$"):
        output.write_atomically(str(target), b"the new image", force=True)
    assert target.read_bytes() == b"the previous image"
    assert temp_files(tmp_path) == []


def test_a_staged_image_is_found_by_the_stale_cleanup(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "initrd.img-6.9.0"
    staged = output.stage(str(target), b"the new image", True)
    assert os.path.dirname(staged) == str(tmp_path) and not target.exists()
    assert Path(staged).read_bytes() == b"the new image"
    monkeypatch.setattr(output, "_alive", lambda pid: False)  # as after a SIGKILL
    assert output.remove_stale_temps(str(tmp_path)) == [os.path.basename(staged)]
