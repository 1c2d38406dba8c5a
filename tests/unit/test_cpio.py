from __future__ import annotations

import io
import os
import stat
import subprocess
from pathlib import Path

import pytest

from pyinit.builder import cpio

ENTRIES = [
    cpio.Entry("bin", stat.S_IFDIR | 0o755),
    cpio.Entry("bin/hello", stat.S_IFREG | 0o755, b"#!/bin/sh\necho hi\n"),
    cpio.Entry("etc", stat.S_IFDIR | 0o755),
    cpio.Entry("etc/empty", stat.S_IFREG | 0o644, b""),
    cpio.Entry("etc/odd", stat.S_IFREG | 0o600, b"x" * 4097),
    cpio.Entry("lib", stat.S_IFLNK | 0o777, b"usr/lib"),
    cpio.Entry("dev", stat.S_IFDIR | 0o755),
    cpio.Entry("dev/console", stat.S_IFCHR | 0o600, b"", (5, 1)),
]


def archive(entries: list[cpio.Entry], mtime: int = 0) -> bytes:
    buffer = io.BytesIO()
    cpio.write(buffer, entries, mtime)
    return buffer.getvalue()


def test_debian_cpio_lists_what_we_wrote() -> None:
    data = archive(ENTRIES)
    out = subprocess.run(["cpio", "-t", "--quiet"], input=data, capture_output=True, check=True)
    assert out.stdout.decode().split() == sorted(e.name for e in ENTRIES)


def test_debian_cpio_extracts_contents_modes_and_links(tmp_path: Path) -> None:
    data = archive([e for e in ENTRIES if e.name != "dev/console"], mtime=1_700_000_000)
    subprocess.run(["cpio", "-i", "--quiet", "-d", "--no-absolute-filenames",
                    "--preserve-modification-time"], input=data, cwd=tmp_path, check=True)
    assert (tmp_path / "bin/hello").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert stat.S_IMODE((tmp_path / "bin/hello").stat().st_mode) == 0o755
    assert (tmp_path / "etc/odd").read_bytes() == b"x" * 4097
    assert stat.S_IMODE((tmp_path / "etc/odd").stat().st_mode) == 0o600
    assert (tmp_path / "etc/empty").read_bytes() == b""
    assert os.readlink(tmp_path / "lib") == "usr/lib"
    assert (tmp_path / "etc/odd").stat().st_mtime == 1_700_000_000


def test_own_reader_round_trip_and_order() -> None:
    data = archive(ENTRIES)
    read = [entry for entry, _ in cpio.read(data)]
    assert read[-1].name == cpio.TRAILER
    assert [e.name for e in read[:-1]] == sorted(e.name for e in ENTRIES)
    by_name = {e.name: e for e in ENTRIES}
    for entry in read[:-1]:
        assert entry == by_name[entry.name]


def test_same_entries_same_bytes_whatever_the_order() -> None:
    assert archive(ENTRIES) == archive(list(reversed(ENTRIES)))


def test_reader_reports_where_the_archive_ends() -> None:
    data = archive(ENTRIES)
    *_, (_, end) = cpio.read(data)
    assert end == len(data)


@pytest.mark.parametrize("name", ["/etc/passwd", "../x", "a/../b", "a//b", "a/./b", "",
                                  "bad\0name"])
def test_unsafe_names_are_refused(name: str) -> None:
    with pytest.raises(cpio.CpioError, match="unsafe archive name"):
        archive([cpio.Entry(name, stat.S_IFREG | 0o644, b"x")])


def test_same_name_twice_with_other_content_is_refused() -> None:
    with pytest.raises(cpio.CpioError, match="given twice"):
        archive([cpio.Entry("a", stat.S_IFREG | 0o644, b"1"),
                 cpio.Entry("a", stat.S_IFREG | 0o644, b"2")])


def test_corrupt_archive_is_a_clear_error() -> None:
    data = archive(ENTRIES)
    with pytest.raises(cpio.CpioError, match="expected newc magic"):
        list(cpio.read(b"garbage" + data))
    with pytest.raises(cpio.CpioError, match="truncated"):
        list(cpio.read(data[:200]))


def test_hard_links_share_one_inode_and_one_copy_of_the_data(tmp_path: Path) -> None:
    payload = b"shared bytes" * 100
    entries = [cpio.Entry("bin", stat.S_IFDIR | 0o755),
               cpio.Entry("bin/e2fsck", stat.S_IFREG | 0o755, payload, link="host:42"),
               cpio.Entry("bin/fsck.ext4", stat.S_IFREG | 0o755, payload, link="host:42")]
    data = archive(entries)
    assert data.count(payload) == 1
    subprocess.run(["cpio", "-i", "--quiet", "-d"], input=data, cwd=tmp_path, check=True)
    a, b = (tmp_path / "bin/e2fsck").stat(), (tmp_path / "bin/fsck.ext4").stat()
    assert a.st_ino == b.st_ino and a.st_nlink == 2
    assert (tmp_path / "bin/e2fsck").read_bytes() == payload


def test_hard_links_from_the_host_and_extract(tmp_path: Path) -> None:
    from pyinit.builder import extract, image

    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"x" * 50)
    os.link(src / "a", src / "b")
    img = image.Image()
    img.add_host_file(str(src / "a"), "/t/a")
    img.add_host_file(str(src / "b"), "/t/b")
    assert img.unpacked_size() == 50
    out = tmp_path / "out"
    assert extract.extract(img.archive(), str(out)) == 3
    assert (out / "t/a").stat().st_ino == (out / "t/b").stat().st_ino
    assert (out / "t/b").read_bytes() == b"x" * 50


@pytest.mark.parametrize(("entry", "mtime", "field"), [
    (cpio.Entry("a", stat.S_IFREG | 0o644), 1 << 32, "mtime 4294967296"),
    (cpio.Entry("a", stat.S_IFREG | 0o644), -1, "mtime -1"),
    (cpio.Entry("a", stat.S_IFCHR | 0o600, rdev=(1 << 32, 0)), 0, "rdevmajor 4294967296"),
    (cpio.Entry("a", stat.S_IFCHR | 0o600, rdev=(0, -5)), 0, "rdevminor -5"),
])
def test_a_value_that_does_not_fit_a_header_field_is_refused(entry: cpio.Entry, mtime: int,
                                                             field: str) -> None:
    # "%08X" would write 9 digits (or a minus sign): every later header would be misread.
    with pytest.raises(cpio.CpioError, match=f"a: {field} does not fit a newc header"):
        archive([entry], mtime)
    last = archive([cpio.Entry("a", stat.S_IFREG | 0o644)], cpio.FIELD_MAX)  # 2106-02-07
    assert last[6 + 8 * 5 : 6 + 8 * 6] == b"FFFFFFFF"
