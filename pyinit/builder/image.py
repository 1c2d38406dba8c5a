"""Assembling the image: entries by image path, each tagged with the part it belongs to,
host files added with the symlinks along their paths (written out by output.py)."""

from __future__ import annotations

import io
import os
import stat
from collections import Counter
from dataclasses import dataclass, field

from pyinit.builder import cpio, hostfile


def _norm(path: str) -> str:
    """An absolute, normalised image path ("//x" and "x" are "/x")."""
    return "/" + os.path.normpath("/" + path).lstrip("/")


class ImageError(ValueError):
    """The image cannot be assembled or written; the message names the path."""


@dataclass
class Image:
    entries: dict[str, cpio.Entry] = field(default_factory=dict)
    parts: dict[str, str] = field(default_factory=dict)
    base: set[str] = field(default_factory=set)  # known from an earlier segment: not written
    provided: set[str] = field(default_factory=set)  # files an earlier segment carries

    def seed_symlink(self, path: str, target: str) -> None:
        """A symlink an earlier segment of the image already made (/lib -> usr/lib): paths
        resolve through it here too, and it is not written again."""
        self.add_symlink(path, target, part="base")
        self.base.add(_norm(path))

    def _put(self, path: str, entry: cpio.Entry, part: str) -> None:
        old = self.entries.get(path)
        if old is not None and old != entry:
            if stat.S_ISDIR(old.mode) and stat.S_ISDIR(entry.mode):
                return
            raise ImageError(f"{path}: added twice with different content "
                             f"({old.kind} and {entry.kind})")
        self.entries[path] = entry
        self.parts.setdefault(path, part)

    def add_dir(self, path: str, mode: int = 0o755, part: str = "skeleton") -> None:
        path = _norm(path)
        if path == "/":
            return
        self.add_dir(os.path.dirname(path), part=part)
        if path in self.entries and not stat.S_ISDIR(self.entries[path].mode):
            if stat.S_ISLNK(self.entries[path].mode):
                return  # a symlinked directory (/lib -> usr/lib); its target holds the files
            raise ImageError(f"{path}: expected a directory in the image, found a file")
        self._put(path, cpio.Entry(path.lstrip("/"), stat.S_IFDIR | mode), part)

    def add_bytes(self, path: str, data: bytes, mode: int = 0o644, part: str = "skeleton",
                  link: str = "") -> None:
        """A regular file; files added with one LINK key become hard links of each other.
        A file an earlier segment of the image carries already (PROVIDED) is not added."""
        path = self._parent_resolved(path, part)
        if path in self.provided:
            return
        self._put(path, cpio.Entry(path.lstrip("/"), stat.S_IFREG | mode, data, link=link),
                  part)

    def add_symlink(self, path: str, target: str, part: str = "skeleton") -> None:
        path = self._parent_resolved(path, part)
        self._put(path, cpio.Entry(path.lstrip("/"), stat.S_IFLNK | 0o777, target.encode()),
                  part)

    def add_node(self, path: str, kind: int, mode: int, rdev: tuple[int, int]) -> None:
        path = self._parent_resolved(path, "skeleton")
        self._put(path, cpio.Entry(path.lstrip("/"), kind | mode, b"", rdev), "skeleton")

    def _parent_resolved(self, path: str, part: str) -> str:
        """PATH with each directory component resolved through symlinks already in the image
        (so /lib/modules lands in usr/lib/modules when /lib -> usr/lib); its parents made."""
        resolved = self.resolve(path)
        self.add_dir(os.path.dirname(resolved), part=part)
        return resolved

    def resolve(self, path: str) -> str:
        """Where PATH lands in the image: its directory components resolved through the
        symlinks already in the image (the last component is left as it is)."""
        path = _norm(path)
        resolved = "/"
        for _ in range(40):
            todo = os.path.dirname(path).strip("/").split("/")
            resolved = "/"
            for i, name in enumerate(n for n in todo if n):
                candidate = os.path.join(resolved, name)
                entry = self.entries.get(candidate)
                if entry is not None and stat.S_ISLNK(entry.mode):
                    target = _norm(os.path.join(resolved, entry.data.decode()))
                    path = _norm(os.path.join(target, *todo[i + 1 :], os.path.basename(path)))
                    break
                resolved = candidate
            else:
                break
        else:
            raise ImageError(f"{path}: too many levels of symbolic links in the image")
        return os.path.join(resolved, os.path.basename(path))

    def add_host_file(self, src: str, dest: str | None = None, part: str = "skeleton",
                      data: bytes | None = None) -> None:
        """Copy host file SRC to DEST (default: the same path), keeping symlinks on the way
        (/lib -> usr/lib, libfoo.so.1 -> libfoo.so.1.2.3) so the loader finds what it expects."""
        dest = _norm(dest or src)
        if dest == _norm(src):
            self._add_host_path(src, part, data, depth=0)
            return
        st, content = _read_host(src, data)
        self._add_stat_bytes(dest, st, content, part)

    def _add_stat_bytes(self, dest: str, st: os.stat_result, data: bytes, part: str) -> None:
        """DATA at DEST with the host file's mode; files the host hard-links (one device and
        inode) stay hard links in the image."""
        link = f"{st.st_dev}:{st.st_ino}" if st.st_nlink > 1 else ""
        self.add_bytes(dest, data, stat.S_IMODE(st.st_mode), part, link=link)

    def _add_host_path(self, path: str, part: str, data: bytes | None, depth: int) -> None:
        if depth > 40:
            raise ImageError(f"{path}: too many levels of symbolic links")
        path = _norm(os.path.abspath(path))
        parts = path.strip("/").split("/")
        current = ""
        for i, name in enumerate(parts):
            current += "/" + name
            if os.path.islink(current):
                target = os.readlink(current)
                self.add_symlink(current, target, part)
                resolved = _norm(os.path.join(os.path.dirname(current), target))
                rest = parts[i + 1 :]
                self._add_host_path(os.path.join(resolved, *rest), part, data, depth + 1)
                return
        st, content = _read_host(path, data)
        self._add_stat_bytes(path, st, content, part)

    def add_tree(self, src: str, dest: str, part: str = "skeleton") -> None:
        """Copy a directory tree (rootfs-skel/): its files, links and layout, with fixed
        modes (0755 for directories and programs, 0644 for the rest), never the checkout's
        own (a umask 002 clone makes them group-writable)."""
        for root, dirs, files in os.walk(src):
            dirs.sort()
            rel = os.path.relpath(root, src)
            target_dir = _norm(os.path.join(dest, rel))
            self.add_dir(target_dir, 0o755, part)
            for name in sorted(files):
                host = os.path.join(root, name)
                target = os.path.join(target_dir, name)
                if os.path.islink(host):
                    self.add_symlink(target, os.readlink(host), part)
                    continue
                st, content = _read_host(host, None)
                self.add_bytes(target, content, fixed_mode(st.st_mode), part)

    def written(self) -> list[tuple[str, cpio.Entry]]:
        return [(p, e) for p, e in self.entries.items() if p not in self.base]

    def _counted(self) -> list[tuple[str, cpio.Entry]]:
        """Written entries, each hard-linked file's data counted once."""
        seen: set[str] = set()
        counted = []
        for path, entry in self.written():
            if entry.link and entry.link in seen:
                continue
            seen.add(entry.link)
            counted.append((path, entry))
        return counted

    def unpacked_size(self) -> int:
        return sum(len(e.data) for _, e in self._counted())

    def size_by_part(self) -> dict[str, int]:
        sizes: Counter[str] = Counter()
        for path, entry in self._counted():
            sizes[self.parts[path]] += len(entry.data)
        return dict(sorted(sizes.items()))

    def kinds(self) -> dict[str, list[str]]:
        """Written path -> [type letter as ls -l shows it, part]."""
        return {p: [e.kind, self.parts[p]] for p, e in self.written()}

    def symlinks(self) -> dict[str, str]:
        return {p: e.data.decode() for p, e in self.entries.items() if stat.S_ISLNK(e.mode)}

    def archive(self, mtime: int = 0) -> bytes:
        buffer = io.BytesIO()
        cpio.write(buffer, [e for _, e in self.written()], mtime)
        return buffer.getvalue()


def fixed_mode(mode: int) -> int:
    """The mode a shipped file gets whatever its checkout had (a umask 002 clone is
    group-writable): 0755 for directories and for files with any execute bit, else 0644."""
    return 0o755 if stat.S_ISDIR(mode) or mode & 0o111 else 0o644


def _read_host(path: str, data: bytes | None) -> tuple[os.stat_result, bytes]:
    """The stat of regular host file PATH and its content (DATA when given: stripped)."""
    try:
        if data is not None:
            return hostfile.stat_regular(path), data
        return hostfile.read_regular(path)
    except hostfile.HostFileError as err:
        raise ImageError(f"{path}: {err}") from err
    except OSError as err:
        raise ImageError(f"{path}: expected a readable file, found: {err.strerror}") from err
