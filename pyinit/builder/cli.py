"""mkinitramfs.py: build an initramfs image around the pyinit init.

    mkinitramfs.py -o OUTPUT [--kver KVER] [--kmoddir DIR] [--add-drivers "m1 m2"]
                   [--omit-drivers "m"] [--hostonly | --no-hostonly]
                   [--compress zstd|gzip|xz|lz4|none] [--compress-level N] [--python PATH]
                   [--include SRC DST] [--fsck TYPES] [--udev auto|systemd|none]
                   [--config FILE] [--no-early-microcode] [--no-cache] [--force]
    mkinitramfs.py --list IMAGE
    mkinitramfs.py --extract IMAGE DIR
"""

from __future__ import annotations

import argparse
import os
import re
import stat
import sys
import time
from dataclasses import dataclass, field

from pyinit import layout, libfind
from pyinit.builder import (
    archive,
    cache,
    compress,
    config,
    cpio,
    elfdeps,
    firmware,
    hostonly,
    image,
    kmodules,
    pyruntime,
    strip,
)
from pyinit.modindex import INDEX_NAME

SKELETON = os.path.join(pyruntime.PYINIT_SRC, "rootfs-skel")
# The runtime part is compressed once and cached, so it gets zstd's slow, small level
# (4.03 MB against 4.6 MB at level 9; unpacking costs the same).
RUNTIME_ZSTD_LEVEL = 19


class BuildError(Exception):
    """Any bad input: reported as one line, exit status 1."""


@dataclass
class Config:
    output: str
    kver: str
    kmoddir: str
    settings: config.Settings
    hostonly: bool
    force: bool
    mtime: int
    use_cache: bool = True


@dataclass
class Result:
    data: bytes
    unpacked: int
    parts: dict[str, int]
    entries: int
    modules: list[str] = field(default_factory=list)
    firmware_missing: list[str] = field(default_factory=list)
    cached_runtime: bool = False


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mkinitramfs.py", description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", help="the image to write")
    parser.add_argument("--kver", help="kernel version (default: the running kernel)")
    parser.add_argument("--kmoddir", help="modules directory (default: /lib/modules/KVER)")
    parser.add_argument("--add-drivers", action="append", default=[], metavar='"M1 M2"',
                        help="modules (names or aliases) to carry, with their dependencies")
    parser.add_argument("--omit-drivers", action="append", default=[], metavar='"M1 M2"',
                        help="modules never to carry")
    parser.add_argument("--hostonly", action="store_true", default=None,
                        help="the modules this host's root needs (default when the running "
                        "kernel is KVER)")
    parser.add_argument("--no-hostonly", dest="hostonly", action="store_false",
                        help="the generic set for unknown hardware")
    parser.add_argument("--compress", choices=compress.FORMATS, default=None)
    parser.add_argument("--compress-level", type=int, default=None)
    parser.add_argument("--python", help="the interpreter to ship (default: this one)")
    parser.add_argument("--include", nargs=2, action="append", default=[], metavar=("SRC", "DST"),
                        help="copy a host file into the image (ELF files with their libraries)")
    parser.add_argument("--fsck", action="append", default=[], metavar='"TYPE ..."',
                        help="carry fsck.TYPE (with its libraries) for these filesystem types")
    parser.add_argument("--udev", choices=config.UDEV_MODES, default=None,
                        help="carry systemd-udevd (auto: when this host has it)")
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="a TOML file read after /etc/pyinit/mkinitramfs{.toml,.d/*.toml}")
    parser.add_argument("--no-early-microcode", dest="early_microcode", action="store_false",
                        default=None, help="do not prepend the host's CPU microcode")
    parser.add_argument("--no-cache", dest="cache", action="store_false",
                        help="rebuild the Python runtime part instead of reusing it")
    parser.add_argument("--force", action="store_true", help="replace an existing image")
    parser.add_argument("--list", metavar="IMAGE", help="print the contents of an image")
    parser.add_argument("--extract", nargs=2, metavar=("IMAGE", "DIR"),
                        help="unpack an image into a directory")
    return parser.parse_args(argv)


def _words(groups: list[str]) -> list[str]:
    return [w for group in groups for w in group.replace(",", " ").split()]


def config_from(args: argparse.Namespace) -> Config:
    if not args.output:
        raise BuildError("expected -o OUTPUT (or --list IMAGE, or --extract IMAGE DIR)")
    settings = config.load(args.config)
    settings.add_drivers += _words(args.add_drivers)
    settings.omit_drivers += _words(args.omit_drivers)
    settings.fsck += _words(args.fsck)
    settings.include += [(s, d) for s, d in args.include]
    for key in ("compress", "compress_level", "python", "udev", "early_microcode"):
        value = getattr(args, key)
        if value is not None:
            setattr(settings, key, value)
    kver = args.kver or os.uname().release
    hostonly_mode = args.hostonly if args.hostonly is not None else settings.hostonly
    if hostonly_mode is None:
        hostonly_mode = kver == os.uname().release and args.kmoddir is None
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "0")
    if not epoch.isdigit():
        raise BuildError(f"SOURCE_DATE_EPOCH={epoch}: expected a whole number of seconds")
    return Config(args.output, kver, args.kmoddir or f"/lib/modules/{kver}", settings,
                  hostonly_mode, args.force, int(epoch), args.cache)


def kernel_config(cfg: Config) -> tuple[str, list[str]] | None:
    """(path, lines) of the target kernel's .config, when the modules directory or /boot
    has it."""
    for path in (os.path.join(cfg.kmoddir, "config"), f"/boot/config-{cfg.kver}"):
        if os.path.isfile(path):
            with open(path, encoding="utf-8", errors="replace") as fh:
                return path, fh.read().splitlines()
    return None


def kernel_option(found: tuple[str, list[str]] | None, option: str) -> bool:
    """OPTION=y in the kernel's config FOUND (False when the config is unknown)."""
    return found is not None and f"{option}=y" in found[1]


def check_kernel_config(cfg: Config, found: tuple[str, list[str]] | None) -> None:
    """Refuse a compression the target kernel cannot unpack (when its config is known)."""
    wanted = compress.KERNEL_CONFIG.get(cfg.settings.compress)
    if wanted is not None and found is not None and f"{wanted}=y" not in found[1]:
        raise BuildError(f"--compress {cfg.settings.compress}: the kernel {cfg.kver} cannot "
                         f"unpack it ({found[0]} has no {wanted}=y)")


def add_elf_closure(img: image.Image, resolver: elfdeps.Resolver, stripper: strip.Stripper,
                    roots: list[str], part: str, skip: set[str]) -> list[str]:
    closure = resolver.closure(roots)
    for path in closure:
        if path not in skip:
            img.add_host_file(path, part=part, data=stripper.data(path))
    return closure


def add_tool(img: image.Image, resolver: elfdeps.Resolver, stripper: strip.Stripper,
             src: str, dest: str, part: str) -> None:
    """A host file at DEST; an ELF file stripped and with its library closure."""
    real = os.path.realpath(src)
    if elfdeps.is_elf(real):
        img.add_host_file(src, dest, part=part, data=stripper.data(real))
        add_elf_closure(img, resolver, stripper, [real], part, skip={real})
    else:
        img.add_host_file(src, dest, part=part)


def find_library(resolver: elfdeps.Resolver, name: str) -> str:
    """The host file of a library a module opens with ctypes (lib<name>.so.N)."""
    path = libfind.find_in(resolver.system_dirs, name)
    if path is None:
        raise BuildError(f"library {name}: expected lib{name}.so.N in one of "
                         f"{', '.join(resolver.system_dirs)}, found none")
    return path


def runtime_segment(cfg: Config, resolver: elfdeps.Resolver,
                    stripper: strip.Stripper) -> tuple[cache.Segment, bool]:
    """The Python runtime, pyinit and the skeleton as one compressed archive (cached)."""
    python = pyruntime.resolve_python(cfg.settings.python)
    builder_sources = sorted(
        os.path.join(d, n) for d in (os.path.dirname(__file__), os.path.dirname(
            os.path.dirname(__file__))) for n in os.listdir(d) if n.endswith((".py", ".so")))
    params: dict[str, object] = {
        "python": python, "compress": cfg.settings.compress,
        "level": cfg.settings.compress_level, "mtime": cfg.mtime,
        "modules": pyruntime.INIT_MODULES, "excludes": pyruntime.EXCLUDES,
        "builder": [cache.stamp(p) for p in builder_sources],
    }
    if cfg.use_cache:
        cached = cache.load(params)
        if cached is not None:
            return cached, True
    img = image.Image()
    runtime = pyruntime.collect(python)
    extensions = sorted(runtime.files.values())
    ctypes_libs = [find_library(resolver, name) for name in runtime.libraries]
    closure = add_elf_closure(img, resolver, stripper,
                              [runtime.executable, *extensions, *ctypes_libs],
                              "python runtime", skip=set(extensions))
    for dest, src in sorted(runtime.files.items()):
        part = "third-party" if dest.startswith(layout.SITE) else "stdlib"
        img.add_host_file(src, dest, part=part, data=stripper.data(src))
    if runtime.executable != "/usr/bin/python3":
        img.add_symlink("/usr/bin/python3", runtime.executable, part="python runtime")
    img.add_bytes(str(runtime.info["zip_path"]), pyruntime.stdlib_zip_bytes(runtime),
                  part="stdlib")
    img.add_dir(os.path.join(str(runtime.info["platstdlib"]), "lib-dynload"), part="stdlib")
    for dest, data in sorted(runtime.site.items()):
        part = "pyinit" if dest.startswith(layout.SITE + "/pyinit/") else "third-party"
        img.add_bytes(dest, data, part=part)
    img.add_tree(SKELETON, "/", part="skeleton")
    for directory in layout.API_DIRS:
        img.add_dir(directory)
    img.add_node("/dev/console", stat.S_IFCHR, 0o600, (5, 1))
    raw = img.archive(cfg.mtime)
    level = cfg.settings.compress_level
    if level is None and cfg.settings.compress == "zstd":
        level = RUNTIME_ZSTD_LEVEL
    segment = cache.Segment(compress.compress(raw, cfg.settings.compress, level),
                            len(raw), img.size_by_part(), img.symlinks(), len(img.entries))
    inputs = [python, *closure, *extensions, *runtime.sources, *builder_sources,
              *runtime.search_dirs]
    for root, _dirs, files in os.walk(SKELETON):
        inputs += [os.path.join(root, f) for f in files] + [root]
    if cfg.use_cache:
        cache.store(params, inputs, segment)
    return segment, False


def select_modules(cfg: Config, tree: kmodules.ModuleTree) -> list[str]:
    wanted = list(cfg.settings.add_drivers)
    if cfg.hostonly:
        try:
            wanted += hostonly.hostonly_modules(tree)
        except (hostonly.HostOnlyError, OSError) as err:
            raise BuildError(f"--hostonly: {err}") from err
    elif not cfg.settings.add_drivers:
        wanted += hostonly.generic_modules(tree)
    omit = {m.replace("-", "_") for m in cfg.settings.omit_drivers}
    modules = [m for m in tree.closure(wanted) if m not in omit]
    for name in modules:
        lost = [d for d in tree.deps.get(name, []) if d in omit]
        if lost:
            raise BuildError(f"--omit-drivers {','.join(lost)}: needed by {name}, which the "
                             "image carries; omit it too or keep them")
    return modules


def add_modules(img: image.Image, cfg: Config,
                keep_compressed: bool) -> tuple[list[str], list[str]]:
    """The selected modules (compressed ones as they are where KEEP_COMPRESSED, the kernel
    decompressing them itself), their firmware and the index."""
    if not os.path.isdir(cfg.kmoddir):
        if cfg.settings.add_drivers or cfg.hostonly:
            raise BuildError(f"--kmoddir {cfg.kmoddir}: expected the modules of kernel "
                             f"{cfg.kver}, found no directory")
        return [], []
    tree = kmodules.ModuleTree.read(cfg.kmoddir)
    modules = select_modules(cfg, tree)
    dest_base = f"{layout.MODULES_DIR}/{cfg.kver}"
    wanted_firmware: list[str] = []
    for name in modules:
        rel = tree.paths[name]
        src = os.path.join(cfg.kmoddir, rel)
        if rel.endswith((".xz", ".zst", ".gz")) and not keep_compressed:
            # The kernel cannot decompress modules itself: store them as plain .ko.
            plain = rel.rsplit(".", 1)[0]
            img.add_bytes(os.path.join(dest_base, plain), firmware.module_bytes(src),
                          part="modules")
            tree.paths[name] = plain
        else:
            img.add_host_file(src, os.path.join(dest_base, rel), part="modules")
        wanted_firmware += firmware.modinfo(src).get("firmware", [])
    found, missing = firmware.firmware_files(wanted_firmware)
    for path in found:
        img.add_host_file(path, part="firmware")
    img.add_bytes(os.path.join(dest_base, INDEX_NAME), tree.index_text(cfg.kver, modules).encode(),
                  part="modules")
    return modules, missing


# The rules that name block devices and set the properties root= matches against. Module
# loading (80-drivers.rules) stays with the init and its build-time index.
UDEV_RULES = ("50-udev-default.rules", "60-block.rules", "60-persistent-storage.rules",
              "64-btrfs.rules")
UDEV_HELPERS = ("/lib/udev/ata_id", "/lib/udev/scsi_id")  # run by 60-persistent-storage


def add_udev(img: image.Image, resolver: elfdeps.Resolver, stripper: strip.Stripper,
             mode: str) -> None:
    if mode == "none" or (mode == "auto" and not os.path.exists(layout.UDEVD)):
        return
    for path in (layout.UDEVD, layout.UDEVADM):
        if not os.path.exists(path):
            raise BuildError(f"--udev {mode}: expected {path} on this host (Debian's udev "
                             "package), found none")
        add_tool(img, resolver, stripper, path, path, "udev")
    for helper in UDEV_HELPERS:
        if os.path.exists(helper):
            add_tool(img, resolver, stripper, helper, helper, "udev")
    groups: set[str] = set()
    for rule in UDEV_RULES:
        path = os.path.join(layout.UDEV_RULES_DIR, rule)
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


def host_fsck(fstype: str) -> str | None:
    """This host's fsck.FSTYPE, when it has one."""
    return next((p for p in (f"/sbin/fsck.{fstype}", f"/usr/sbin/fsck.{fstype}")
                 if os.path.exists(p)), None)


def build(cfg: Config) -> Result:
    kconfig = kernel_config(cfg)
    check_kernel_config(cfg, kconfig)
    settings = cfg.settings
    resolver = elfdeps.Resolver()
    stripper = strip.Stripper()
    runtime, cached = runtime_segment(cfg, resolver, stripper)
    img = image.Image()
    for path, target in sorted(runtime.symlinks.items()):
        img.seed_symlink(path, target)
    modules, missing = add_modules(img, cfg,
                                   kernel_option(kconfig, "CONFIG_MODULE_DECOMPRESS"))
    includes = list(settings.include)
    if settings.rescue_shell:
        includes.append((settings.rescue_shell, "/bin/busybox"
                         if os.path.basename(settings.rescue_shell) == "busybox" else "/bin/sh"))
    for src, dest in includes:
        if not os.path.exists(src):
            raise BuildError(f"--include {src} {dest}: expected an existing file, found none")
        add_tool(img, resolver, stripper, src, dest, "included")
    fsck_types = list(settings.fsck)
    if cfg.hostonly:
        # The root filesystem's fsck, when this host has one (the init runs it before rw).
        root_type = hostonly.root_mount()[1]
        if host_fsck(root_type) is not None:
            fsck_types.append(root_type)
    for fstype in dict.fromkeys(fsck_types):
        tool = host_fsck(fstype)
        if tool is None:
            raise BuildError(f"--fsck {fstype}: expected /sbin/fsck.{fstype} on this host, "
                             "found none")
        add_tool(img, resolver, stripper, tool, tool, "fsck")
    add_udev(img, resolver, stripper, settings.udev)
    if settings.cmdline:
        img.add_bytes(layout.DEFAULT_CMDLINE, settings.cmdline.encode() + b"\n", part="skeleton")
    raw = img.archive(cfg.mtime)
    kernel_part = compress.compress(raw, settings.compress, settings.compress_level)
    early = firmware.microcode_archive() if settings.early_microcode else b""
    parts = dict(runtime.parts)
    for part, size in img.size_by_part().items():
        parts[part] = parts.get(part, 0) + size
    if early:
        parts["microcode"] = len(early)
    return Result(early + runtime.data + kernel_part, runtime.unpacked + len(raw) + len(early),
                  dict(sorted(parts.items())), runtime.entries + len(img.written()), modules,
                  missing, cached)


def read_image(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as err:
        raise BuildError(f"{path}: expected a readable image, found: {err.strerror}") from err


def summary(cfg: Config, result: Result, seconds: float) -> str:
    mode = "host-only" if cfg.hostonly else "generic" if not cfg.settings.add_drivers else \
        "listed"
    lines = [f"{cfg.output}: {len(result.data) / 1e6:.2f} MB {cfg.settings.compress}, "
             f"{result.unpacked / 1e6:.2f} MB unpacked, {result.entries} entries, built in "
             f"{seconds:.2f} s{' (python runtime from cache)' if result.cached_runtime else ''}",
             f"  modules ({mode}): {len(result.modules)}"
             + (f" ({', '.join(result.modules[:8])}{', ...' if len(result.modules) > 8 else ''})"
                if result.modules else "")]
    for part, size in result.parts.items():
        if size:
            lines.append(f"  {part:<16} {size / 1e6:8.2f} MB")
    if result.firmware_missing:
        lines.append("  firmware not on this host: " + ", ".join(result.firmware_missing))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.list:
            print("\n".join(archive.list_lines(read_image(args.list))))
            return 0
        if args.extract:
            count = archive.extract(read_image(args.extract[0]), args.extract[1])
            print(f"{args.extract[1]}: {count} entries")
            return 0
        cfg = config_from(args)
        start = time.monotonic()
        result = build(cfg)
        image.write_atomically(cfg.output, result.data, cfg.force)
        print(summary(cfg, result, time.monotonic() - start))
        return 0
    except (BuildError, image.ImageError, cpio.CpioError, compress.CompressError,
            kmodules.ModulesError, elfdeps.ElfError, pyruntime.RuntimeError_,
            config.ConfigError, ValueError, OSError) as err:
        print(f"mkinitramfs.py: error: {err}", file=sys.stderr)
        return 1
