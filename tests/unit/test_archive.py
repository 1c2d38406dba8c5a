"""--list and --extract on hostile images: archived symlinks are never followed, names are
checked, nothing is written outside DIR, and every failure is one line and exit status 1."""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import stat
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyinit.builder import cli

Raw = tuple[str, int, bytes]  # name, mode, data (file content or symlink target)
DIR = stat.S_IFDIR | 0o755
FILE = stat.S_IFREG | 0o644


def newc(entries: list[Raw], links: list[tuple[int, int]] | None = None) -> bytes:
    """A newc archive of ENTRIES exactly as given: repeats, any order, any names (the
    builder's own writer refuses such archives, so this one is written out by hand).
    LINKS: (inode, nlink) of each entry (default: its own inode, one link)."""
    out = bytearray()
    inodes = [*(links or [(i, 1) for i in range(1, len(entries) + 1)]), (0, 1)]
    for (name, mode, data), (ino, nlink) in zip([*entries, ("TRAILER!!!", 0, b"")], inodes,
                                                strict=True):
        encoded = name.encode(errors="surrogateescape") + b"\0"
        fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        out += b"070701" + b"".join(b"%08X" % f for f in fields) + encoded
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside DIR that no extraction may touch."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "keep").write_text("mine")
    path.chmod(0o755)
    return path


def snapshot(path: Path) -> list[tuple[str, int, bytes]]:
    found = []
    for root, dirs, files in os.walk(path):
        for name in sorted(dirs + files):
            full = Path(root, name)
            st = full.lstat()
            data = full.read_bytes() if stat.S_ISREG(st.st_mode) else b""
            found.append((str(full.relative_to(path)), st.st_mode, data))
    return [(".", path.lstat().st_mode, b""), *sorted(found)]


def test_a_directory_entry_over_an_archived_symlink_never_reaches_its_target(
        tmp_path: Path, outside: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "evil.img"
    # Two archives, as the kernel allows: the first makes d -> outside, the second says
    # d is a directory of mode 0777. chmod through the link would open up OUTSIDE.
    image.write_bytes(newc([("d", stat.S_IFLNK | 0o777, str(outside).encode())])
                      + newc([("d", stat.S_IFDIR | 0o777, b"")]))
    before = snapshot(outside)
    (tmp_path / "x").mkdir()  # an empty DIR is fine
    code, _out, err = run(capsys, "--extract", str(image), str(tmp_path / "x"))
    assert snapshot(outside) == before
    assert code == 0, err
    assert (tmp_path / "x/d").is_dir() and not (tmp_path / "x/d").is_symlink()
    assert stat.S_IMODE((tmp_path / "x/d").stat().st_mode) == 0o777


@pytest.mark.parametrize("target", ["outside", "../outside", "."])
def test_an_entry_under_an_archived_symlink_is_refused(
        tmp_path: Path, outside: Path, capsys: pytest.CaptureFixture[str], target: str) -> None:
    image = tmp_path / "evil.img"
    link = str(outside) if target == "outside" else target
    image.write_bytes(newc([("d", stat.S_IFLNK | 0o777, link.encode()),
                            ("d/x", FILE, b"planted")]))
    before = snapshot(outside)
    (tmp_path / "x").mkdir()
    code, _out, err = run(capsys, "--extract", str(image), str(tmp_path / "x"))
    assert snapshot(outside) == before
    assert code == 1 and err.count("\n") == 1
    assert "d/x: under d, a symlink the archive made" in err, err
    assert os.listdir(tmp_path / "x") == []  # refused before anything was written


def test_a_non_empty_directory_needs_force(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "i.img"
    image.write_bytes(newc([("a", FILE, b"new")]))
    target = tmp_path / "x"
    target.mkdir()
    (target / "a").write_text("old")
    code, _out, err = run(capsys, "--extract", str(image), str(target))
    assert code == 1 and err.count("\n") == 1
    assert f"--extract DIR {target}: expected an empty or new directory, found" in err
    assert (target / "a").read_text() == "old"
    code, _out, err = run(capsys, "--extract", str(image), str(target), "--force")
    assert code == 0, err
    assert (target / "a").read_text() == "new"


def test_images_made_with_find_and_cpio_have_a_dot_entry(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # `cd DESTDIR && find . | cpio -o -H newc` (initramfs-tools, dracut) writes "." first;
    # GNU cpio and busybox cpio both drop the "./" of the other names.
    image = tmp_path / "i.img"
    image.write_bytes(gzip.compress(newc([(".", stat.S_IFDIR | 0o700, b""), ("a", DIR, b""),
                                          ("a/f", FILE, b"hi")])))
    code, _out, err = run(capsys, "--extract", str(image), str(tmp_path / "x"))
    assert code == 0, err
    assert (tmp_path / "x/a/f").read_text() == "hi"
    image.write_bytes(newc([(".", FILE, b"")]))
    code, _out, err = run(capsys, "--extract", str(image), str(tmp_path / "z"))
    assert code == 1 and "'.': expected the root directory, found a file" in err, err


@pytest.mark.parametrize("content", [b"", b"\0" * 512], ids=["empty", "zeros"])
def test_an_empty_file_is_not_an_image(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       content: bytes) -> None:
    image = tmp_path / "empty.img"
    image.write_bytes(content)
    for args in (["--list", str(image)], ["--extract", str(image), str(tmp_path / "x")]):
        code, out, err = run(capsys, *args)
        assert code == 1 and out == "" and err.count("\n") == 1, err
        assert f"{image}: not an image: expected a newc cpio archive" in err, err
    assert not (tmp_path / "x").exists()


def test_force_never_follows_a_symlink_already_in_dir(
        tmp_path: Path, outside: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "i.img"
    image.write_bytes(newc([("l", DIR, b""), ("l/x", FILE, b"planted")]))
    target = tmp_path / "x"
    target.mkdir()
    (target / "l").symlink_to(outside)
    before = snapshot(outside)
    code, _out, err = run(capsys, "--extract", str(image), str(target), "--force")
    assert snapshot(outside) == before
    assert code == 0, err
    assert (target / "l/x").read_bytes() == b"planted" and not (target / "l").is_symlink()
    image.write_bytes(newc([("l/x", FILE, b"planted")]))  # no entry for l: DIR's link stays
    (target / "l/x").unlink()
    (target / "l").rmdir()
    (target / "l").symlink_to(outside)
    code, _out, err = run(capsys, "--extract", str(image), str(target), "--force")
    assert snapshot(outside) == before
    assert code == 1 and "l/x: l in DIR is not a directory" in err, err


def test_hard_links_are_grouped_per_archive(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    # Each archive numbers its inodes from 1: inode 1 of the second archive is another file.
    image = tmp_path / "i.img"
    image.write_bytes(newc([("a", FILE, b""), ("b", FILE, b"one")], [(1, 2), (1, 2)])
                      + newc([("c", FILE, b""), ("d", FILE, b"two")], [(1, 2), (1, 2)]))
    code, _out, err = run(capsys, "--extract", str(image), str(tmp_path / "x"))
    assert code == 0, err
    x = tmp_path / "x"
    assert [(x / n).read_bytes() for n in "abcd"] == [b"one", b"one", b"two", b"two"]
    assert (x / "a").stat().st_ino == (x / "b").stat().st_ino != (x / "c").stat().st_ino


# Mutated archives: names that climb, repeat or pass through links; links to OUTSIDE, to
# DIR's parent, to each other; hard-link groups; a few bytes changed; truncation.
SAFE_NAMES = [".", "a", "a/b", "a/b/c", "d", "d/x", "d/y/z", "e", "e/f", "l", "l/x", "l/y/z"]
UNSAFE_NAMES = ["..", "../x", "/abs", "a//b", "./a", "a/../../x", ""]
TARGETS = ["@OUT", "@OUT/keep", "../outside", "..", ".", "a", "d", "/", "../../outside/keep",
           "l", ""]
KINDS = [stat.S_IFDIR, stat.S_IFREG, stat.S_IFLNK, stat.S_IFCHR, stat.S_IFIFO, 0]
names = st.sampled_from(SAFE_NAMES * 8 + UNSAFE_NAMES)  # mostly names that get written
entries = st.tuples(names, st.sampled_from(KINDS),
                    st.sampled_from([0o777, 0o755, 0o000, 0o4755, 0o555]),
                    st.sampled_from(TARGETS), st.integers(1, 4), st.sampled_from([1, 2, 3]))
archives = st.lists(st.tuples(st.lists(entries, max_size=8), st.sampled_from(["none", "gzip"])),
                    min_size=1, max_size=3)
mutations = st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=3)
# Half the images are left whole, so the checks after parsing are reached as often.
Damage = tuple[list[tuple[float, int]], float]  # (offset fraction, new byte)s, length kept
damage: st.SearchStrategy[Damage] = st.one_of(
    st.just(([], 1.0)), st.just(([], 1.0)), st.tuples(mutations, st.just(1.0)),
    st.tuples(st.just([]), st.floats(0, 1)))


def mutated_image(parts: list[tuple[list[tuple[str, int, int, str, int, int]], str]],
                  changes: list[tuple[float, int]], cut: float, outside: str) -> bytes:
    data = b""
    for items, fmt in parts:
        raw = newc([(name, kind | mode, target.replace("@OUT", outside).encode()
                     if kind in (stat.S_IFLNK, stat.S_IFREG) else b"")
                    for name, kind, mode, target, _ino, _nlink in items],
                   [(ino, nlink) for *_rest, ino, nlink in items])
        data += gzip.compress(raw, mtime=0) if fmt == "gzip" else raw
    image = bytearray(data)
    for where, value in changes:
        image[min(int(where * len(image)), len(image) - 1)] = value
    return bytes(image[: max(1, int(cut * len(image)))])


@settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(archives, damage, st.booleans())
def test_mutated_images_never_escape_dir_nor_trace_back(
        parts: list[tuple[list[tuple[str, int, int, str, int, int]], str]],
        damaged: Damage, force: bool) -> None:
    changes, cut = damaged
    with tempfile.TemporaryDirectory() as tmp:
        top = Path(tmp)
        outside = top / "outside"
        outside.mkdir()
        (outside / "keep").write_text("mine")
        image = top / "fuzz.img"
        image.write_bytes(mutated_image(parts, changes, cut, str(outside)))
        target = top / "x"
        if force:  # a DIR that already holds a link out, unpacked over with --force
            target.mkdir()
            (target / "l").symlink_to(outside)
        before = snapshot(outside)
        for argv in (["--list", str(image)],
                     ["--extract", str(image), str(target), *(["--force"] if force else [])]):
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = cli.main(argv)
            assert code in (0, 1)
            if code == 1:
                assert err.getvalue().startswith("mkinitramfs.py: error: ")
                assert err.getvalue().count("\n") == 1, err.getvalue()
        assert snapshot(outside) == before
        assert sorted(os.listdir(top)) == ["fuzz.img", "outside", "x"][: 3 if target.exists()
                                                                          else 2]
