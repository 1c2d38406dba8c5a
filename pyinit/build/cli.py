"""mkinitramfs.py: build an initramfs image around the pyinit init.

    mkinitramfs.py -o OUTPUT [--kver KVER] [--kmoddir DIR] [--add-drivers "m1 m2"]
                   [--compress zstd|gzip|xz|none] [--python PATH] [--include SRC DST] [--force]
    mkinitramfs.py --list IMAGE
"""

from __future__ import annotations

import argparse
import os
import re
import stat
import sys
import time
from dataclasses import dataclass

from pyinit import libfind
from pyinit.build import compress, cpio, elfdeps, image, kmodules, pyruntime, strip
from pyinit.kmod import INDEX_NAME

SKELETON = os.path.join(pyruntime.PYINIT_SRC, "rootfs-skel")
API_DIRS = ("/proc", "/sys", "/dev", "/run", "/sysroot", "/tmp")


class BuildError(Exception):
    """Any bad input: reported as one line, exit status 1."""


@dataclass
class Config:
    output: str
    kver: str
    kmoddir: str
    drivers: list[str]
    compression: str
    level: int | None
    python: str | None
    includes: list[tuple[str, str]]
    fsck: list[str]
    udev: str
    force: bool
    mtime: int


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mkinitramfs.py", description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", help="the image to write")
    parser.add_argument("--kver", help="kernel version (default: the running kernel)")
    parser.add_argument("--kmoddir", help="modules directory (default: /lib/modules/KVER)")
    parser.add_argument("--add-drivers", action="append", default=[], metavar='"M1 M2"',
                        help="modules (names or aliases) to include, with their dependencies")
    parser.add_argument("--compress", default="zstd", choices=compress.FORMATS)
    parser.add_argument("--compress-level", type=int, default=None)
    parser.add_argument("--python", help="the interpreter to ship (default: this one)")
    parser.add_argument("--include", nargs=2, action="append", default=[], metavar=("SRC", "DST"),
                        help="copy a host file into the image (ELF files with their libraries)")
    parser.add_argument("--fsck", action="append", default=[], metavar='"TYPE ..."',
                        help="carry fsck.TYPE (with its libraries) for these filesystem types")
    parser.add_argument("--udev", choices=("auto", "systemd", "none"), default="auto",
                        help="carry systemd-udevd (auto: when this host has it)")
    parser.add_argument("--force", action="store_true", help="replace an existing image")
    parser.add_argument("--list", metavar="IMAGE", help="print the contents of an image")
    return parser.parse_args(argv)


def config_from(args: argparse.Namespace) -> Config:
    if not args.output:
        raise BuildError("expected -o OUTPUT (or --list IMAGE)")
    kver = args.kver or os.uname().release
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "0")
    if not epoch.isdigit():
        raise BuildError(f"SOURCE_DATE_EPOCH={epoch}: expected a whole number of seconds")
    drivers = [d for group in args.add_drivers for d in group.replace(",", " ").split()]
    return Config(args.output, kver, args.kmoddir or f"/lib/modules/{kver}", drivers,
                  args.compress, args.compress_level, args.python,
                  [(s, d) for s, d in args.include],
                  [t for group in args.fsck for t in group.replace(",", " ").split()],
                  args.udev, args.force, int(epoch))


def check_kernel_config(cfg: Config) -> None:
    """Refuse a compression the target kernel cannot unpack (when its config is known)."""
    wanted = compress.KERNEL_CONFIG.get(cfg.compression)
    if wanted is None:
        return
    for path in (os.path.join(cfg.kmoddir, "config"), f"/boot/config-{cfg.kver}"):
        if os.path.isfile(path):
            with open(path, encoding="utf-8", errors="replace") as fh:
                if f"{wanted}=y" not in fh.read().splitlines():
                    raise BuildError(f"--compress {cfg.compression}: the kernel {cfg.kver} "
                                     f"cannot unpack it ({path} has no {wanted}=y)")
            return


def add_elf_closure(img: image.Image, resolver: elfdeps.Resolver, stripper: strip.Stripper,
                    roots: list[str], part: str, skip: set[str]) -> None:
    for path in resolver.closure(roots):
        if path not in skip:
            img.add_host_file(path, part=part, data=stripper.data(path))


def add_tool(img: image.Image, resolver: elfdeps.Resolver, stripper: strip.Stripper,
             src: str, dest: str, part: str) -> None:
    """A host file at DEST; an ELF file stripped and with its library closure."""
    real = os.path.realpath(src)
    if elfdeps.is_elf(real):
        img.add_host_file(src, dest, part=part, data=stripper.data(real))
        add_elf_closure(img, resolver, stripper, [real], part, skip={real})
    else:
        img.add_host_file(src, dest, part=part)


UDEVD = "/lib/systemd/systemd-udevd"
UDEVADM = "/bin/udevadm"
UDEV_RULES_DIR = "/lib/udev/rules.d"
# The rules that name block devices and set the properties root= matches against. Module
# loading (80-drivers.rules) stays with the init and its build-time index.
UDEV_RULES = ("50-udev-default.rules", "60-block.rules", "60-persistent-storage.rules",
              "64-btrfs.rules")
UDEV_HELPERS = ("/lib/udev/ata_id", "/lib/udev/scsi_id")  # run by 60-persistent-storage


def add_udev(img: image.Image, resolver: elfdeps.Resolver, stripper: strip.Stripper,
             mode: str) -> None:
    if mode == "none" or (mode == "auto" and not os.path.exists(UDEVD)):
        return
    for path in (UDEVD, UDEVADM):
        if not os.path.exists(path):
            raise BuildError(f"--udev {mode}: expected {path} on this host (Debian's udev "
                             "package), found none")
        add_tool(img, resolver, stripper, path, path, "udev")
    for helper in UDEV_HELPERS:
        if os.path.exists(helper):
            add_tool(img, resolver, stripper, helper, helper, "udev")
    groups: set[str] = set()
    for rule in UDEV_RULES:
        path = os.path.join(UDEV_RULES_DIR, rule)
        if os.path.exists(path):
            img.add_host_file(path, part="udev")
            with open(path, encoding="utf-8") as fh:
                groups.update(re.findall(r'GROUP="([^"]+)"', fh.read()))
    # The rules name groups (disk, cdrom, ...): udevd needs them resolvable.
    img.add_bytes("/etc/group", group_file(groups).encode(), part="udev")
    img.add_bytes("/etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", part="udev")
    if os.path.exists("/etc/udev/udev.conf"):
        img.add_host_file("/etc/udev/udev.conf", part="udev")


def group_file(names: set[str], host: str = "/etc/group") -> str:
    """/etc/group lines for NAMES with the host's numbers (root always)."""
    lines = ["root:x:0:"]
    try:
        with open(host, encoding="utf-8") as fh:
            for line in fh:
                fields = line.strip().split(":")
                if len(fields) >= 3 and fields[0] in names and fields[0] != "root":
                    lines.append(f"{fields[0]}:x:{fields[2]}:")
    except FileNotFoundError:
        pass
    return "\n".join(sorted(lines)) + "\n"


def find_library(resolver: elfdeps.Resolver, name: str) -> str:
    """The host file of a library a module opens with ctypes (lib<name>.so.N)."""
    path = libfind.find_in(resolver.system_dirs, name)
    if path is None:
        raise BuildError(f"library {name}: expected lib{name}.so.N in one of "
                         f"{', '.join(resolver.system_dirs)}, found none")
    return path


def build(cfg: Config) -> tuple[image.Image, bytes, int]:
    check_kernel_config(cfg)
    img = image.Image()
    runtime = pyruntime.collect(cfg.python)
    resolver = elfdeps.Resolver()
    stripper = strip.Stripper()
    # Libraries first: they lay down the host's /lib -> usr/lib style links.
    extensions = sorted(runtime.files.values())
    ctypes_libs = [find_library(resolver, name) for name in runtime.libraries]
    add_elf_closure(img, resolver, stripper, [runtime.executable, *extensions, *ctypes_libs],
                    "python runtime", skip=set(extensions))
    for dest, src in sorted(runtime.files.items()):
        part = "third-party" if dest.startswith(pyruntime.SITE_IN_IMAGE) else "stdlib"
        img.add_host_file(src, dest, part=part, data=stripper.data(src))
    if runtime.executable != "/usr/bin/python3":
        img.add_symlink("/usr/bin/python3", runtime.executable, part="python runtime")
    img.add_bytes(str(runtime.info["zip_path"]), pyruntime.stdlib_zip_bytes(runtime),
                  part="stdlib")
    img.add_dir(os.path.join(str(runtime.info["platstdlib"]), "lib-dynload"), part="stdlib")
    for dest, data in sorted(runtime.site.items()):
        part = "pyinit" if dest.startswith(pyruntime.SITE_IN_IMAGE + "/pyinit/") else "third-party"
        img.add_bytes(dest, data, part=part)
    add_modules(img, cfg)
    for src, dest in cfg.includes:
        if not os.path.exists(src):
            raise BuildError(f"--include {src} {dest}: expected an existing file, found none")
        add_tool(img, resolver, stripper, src, dest, "included")
    for fstype in cfg.fsck:
        tool = next((p for p in (f"/sbin/fsck.{fstype}", f"/usr/sbin/fsck.{fstype}")
                     if os.path.exists(p)), None)
        if tool is None:
            raise BuildError(f"--fsck {fstype}: expected /sbin/fsck.{fstype} on this host, "
                             "found none")
        add_tool(img, resolver, stripper, tool, tool, "fsck")
    add_udev(img, resolver, stripper, cfg.udev)
    img.add_tree(SKELETON, "/", part="skeleton")
    for directory in API_DIRS:
        img.add_dir(directory)
    img.add_node("/dev/console", stat.S_IFCHR, 0o600, (5, 1))
    data, unpacked = image.compressed(img, cfg.compression, cfg.level, cfg.mtime)
    return img, data, unpacked


def add_modules(img: image.Image, cfg: Config) -> None:
    if not cfg.drivers:
        return
    if not os.path.isdir(cfg.kmoddir):
        raise BuildError(f"--kmoddir {cfg.kmoddir}: expected the modules of kernel {cfg.kver}, "
                         "found no directory")
    tree = kmodules.ModuleTree.read(cfg.kmoddir)
    modules = tree.closure(cfg.drivers)
    dest_base = f"/lib/modules/{cfg.kver}"
    for name in modules:
        rel = tree.paths[name]
        img.add_host_file(os.path.join(cfg.kmoddir, rel), os.path.join(dest_base, rel),
                          part="modules")
    img.add_bytes(os.path.join(dest_base, INDEX_NAME),
                  tree.index_text(modules).encode(), part="modules")


def list_image(path: str) -> list[str]:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as err:
        raise BuildError(f"--list {path}: expected a readable image, found: {err.strerror}") \
            from err
    lines = []
    offset = 0
    while offset < len(data):
        if data[offset:].strip(b"\0") == b"":
            break
        chunk = data[offset:]
        fmt = compress.detect(chunk)
        if fmt != "none":
            chunk, offset = compress.decompress(chunk), len(data)
            sub = 0
        else:
            sub = 0
        lines.append(f"# archive ({fmt})")
        end = 0
        for entry, end in cpio.read(chunk, sub):  # noqa: B007 - end is used after the loop
            if entry.name != cpio.TRAILER:
                size = len(entry.data)
                target = f" -> {entry.data.decode()}" if stat.S_ISLNK(entry.mode) else ""
                lines.append(f"{stat.filemode(entry.mode)} {size:>10} {entry.name}{target}")
        if fmt == "none":
            offset += end
            while offset < len(data) and data[offset] == 0:
                offset += 1
    return lines


def summary(cfg: Config, img: image.Image, size: int, unpacked: int, seconds: float) -> str:
    lines = [f"{cfg.output}: {size / 1e6:.2f} MB {cfg.compression}, {unpacked / 1e6:.2f} MB "
             f"unpacked, {len(img.entries)} entries, built in {seconds:.2f} s"]
    for part, part_size in img.size_by_part().items():
        lines.append(f"  {part:<16} {part_size / 1e6:8.2f} MB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.list:
            print("\n".join(list_image(args.list)))
            return 0
        cfg = config_from(args)
        start = time.monotonic()
        img, data, unpacked = build(cfg)
        image.write_atomically(cfg.output, data, cfg.force)
        print(summary(cfg, img, len(data), unpacked, time.monotonic() - start))
        return 0
    except (BuildError, image.ImageError, cpio.CpioError, compress.CompressError,
            kmodules.ModulesError, elfdeps.ElfError, pyruntime.RuntimeError_) as err:
        print(f"mkinitramfs.py: error: {err}", file=sys.stderr)
        return 1
