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

from pyinit import layout
from pyinit.builder import distro, pyruntime

COMMAND = "/usr/sbin/pyinit-mkinitramfs"
SITE = "/usr/lib/python3/dist-packages"
SKELETON = "/usr/share/pyinit/rootfs-skel"  # where pipeline.SKELETON looks when installed
KERNEL_INSTALL = "/usr/lib/kernel/install.d/50-pyinit.install"
DEPENDS = ("python3 (>= 3.11)", "python3-cffi-backend", "python3-pyudev (>= 0.24)",
           "python3-structlog (>= 22.1)", "python3-pyelftools (>= 0.29)",
           "python3-zstandard (>= 0.19)", "python3-lz4 (>= 3)", "libblkid1", "libudev1",
           "kmod", "zstd")
ENTRY = """#!/usr/bin/python3
import sys

from pyinit.builder.cli import main

sys.exit(main())
"""
UPDATE_INITRAMFS = f"""#!/bin/sh
# update-initramfs for pyinit: initramfs-tools' options mapped onto pyinit-mkinitramfs.
#   -c|-u -k KVER|all   make or update /boot/initrd.img-KVER     -d -k KVER   delete it
#   -b DIR              another boot directory                     -v -t        accepted
set -e
mode= version= boot={distro.BOOT}
while getopts "cudk:b:vtsh" opt; do
  case "$opt" in
    c|u) mode=update ;;
    d) mode=remove ;;
    k) version="$OPTARG" ;;
    b) boot="$OPTARG" ;;
    v|t|s) ;;
    *) echo "usage: update-initramfs -c|-u|-d [-k KVER|all] [-b DIR]" >&2; exit 2 ;;
  esac
done
[ -n "$mode" ] || {{ echo "update-initramfs: expected -c, -u or -d" >&2; exit 2; }}
[ -n "$version" ] || version=$(uname -r)
if [ "$mode" = remove ]; then
  exec {COMMAND} --remove "$version" --boot-dir "$boot"
fi
exec {COMMAND} --update "$version" --boot-dir "$boot"
"""
POSTINST = f"""#!/bin/sh
set -e
case "$1" in
  configure|triggered)
    # Images for the installed kernels (a trigger: a package asked for fresh images).
    if ls {distro.BOOT}/vmlinuz-* >/dev/null 2>&1; then
      {COMMAND} --update all || echo "pyinit: the images were not all rebuilt" >&2
    fi ;;
esac
exit 0
"""


def version(repo: str = pyruntime.PYINIT_SRC) -> str:
    with open(os.path.join(repo, "pyproject.toml"), "rb") as fh:
        return str(tomllib.load(fh)["project"]["version"])


def control(ver: str, size_kb: int) -> str:
    return (f"Package: pyinit\nVersion: {ver}\nArchitecture: amd64\nSection: admin\n"
            f"Priority: optional\nMaintainer: pyinit developers <pyinit@localhost>\n"
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


def stage(root: str, repo: str = pyruntime.PYINIT_SRC) -> None:
    """The package's files under ROOT (DEBIAN/ included)."""
    package = os.path.join(repo, "pyinit")
    compiled = [n for n in os.listdir(package) if n.startswith("_syscalls.") and
                n.endswith(".so")]
    if not compiled:
        raise ValueError(f"{package}: expected the compiled cffi module (_syscalls.*.so), "
                         "found none: run pip install -e . first")
    shutil.copytree(package, os.path.join(root, SITE.lstrip("/"), "pyinit"),
                    ignore=shutil.ignore_patterns("__pycache__", "*.c", "*.o"))
    shutil.copytree(os.path.join(repo, "rootfs-skel"), os.path.join(root, SKELETON.lstrip("/")))
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
    _write(root, "DEBIAN/control", control(version(repo), size_kb))
    _write(root, "DEBIAN/conffiles", f"{distro.POSTINST}\n{distro.POSTRM}\n")
    _write(root, "DEBIAN/triggers", "interest-noawait update-initramfs\n")
    _write(root, "DEBIAN/postinst", POSTINST, 0o755)


def build(outdir: str) -> str:
    """Build the .deb into OUTDIR; returns its path."""
    with tempfile.TemporaryDirectory(prefix="pyinit-deb-") as tmp:
        root = os.path.join(tmp, "root")
        stage(root)
        path = os.path.join(outdir, f"pyinit_{version()}_amd64.deb")
        subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", root, path],
                       check=True, capture_output=True)
    return path


def main() -> int:
    if len(sys.argv) != 2 or not os.path.isdir(sys.argv[1]):
        print("usage: python3 -m pyinit.builder.debpkg OUTDIR (an existing directory)",
              file=sys.stderr)
        return 1
    print(build(sys.argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
