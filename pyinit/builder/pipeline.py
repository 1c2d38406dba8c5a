"""The build, top to bottom: the checks of what was asked for (kernel version, module
directory, includes, kernel config, module selection and vermagic), the runtime segment,
modules, fsck, udev, defaults, includes (last: they may not replace anything the builder
wrote), archive, compress. Each step is a plain function below ``build``."""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field

from pyinit import layout, libfind
from pyinit.builder import (
    cache,
    compress,
    config,
    cpio,
    elfdeps,
    firmware,
    hostfile,
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


@dataclass
class Tools:
    """What turns host files into image files: the ELF library resolver and the stripper."""

    resolver: elfdeps.Resolver = field(default_factory=elfdeps.Resolver)
    stripper: strip.Stripper = field(default_factory=strip.Stripper)


KernelConfig = tuple[str, list[str]] | None  # (path, lines) of the kernel's .config


def build(cfg: Config) -> Result:
    check_target(cfg)
    check_includes(cfg)
    kconfig = kernel_config(cfg)
    check_kernel_config(cfg, kconfig)
    tree = kmodules.ModuleTree.read(cfg.kmoddir)
    modules = select_modules(cfg, tree)
    check_vermagic(cfg, tree, modules)
    tools = Tools()
    runtime, cached = runtime_segment(cfg, tools)
    img = kernel_image(runtime)
    missing = add_modules(img, cfg, tree, modules,
                          kernel_option(kconfig, "CONFIG_MODULE_DECOMPRESS"))
    add_fsck(img, cfg, tools)
    add_udev(img, tools, cfg.settings.udev)
    add_defaults(img, cfg)
    early = firmware.microcode_archive() if cfg.settings.early_microcode else b""
    add_includes(img, cfg, tools, {**runtime.paths, **archive_paths(early)})
    raw = img.archive(cfg.mtime)
    kernel_part = compress.compress(raw, cfg.settings.compress, cfg.settings.compress_level)
    return assemble(early, runtime, cached, img, raw, kernel_part, modules, missing)


# What uname -r prints; the version names a directory in the image (lib/modules/KVER).
KVER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~-]*")


def check_target(cfg: Config) -> None:
    """The kernel version is safe as a path component and its modules directory exists."""
    if not KVER.fullmatch(cfg.kver):
        raise BuildError(f"--kver {cfg.kver!r}: expected a kernel release as uname -r prints "
                         "it (letters, digits and ._+~-, no '/')")
    if not os.path.isdir(cfg.kmoddir):
        raise BuildError(f"--kmoddir {cfg.kmoddir}: expected the modules of kernel "
                         f"{cfg.kver}, found no directory")


def check_vermagic(cfg: Config, tree: kmodules.ModuleTree, modules: list[str]) -> None:
    """The modules are the target kernel's: the vermagic of the first module carried (or,
    with none carried, of the first one depmod lists) names KVER."""
    name = next(iter(modules or tree.paths), None)
    if name is None:
        return  # a kernel with every driver built in
    rel = tree.paths[name]
    magic = firmware.modinfo(os.path.join(cfg.kmoddir, rel)).get("vermagic", [""])[0].split()
    if not magic or magic[0] != cfg.kver:
        found = f"kernel {magic[0]}" if magic else "no vermagic="
        raise BuildError(f"--kmoddir {cfg.kmoddir}: expected the modules of kernel {cfg.kver} "
                         f"(--kver), found {found} in {rel}")


def kernel_config(cfg: Config) -> KernelConfig:
    """(path, lines) of the target kernel's .config, when the modules directory or /boot
    has it."""
    for path in (os.path.join(cfg.kmoddir, "config"), f"/boot/config-{cfg.kver}"):
        if os.path.isfile(path):
            with open(path, encoding="utf-8", errors="replace") as fh:
                return path, fh.read().splitlines()
    return None


def kernel_option(found: KernelConfig, option: str) -> bool:
    """OPTION=y in the kernel's config FOUND (False when the config is unknown)."""
    return found is not None and f"{option}=y" in found[1]


def check_kernel_config(cfg: Config, found: KernelConfig) -> None:
    """Refuse a compression the target kernel cannot unpack (when its config is known)."""
    wanted = compress.KERNEL_CONFIG.get(cfg.settings.compress)
    if wanted is not None and found is not None and f"{wanted}=y" not in found[1]:
        raise BuildError(f"--compress {cfg.settings.compress}: the kernel {cfg.kver} cannot "
                         f"unpack it ({found[0]} has no {wanted}=y)")


def add_elf_closure(img: image.Image, tools: Tools, roots: list[str], part: str,
                    skip: set[str]) -> list[str]:
    closure = tools.resolver.closure(roots)
    for path in closure:
        if path not in skip:
            img.add_host_file(path, part=part, data=tools.stripper.data(path))
    return closure


def add_tool(img: image.Image, tools: Tools, src: str, dest: str, part: str) -> None:
    """A host file at DEST; an ELF file stripped and with its library closure."""
    real = os.path.realpath(src)
    if elfdeps.is_elf(real):
        img.add_host_file(src, dest, part=part, data=tools.stripper.data(real))
        add_elf_closure(img, tools, [real], part, skip={real})
    else:
        img.add_host_file(src, dest, part=part)


def find_library(resolver: elfdeps.Resolver, name: str) -> str:
    """The host file of a library a module opens with ctypes (lib<name>.so.N)."""
    path = libfind.find_in(resolver.system_dirs, name)
    if path is None:
        raise BuildError(f"library {name}: expected lib{name}.so.N in one of "
                         f"{', '.join(resolver.system_dirs)}, found none")
    return path


def runtime_segment(cfg: Config, tools: Tools) -> tuple[cache.Segment, bool]:
    """The Python runtime, pyinit and the skeleton as one compressed archive (cached)."""
    python = pyruntime.resolve_python(cfg.settings.python)
    builder_sources = sorted(
        os.path.join(d, n) for d in (os.path.dirname(__file__), os.path.dirname(
            os.path.dirname(__file__))) for n in os.listdir(d) if n.endswith((".py", ".so")))
    skeleton = sorted(os.path.join(root, name) for root, dirs, files in os.walk(SKELETON)
                      for name in dirs + files)
    params: dict[str, object] = {
        "python": python, "compress": cfg.settings.compress,
        "level": cfg.settings.compress_level, "mtime": cfg.mtime,
        "modules": pyruntime.INIT_MODULES, "excludes": pyruntime.EXCLUDES,
        "builder": [cache.stamp(p) for p in builder_sources],
        "skeleton": skeleton,  # a file added to rootfs-skel/ is a new key
    }
    if cfg.use_cache:
        cached = cache.load(params)
        if cached is not None:
            return cached, True
    img = image.Image()
    runtime = pyruntime.collect(python)
    extensions = sorted(runtime.files.values())
    ctypes_libs = [find_library(tools.resolver, name) for name in runtime.libraries]
    closure = add_elf_closure(img, tools, [runtime.executable, *extensions, *ctypes_libs],
                              "python runtime", skip=set(extensions))
    for dest, src in sorted(runtime.files.items()):
        part = "third-party" if dest.startswith(layout.SITE) else "stdlib"
        img.add_host_file(src, dest, part=part, data=tools.stripper.data(src))
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
                            len(raw), img.size_by_part(), img.symlinks(), len(img.entries),
                            img.kinds())
    inputs = [python, *closure, *extensions, *runtime.sources, *builder_sources,
              *(p for p in skeleton if not os.path.isdir(p))]
    if cfg.use_cache:
        cache.store(params, inputs, segment, absent=pyruntime.shadow_candidates(runtime))
    return segment, False


def kernel_image(runtime: cache.Segment) -> image.Image:
    """The kernel-specific part, resolving paths through the runtime segment's symlinks."""
    img = image.Image()
    for path, target in sorted(runtime.symlinks.items()):
        img.seed_symlink(path, target)
    return img


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


def add_modules(img: image.Image, cfg: Config, tree: kmodules.ModuleTree, modules: list[str],
                keep_compressed: bool) -> list[str]:
    """The selected MODULES (compressed ones as they are where KEEP_COMPRESSED, the kernel
    decompressing them itself), their firmware and the index; returns the firmware files
    this host lacks."""
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
    return missing


def includes(cfg: Config) -> list[tuple[str, str]]:
    """--include SRC DST pairs, and the configured rescue shell as /bin/sh (or busybox)."""
    pairs = list(cfg.settings.include)
    shell = cfg.settings.rescue_shell
    if shell:
        pairs.append((shell, "/bin/busybox" if os.path.basename(shell) == "busybox"
                      else "/bin/sh"))
    return pairs


def check_includes(cfg: Config) -> None:
    """Each SRC is a regular file (a FIFO would block the build, /dev/zero never end)."""
    for src, dest in includes(cfg):
        try:
            hostfile.stat_regular(src)
        except FileNotFoundError as err:
            raise BuildError(f"--include {src} {dest}: expected an existing file, found "
                             "none") from err
        except hostfile.HostFileError as err:
            raise BuildError(f"--include {src} {dest}: {err}") from err
        except OSError as err:
            raise BuildError(f"--include {src} {dest}: expected a readable file, found: "
                             f"{err.strerror}") from err


def archive_paths(data: bytes) -> dict[str, list[str]]:
    """Image path -> [type letter, part] of an archive the build made (early microcode)."""
    return {"/" + entry.name: [entry.kind, "microcode"] for entry, _end in cpio.read(data)
            if entry.name != cpio.TRAILER} if data else {}


def add_includes(img: image.Image, cfg: Config, tools: Tools,
                 elsewhere: dict[str, list[str]]) -> None:
    """The includes, last: each DST must be a path nothing else in the image has (the
    runtime segment and early microcode: ELSEWHERE; every step before: IMG). A directory
    they share as a parent is fine."""
    for src, dest in includes(cfg):
        path = img.resolve(dest)
        if path == "/":
            raise BuildError(f"--include {src} {dest}: expected a file's path, found /")
        taken = {p: [e.kind, img.parts[p]] for p, e in img.entries.items()} | elsewhere
        clash = [p for p in _parents(path) if p in taken and taken[p][0] != "d"]
        if path in taken or clash:
            at = clash[0] if clash else path
            raise BuildError(f"--include {src} {dest}: expected a path the image does not "
                             f"have, found {at}{'' if at == path else ' (a parent)'}, "
                             f"{_KIND_NAMES.get(taken[at][0], 'a node')} of its "
                             f"{taken[at][1]} part")
        add_tool(img, tools, src, dest, "included")


_KIND_NAMES = {"d": "a directory", "-": "a file", "l": "a symlink"}


def _parents(path: str) -> list[str]:
    parents = []
    while (path := os.path.dirname(path)) != "/":
        parents.append(path)
    return parents


def host_fsck(fstype: str) -> str | None:
    """This host's fsck.FSTYPE, when it has one."""
    return next((p for p in (f"/sbin/fsck.{fstype}", f"/usr/sbin/fsck.{fstype}")
                 if os.path.exists(p)), None)


def add_fsck(img: image.Image, cfg: Config, tools: Tools) -> None:
    """fsck.TYPE for each --fsck type, and for the root filesystem when host-only."""
    fsck_types = list(cfg.settings.fsck)
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
        add_tool(img, tools, tool, tool, "fsck")


# The rules that name block devices and set the properties root= matches against. Module
# loading (80-drivers.rules) stays with the init and its build-time index.
UDEV_RULES = ("50-udev-default.rules", "60-block.rules", "60-persistent-storage.rules",
              "64-btrfs.rules")
UDEV_HELPERS = ("/lib/udev/ata_id", "/lib/udev/scsi_id")  # run by 60-persistent-storage


def add_udev(img: image.Image, tools: Tools, mode: str) -> None:
    if mode == "none" or (mode == "auto" and not os.path.exists(layout.UDEVD)):
        return
    for path in (layout.UDEVD, layout.UDEVADM):
        if not os.path.exists(path):
            raise BuildError(f"--udev {mode}: expected {path} on this host (Debian's udev "
                             "package), found none")
        add_tool(img, tools, path, path, "udev")
    for helper in UDEV_HELPERS:
        if os.path.exists(helper):
            add_tool(img, tools, helper, helper, "udev")
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


def add_defaults(img: image.Image, cfg: Config) -> None:
    """The default kernel options from the configuration (the real command line wins)."""
    if cfg.settings.cmdline:
        img.add_bytes(layout.DEFAULT_CMDLINE, cfg.settings.cmdline.encode() + b"\n",
                      part="skeleton")


def assemble(early: bytes, runtime: cache.Segment, cached: bool, img: image.Image, raw: bytes,
             kernel_part: bytes, modules: list[str], missing: list[str]) -> Result:
    """The image: early microcode, the runtime segment, the kernel part; sizes by part."""
    parts = dict(runtime.parts)
    for part, size in img.size_by_part().items():
        parts[part] = parts.get(part, 0) + size
    if early:
        parts["microcode"] = len(early)
    return Result(early + runtime.data + kernel_part, runtime.unpacked + len(raw) + len(early),
                  dict(sorted(parts.items())), runtime.entries + len(img.written()), modules,
                  missing, cached)
