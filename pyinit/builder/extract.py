"""--extract IMAGE DIR: unpack every archive of an image into DIR without ever following a
link the archive made.

The whole image is read and checked before anything is written: names (relative, no '..'),
no entry under a name an earlier entry made a symlink or a file, no file over a directory.
Then each path is walked from DIR's descriptor one component at a time with O_NOFOLLOW, so
a symlink (the archive's, or one already in DIR under --force) is never gone through; a
directory entry over a symlink replaces the link. Directory modes are applied last, deepest
first, so a read-only directory can still be filled. Device nodes are skipped: the kernel
makes them, a user's directory need not.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

from pyinit.builder import archive, cpio

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_KINDS = {stat.S_IFDIR: "directory", stat.S_IFREG: "file", stat.S_IFLNK: "symlink"}


class ExtractError(ValueError):
    """The image cannot be unpacked safely; the message names the entry."""


def extract(data: bytes, directory: str, force: bool = False) -> int:
    """Unpack DATA into DIRECTORY (made if missing; it must be empty unless FORCE). Returns
    the number of directories, files and symlinks written."""
    entries = plan(data)
    root = _open_target(directory, force)
    try:
        return _write(root, entries)
    finally:
        os.close(root)


def plan(data: bytes) -> list[tuple[int, cpio.Entry]]:
    """(archive number, entry) for each entry to write, checked against what the entries
    before it made. Raises before anything is written."""
    kinds: dict[str, int] = {}  # name -> file type after the entries so far
    planned = []
    for number, entry in _entries(data):
        kind = stat.S_IFMT(entry.mode)
        if entry.name == ".":  # `find . | cpio`: the root itself; DIR keeps its own mode
            if kind != stat.S_IFDIR:
                raise ExtractError(f"'.': expected the root directory, found a "
                                   f"{_KINDS.get(kind, 'special file')}")
            continue
        cpio.check_name(entry.name)
        parts = entry.name.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            made = kinds.setdefault(prefix, stat.S_IFDIR)
            if made != stat.S_IFDIR:
                raise ExtractError(f"{entry.name}: under {prefix}, a {_KINDS[made]} the archive "
                                   "made; expected a directory (links in an image are never "
                                   "followed)")
        if kind not in _KINDS:
            continue  # device nodes, FIFOs, sockets
        if kinds.get(entry.name) == stat.S_IFDIR and kind != stat.S_IFDIR:
            raise ExtractError(f"{entry.name}: a {_KINDS[kind]} over the directory the archive "
                               "made; expected one kind per name")
        if kind == stat.S_IFLNK and (not entry.data or b"\0" in entry.data):
            raise ExtractError(f"{entry.name}: expected a symlink target without NUL, found "
                               f"{entry.data[:40]!r}")
        kinds[entry.name] = kind
        planned.append((number, entry))
    return planned


def _entries(data: bytes) -> Iterator[tuple[int, cpio.Entry]]:
    for number, (_fmt, raw) in enumerate(archive.segments(data)):
        for entry, _end in cpio.read(raw):
            if entry.name != cpio.TRAILER:
                yield number, entry


def _open_target(directory: str, force: bool) -> int:
    try:
        os.makedirs(directory, exist_ok=True)
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise ExtractError(f"--extract DIR {directory}: expected a directory, found: "
                           f"{err.strerror}") from err
    if os.listdir(fd) and not force:
        os.close(fd)
        raise ExtractError(f"--extract DIR {directory}: expected an empty or new directory, "
                           "found files in it (--force unpacks over them)")
    return fd


def _write(root: int, entries: list[tuple[int, cpio.Entry]]) -> int:
    count = 0
    modes: dict[str, int] = {}  # directory -> mode, applied at the end
    links: dict[tuple[int, str], list[str]] = {}  # hard-link groups of one archive
    for number, entry in entries:
        parent, base = _parent(root, entry.name)
        try:
            mode = stat.S_IMODE(entry.mode)
            if stat.S_ISDIR(entry.mode):
                _make_dir(parent, base)
                modes[entry.name] = mode
            else:
                _clear(parent, base, entry.name)
                if stat.S_ISLNK(entry.mode):
                    os.symlink(os.fsdecode(entry.data), base, dir_fd=parent)
                else:
                    _write_file(parent, base, entry.data, mode)
                    if entry.link:
                        group = links.setdefault((number, entry.link), [])
                        if entry.data:  # the last name: link the earlier ones to it
                            _link_all(root, parent, base, [n for n in group if n != entry.name])
                        group.append(entry.name)
        finally:
            os.close(parent)
        count += 1
    for name in sorted(modes, key=lambda n: n.count("/"), reverse=True):
        parent, base = _parent(root, name)
        try:
            fd = os.open(base, _DIR_FLAGS, dir_fd=parent)
        finally:
            os.close(parent)
        try:
            os.fchmod(fd, modes[name])
        finally:
            os.close(fd)
    return count


def _parent(root: int, name: str) -> tuple[int, str]:
    """An open descriptor of NAME's parent (made if missing) and NAME's last component;
    every component is opened with O_NOFOLLOW."""
    *dirs, base = name.split("/")
    fd = os.dup(root)
    try:
        for i, component in enumerate(dirs):
            try:
                sub = os.open(component, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                os.mkdir(component, 0o755, dir_fd=fd)
                sub = os.open(component, _DIR_FLAGS, dir_fd=fd)
            except OSError as err:  # ELOOP or ENOTDIR: a symlink or a file in DIR
                raise ExtractError(f"{name}: {'/'.join(dirs[:i + 1])} in DIR is not a "
                                   f"directory ({err.strerror}); links are never "
                                   "followed") from err
            os.close(fd)
            fd = sub
    except BaseException:
        os.close(fd)
        raise
    return fd, base


def _lstat(parent: int, base: str) -> os.stat_result | None:
    try:
        return os.stat(base, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _make_dir(parent: int, base: str) -> None:
    st = _lstat(parent, base)
    if st is not None and not stat.S_ISDIR(st.st_mode):
        os.unlink(base, dir_fd=parent)  # a later entry replaces an earlier one, as the kernel
        st = None
    if st is None:
        os.mkdir(base, 0o700, dir_fd=parent)


def _clear(parent: int, base: str, name: str) -> None:
    """Remove what is at BASE so a new file or link can be made there (never a directory)."""
    st = _lstat(parent, base)
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        raise ExtractError(f"{name}: expected no directory in DIR where the archive has a "
                           "file or symlink, found one")
    os.unlink(base, dir_fd=parent)


def _write_file(parent: int, base: str, data: bytes, mode: int) -> None:
    fd = os.open(base, _NEW_FILE, 0o600, dir_fd=parent)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        os.fchmod(fh.fileno(), mode)


def _link_all(root: int, parent: int, base: str, earlier: list[str]) -> None:
    for name in earlier:
        other, other_base = _parent(root, name)
        try:
            _clear(other, other_base, name)
            os.link(base, other_base, src_dir_fd=parent, dst_dir_fd=other,
                    follow_symlinks=False)
        finally:
            os.close(other)
