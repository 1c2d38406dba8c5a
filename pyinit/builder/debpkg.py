"""A Debian package of this checkout: ``python3 -m pyinit.builder.debpkg OUTDIR``.

It installs pyinit as the system's initramfs generator, as dracut's package does: it
``Provides: linux-initramfs-tool`` (which Debian's kernel packages depend on, as
``initramfs-tools | linux-initramfs-tool``) and conflicts with initramfs-tools, so one tool
writes /boot/initrd.img-KVER. Its kernel hooks call ``pyinit-mkinitramfs --update`` and
``--remove``; an ``update-initramfs`` command maps initramfs-tools' options onto them, and
the ``update-initramfs`` dpkg trigger (which cryptsetup-initramfs and others activate)
rebuilds every image. The Python dependencies are Debian's own packages; the cffi module
is the one this checkout compiled (``pip install -e .``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from typing import Any

from pyinit import layout
from pyinit.builder import distro, elfdeps, image, output, pyruntime

COMMAND = f"/usr/sbin/{output.INSTALLED}"
SITE = "/usr/lib/python3/dist-packages"
SKELETON = "/usr/share/pyinit/rootfs-skel"  # where pipeline.SKELETON looks when installed
KERNEL_INSTALL = "/usr/lib/kernel/install.d/50-pyinit.install"
DEPENDS = ("python3 (>= 3.11)", "python3-cffi-backend", "python3-pyudev (>= 0.24)",
           "python3-structlog (>= 22.1)", "python3-pyelftools (>= 0.29)",
           "python3-zstandard (>= 0.19)", "python3-lz4 (>= 3)", "libblkid1", "libudev1",
           "libc6", "kmod", "zstd")
DOC = "/usr/share/doc/pyinit"
ENTRY = """#!/usr/bin/python3
import sys

from pyinit.builder.cli import main

sys.exit(main())
"""
UPDATE_INITRAMFS = """#!/usr/bin/python3
import sys

from pyinit.builder.updateinitramfs import main

sys.exit(main())
"""
POSTINST = f"""#!/bin/sh
set -e
case "$1" in
  configure)
    # Images for the installed kernels.
    if ls {distro.BOOT}/vmlinuz-* >/dev/null 2>&1; then
      {os.path.basename(COMMAND)} --update all || echo "pyinit: the images were not all rebuilt" >&2
    fi ;;
  triggered)
    # Another package asked for a fresh image (update-initramfs -u, deferred): as
    # initramfs-tools, the newest kernel's, once for the whole dpkg run.
    update-initramfs -u || echo "pyinit: the image was not rebuilt" >&2 ;;
esac
exit 0
"""
# Python writes __pycache__ beside the package's modules when they run; dpkg knows nothing
# of those files, so removal would leave them (and the directories) behind.
PRERM = f"""#!/bin/sh
set -e
case "$1" in
  remove|upgrade|deconfigure)
    [ ! -d {SITE}/pyinit ] || \
      find {SITE}/pyinit -depth -type d -name __pycache__ -exec rm -rf {{}} + ;;
esac
exit 0
"""


class PackageError(ValueError):
    """The package cannot be built; the message names what was expected and found."""


def _project(repo: str) -> dict[str, Any]:
    with open(os.path.join(repo, "pyproject.toml"), "rb") as fh:
        project = tomllib.load(fh).get("project", {})
    return project if isinstance(project, dict) else {}


def version(repo: str = pyruntime.PYINIT_SRC) -> str:
    found = _project(repo).get("version")
    if not isinstance(found, str) or not found:
        raise PackageError("pyproject.toml: expected [project] version, found none")
    return found


def maintainer(repo: str = pyruntime.PYINIT_SRC) -> str:
    """pyproject.toml's first maintainer, as Debian writes it: NAME <EMAIL>."""
    people = _project(repo).get("maintainers", [])
    if not people or "name" not in people[0] or "email" not in people[0]:
        raise PackageError("pyproject.toml: expected [project] maintainers with a name and "
                           "an email, found none")
    return f"{people[0]['name']} <{people[0]['email']}>"


def control(ver: str, size_kb: int, who: str) -> str:
    return (f"Package: pyinit\nVersion: {ver}\nArchitecture: amd64\nSection: admin\n"
            f"Priority: optional\nMaintainer: {who}\n"
            f"Installed-Size: {size_kb}\nDepends: {', '.join(DEPENDS)}\n"
            "Recommends: binutils, busybox-static\n"
            "Provides: linux-initramfs-tool\nConflicts: initramfs-tools\n"
            "Replaces: initramfs-tools\n"
            "Description: initramfs whose PID 1 is written in Python\n"
            " pyinit's init finds and assembles the root (LUKS, LVM, mdraid, btrfs),\n"
            " mounts it and hands over; pyinit-mkinitramfs builds its image.\n")


def _write(root: str, path: str, text: str | bytes, mode: int = 0o644) -> None:
    full = os.path.join(root, path.lstrip("/"))
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "wb") as fh:
        fh.write(text.encode() if isinstance(text, str) else text)
    os.chmod(full, mode)


def stage(root: str, repo: str = pyruntime.PYINIT_SRC, epoch: int | None = None) -> None:
    """The package's files under ROOT (DEBIAN/ included), with fixed modes and every mtime
    EPOCH (default: source_date_epoch(REPO))."""
    package = os.path.join(repo, "pyinit")
    compiled = [n for n in os.listdir(package) if n.startswith("_syscalls.") and
                n.endswith(".so")]
    if not compiled:
        raise PackageError(f"{package}: expected the compiled cffi module (_syscalls.*.so), "
                           "found none: run bash .ci/install (or pip install -e .) first")
    ver, who = version(repo), maintainer(repo)
    epoch = source_date_epoch(repo) if epoch is None else epoch
    shutil.copytree(package, os.path.join(root, SITE.lstrip("/"), "pyinit"),
                    ignore=shutil.ignore_patterns("__pycache__", "*.c", "*.o"))
    for name in compiled:
        _ship_extension(os.path.join(root, SITE.lstrip("/"), "pyinit", name))
    shutil.copytree(os.path.join(repo, "rootfs-skel"), os.path.join(root, SKELETON.lstrip("/")))
    with open(os.path.join(repo, "LICENSE"), encoding="utf-8") as fh:
        _write(root, f"{DOC}/copyright", copyright_text(fh.read()))
    _write(root, f"{DOC}/changelog.gz", changelog(ver, who, epoch))
    _write(root, COMMAND, ENTRY, 0o755)
    _write(root, "/usr/sbin/update-initramfs", UPDATE_INITRAMFS, 0o755)
    for path, text in distro.hooks("the pyinit package", COMMAND):
        _write(root, KERNEL_INSTALL if path == distro.KERNEL_INSTALL else path, text, 0o755)
    _write(root, distro.SHUTDOWN_UNIT,
           distro.SHUTDOWN_UNIT_TEXT.format(marker=layout.STORAGE_ACTIVE, command=COMMAND))
    wants = os.path.join(root, os.path.dirname(distro.SHUTDOWN_UNIT).lstrip("/"),
                         "sysinit.target.wants")
    os.makedirs(wants, exist_ok=True)
    os.symlink(f"../{os.path.basename(distro.SHUTDOWN_UNIT)}",
               os.path.join(wants, os.path.basename(distro.SHUTDOWN_UNIT)))
    size_kb = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root)
                  for f in files) // 1024
    _write(root, "DEBIAN/control", control(ver, size_kb, who))
    _write(root, "DEBIAN/conffiles", f"{distro.POSTINST}\n{distro.POSTRM}\n")
    _write(root, "DEBIAN/triggers", "interest-noawait update-initramfs\n")
    _write(root, "DEBIAN/postinst", POSTINST, 0o755)
    _write(root, "DEBIAN/prerm", PRERM, 0o755)
    settle(root, epoch)


def _ship_extension(path: str) -> None:
    """The compiled cffi module as a package carries it: without debug symbols, and without
    the RUNPATH of the interpreter it was built with (a pyenv's lib directory, say), which
    names nothing on the machines the package goes to."""
    done = subprocess.run(["strip", "--strip-unneeded", path], capture_output=True,
                          text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise PackageError(f"strip --strip-unneeded {path}: expected status 0, found "
                           f"{done.returncode}: {done.stderr.strip() or 'no output'}")
    info = elfdeps.read_elf(path)
    if not (info.rpath or info.runpath):
        return
    if shutil.which("patchelf") is None:
        raise PackageError(f"{path}: has the RUNPATH {':'.join(info.runpath or info.rpath)} "
                           "of the interpreter it was built with; expected patchelf to drop "
                           "it, found none (apt install patchelf)")
    done = subprocess.run(["patchelf", "--remove-rpath", path], capture_output=True,
                          text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise PackageError(f"patchelf --remove-rpath {path}: expected status 0, found "
                           f"{done.returncode}: {done.stderr.strip() or 'no output'}")


def copyright_text(license_text: str) -> str:
    """debian/copyright in the machine-readable format, the licence from LICENSE."""
    body = "\n".join(f" {line}" if line.strip() else " ." for line in
                      license_text.strip().splitlines())
    return ("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
            "Upstream-Name: pyinit\n\nFiles: *\nCopyright: pyinit developers\n"
            f"License: Expat\n{body}\n")


def changelog(ver: str, who: str, epoch: int) -> bytes:
    """A native package's changelog, gzip'd without a timestamp."""
    import email.utils
    import gzip

    date = email.utils.formatdate(epoch, usegmt=False)
    text = (f"pyinit ({ver}) unstable; urgency=medium\n\n"
            "  * Packaged from the pyinit checkout.\n\n"
            f" -- {who}  {date}\n")
    return gzip.compress(text.encode(), compresslevel=9, mtime=0)


def settle(root: str, epoch: int) -> None:
    """Every file and directory under ROOT: image.fixed_mode and mtime EPOCH (links keep
    their own mode and get the mtime)."""
    for directory, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                os.chmod(path, image.fixed_mode(os.stat(path).st_mode))
            os.utime(path, (epoch, epoch), follow_symlinks=False)
    os.chmod(root, 0o755)
    os.utime(root, (epoch, epoch))


def source_date_epoch(repo: str = pyruntime.PYINIT_SRC) -> int:
    """SOURCE_DATE_EPOCH when set; else the checkout's last commit time; else the newest
    mtime of pyproject.toml: the same tree gives the same package."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "")
    if value:
        if not value.isdigit():
            raise PackageError(f"SOURCE_DATE_EPOCH={value}: expected seconds since the epoch")
        return int(value)
    try:
        done = subprocess.run(["git", "-C", repo, "log", "-1", "--format=%ct"],
                              capture_output=True, text=True, timeout=30, check=False)
        if done.returncode == 0 and done.stdout.strip().isdigit():
            return int(done.stdout.strip())
    except (OSError, subprocess.TimeoutExpired):
        pass
    return int(os.stat(os.path.join(repo, "pyproject.toml")).st_mtime)


def build(outdir: str) -> str:
    """Build the .deb into OUTDIR; returns its path. Owners root:root, fixed modes, every
    mtime SOURCE_DATE_EPOCH: two builds of one tree are the same bytes."""
    if not os.path.isdir(outdir):
        raise PackageError(f"{outdir}: expected a directory to write the package in, "
                           "found none")
    problem = output.unwritable(outdir)
    if problem is not None:
        raise PackageError(f"{outdir}: expected a writable directory, found {problem}")
    epoch = source_date_epoch()
    with tempfile.TemporaryDirectory(prefix="pyinit-deb-") as tmp:
        root = os.path.join(tmp, "root")
        stage(root, epoch=epoch)
        path = os.path.join(outdir, f"pyinit_{version()}_amd64.deb")
        done = subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", root, path],
                              capture_output=True, text=True, timeout=600, check=False,
                              env={**os.environ, "SOURCE_DATE_EPOCH": str(epoch)})
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise PackageError(f"dpkg-deb --build {path} exited with status "
                               f"{done.returncode}: {last}")
    return path


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("debpkg: error: expected one argument, the directory to write the package in "
              f"(python3 -m pyinit.builder.debpkg OUTDIR), found {len(args)}", file=sys.stderr)
        return 1
    try:
        print(build(args[0]))
    except (PackageError, distro.DistroError, tomllib.TOMLDecodeError,
            subprocess.TimeoutExpired) as err:
        print(f"debpkg: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"debpkg: error: {err.filename or args[0]}: {err.strerror or err}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
