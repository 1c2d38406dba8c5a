"""The build, top to bottom: the checks of what was asked for (kernel version, module
directory, includes, kernel config, module selection and vermagic), the runtime segment,
modules, fsck, udev, defaults, includes (last: they may not replace anything the builder
wrote), archive, compress. Each step is a plain function below ``build``."""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field

from pyinit import execinit, layout, libfind, modindex
from pyinit.builder import (
    appliance,
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
    stacks,
    strip,
)
from pyinit.modindex import INDEX_NAME
from pyinit.storage import STACKS, stack_module

# rootfs-skel/ beside the pyinit package in a checkout; the Debian package installs it here.
SKELETON = next((d for d in (os.path.join(pyruntime.PYINIT_SRC, "rootfs-skel"),
                             "/usr/share/pyinit/rootfs-skel") if os.path.isdir(d)),
                os.path.join(pyruntime.PYINIT_SRC, "rootfs-skel"))
# The runtime part is compressed once and cached, so it gets zstd's slowest, smallest level
# with long-distance matching: for today's 11.8 MB part 3,632,228 bytes against 3,633,876
# at level 19 and 4.6 MB at level 9; the window is the part's own size (the frame carries
# it), which the kernel's unzstd takes; unpacking costs the same.
RUNTIME_ZSTD_LEVEL = 22

# /shutdown in images with dm or md stacks: systemd-shutdown runs it from /run/initramfs.
SHUTDOWN_SCRIPT = f"""#!/usr/bin/python3 -IS
# pyinit's shutdown program (pyinit/shutdown.py): takes down the root's storage stack.
import sys

sys.path.insert(0, "{layout.SITE}")
from pyinit import shutdown

shutdown.main(sys.argv)
"""


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
    running_kernel: bool = False  # KVER is the running kernel and no --kmoddir was given
    listed: bool = False  # only the drivers named (not host-only, not the generic set)
    mode_reason: str = ""  # why this mode, for the summary

    @property
    def mode(self) -> str:
        return "host-only" if self.hostonly else "listed" if self.listed else "generic"


@dataclass
class Result:
    data: bytes
    unpacked: int
    parts: dict[str, int]
    entries: int
    modules: list[str] = field(default_factory=list)
    firmware_missing: list[str] = field(default_factory=list)
    cached_runtime: bool = False
    storage: stacks.Plan | None = None
    udev: Udev | None = None
    appliance: appliance.Appliance | None = None
    notes: list[str] = field(default_factory=list)


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
    tree = module_tree(cfg)
    storage = plan_storage(cfg, tree)
    app = decide_appliance(cfg)
    udev = decide_udev(cfg, storage, app)
    modules = select_modules(cfg, tree, storage, app) if tree is not None else []
    if tree is not None:
        check_vermagic(cfg, tree, modules)
    tools = Tools()
    runtime, cached = runtime_segment(cfg, tools, storage, app, udev)
    img = kernel_image(runtime)
    # A generic image carries every driver and loads few: as the kernel ships them, where
    # it can decompress them itself.
    keep_compressed = cfg.mode == "generic" and kernel_option(kconfig,
                                                              "CONFIG_MODULE_DECOMPRESS")
    missing = add_modules(img, cfg, tree, modules, keep_compressed) if tree else []
    add_storage(img, storage, tools, runtime.paths)
    if not app.on:
        add_fsck(img, cfg, tools)
    add_udev(img, tools, udev, storage, cfg.settings.udev_rules)
    add_defaults(img, cfg, storage, app)
    early = firmware.microcode_archive() if cfg.settings.early_microcode else b""
    add_includes(img, cfg, tools, {**runtime.paths, **archive_paths(early)})
    raw = img.archive(cfg.mtime)
    kernel_part = compress.compress(raw, cfg.settings.compress, kernel_part_level(cfg, raw))
    result = assemble(early, runtime, cached, img, raw, kernel_part, modules, missing)
    result.storage, result.udev, result.appliance = storage, udev, app
    if tree is not None:
        result.notes += driver_notes(cfg, tree, modules)
    if tree is None:
        result.notes.append(f"no {cfg.kmoddir}: the running kernel has no modules, so the "
                            "image carries none (its drivers must be built in)")
    return result


# What uname -r prints; the version names a directory in the image (lib/modules/KVER).
KVER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~-]*")


def check_target(cfg: Config) -> None:
    """The kernel version is safe as a path component and its modules directory exists
    (the running kernel may have none: then everything it needs is built in)."""
    if not KVER.fullmatch(cfg.kver):
        raise BuildError(f"--kver {cfg.kver!r}: expected a kernel release as uname -r prints "
                         "it (letters, digits and ._+~-, no '/')")
    asked = cfg.settings.add_drivers or cfg.settings.storage
    if not os.path.isdir(cfg.kmoddir) and not (cfg.running_kernel and not asked):
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


# A kernel part this small (an fsck, a few modules) gets zstd's slow, small level too: 10%
# smaller for under 0.5 s; a large one (a generic image's tools) keeps level 9.
SMALL_KERNEL_PART = 2 << 20


def kernel_part_level(cfg: Config, raw: bytes) -> int | None:
    level = cfg.settings.compress_level
    if level is None and cfg.settings.compress == "zstd" and len(raw) <= SMALL_KERNEL_PART:
        return RUNTIME_ZSTD_LEVEL
    return level


def module_tree(cfg: Config) -> kmodules.ModuleTree | None:
    """The target kernel's modules, or None for a running kernel that has no directory."""
    if not os.path.isdir(cfg.kmoddir):
        return None
    return kmodules.ModuleTree.read(cfg.kmoddir)


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


def runtime_segment(cfg: Config, tools: Tools, storage: stacks.Plan,
                    app: appliance.Appliance, udev: Udev) -> tuple[cache.Segment, bool]:
    """The Python runtime, pyinit (with the storage stacks' and the appliance's modules,
    and pyudev where udevd runs) and the skeleton as one compressed archive (cached)."""
    python = pyruntime.resolve_python(cfg.settings.python)
    modules = list(dict.fromkeys(pyruntime.INIT_MODULES
                                 + [m for n in storage.needs for m in n.python]
                                 + list(appliance.PYTHON if app.on else ())
                                 # the init listens through udevd only when it starts
                                 # it first ("always"); "storage" starts it for dm/md later
                                 + (pyruntime.UDEV_MODULES if udev.mode == "always" else [])))
    builder_sources = sorted(
        os.path.join(d, n) for d in (os.path.dirname(__file__), os.path.dirname(
            os.path.dirname(__file__))) for n in os.listdir(d) if n.endswith((".py", ".so")))
    skeleton = sorted(os.path.join(root, name) for root, dirs, files in os.walk(SKELETON)
                      for name in dirs + files)
    params: dict[str, object] = {
        "python": python, "compress": cfg.settings.compress,
        "level": cfg.settings.compress_level, "mtime": cfg.mtime,
        "modules": modules, "excludes": pyruntime.EXCLUDES,
        "builder": [cache.stamp(p) for p in builder_sources],
        # a file added to rootfs-skel/, or one changed (its /init), is a new key
        "skeleton": [cache.stamp(p) for p in skeleton],
    }
    if cfg.use_cache:
        cached = cache.load(params)
        if cached is not None:
            return cached, True
    img = image.Image()
    runtime = pyruntime.collect(python, modules[len(pyruntime.INIT_MODULES):])
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
    segment = cache.Segment(compress.compress(raw, cfg.settings.compress, level,
                                              long_distance=level == RUNTIME_ZSTD_LEVEL),
                            len(raw), img.size_by_part(), img.symlinks(), len(img.entries),
                            img.kinds())
    inputs = [python, *closure, *extensions, *runtime.sources, *builder_sources,
              *(p for p in skeleton if not os.path.isdir(p))]
    if cfg.use_cache:
        cache.store(params, inputs, segment, absent=pyruntime.shadow_candidates(runtime))
    return segment, False


def kernel_image(runtime: cache.Segment) -> image.Image:
    """The kernel-specific part, resolving paths through the runtime segment's symlinks and
    leaving out the files it already carries (libc for fsck, udevd and the storage tools)."""
    img = image.Image()
    for path, target in sorted(runtime.symlinks.items()):
        img.seed_symlink(path, target)
    img.provided.update(p for p, (kind, _part) in runtime.paths.items() if kind == "-")
    return img


def decide_appliance(cfg: Config) -> appliance.Appliance:
    settings = cfg.settings
    try:
        app = appliance.decide(settings.appliance, cfg.hostonly)
        appliance.check(app, settings.udev, settings.fsck, settings.udev_rules)
    except (appliance.ApplianceError, OSError) as err:
        raise BuildError(str(err)) from err
    return app


def select_modules(cfg: Config, tree: kmodules.ModuleTree, storage: stacks.Plan,
                   app: appliance.Appliance) -> list[str]:
    wanted = list(cfg.settings.add_drivers)
    if app.on:
        wanted += appliance.modules(tree)
    for needs in storage.needs:
        for name in needs.modules:
            if not tree.resolve(name):
                raise BuildError(f"storage {needs.python[0].rsplit('.', 1)[1]}: expected the "
                                 f"kernel module {name} in {cfg.kmoddir}, found none")
        optional = [m for m in needs.optional_modules if tree.resolve(m)]
        if cfg.hostonly and needs.optional_in_use:  # what this host's stack uses: loaded now
            in_use = modindex.loaded_modules()
            optional = [m for m in optional if m in in_use]
        wanted += [*needs.modules, *optional]
    if cfg.hostonly:
        try:
            wanted += hostonly.hostonly_modules(tree)
        except (hostonly.HostOnlyError, OSError) as err:
            raise BuildError(f"--hostonly: {err}") from err
    elif not cfg.listed:
        wanted += hostonly.generic_modules(tree)
    omit = {m.replace("-", "_") for m in cfg.settings.omit_drivers}
    modules = [m for m in tree.closure(wanted) if m not in omit]
    for name in modules:
        lost = [d for d in tree.deps.get(name, []) if d in omit]
        if lost:
            raise BuildError(f"--omit-drivers {','.join(lost)}: needed by {name}, which the "
                             "image carries; omit it too or keep them")
    return modules


# The buses a virtio device sits on: a virtio driver finds no device without one of them.
VIRTIO_TRANSPORTS = ("virtio_pci", "virtio_mmio")


def driver_notes(cfg: Config, tree: kmodules.ModuleTree, modules: list[str]) -> list[str]:
    """What the summary says of the drivers named: those the kernel has built in (nothing to
    carry), and, in the listed mode, a virtio driver without a virtio transport."""
    named = [(name, tree.resolve(name)) for name in cfg.settings.add_drivers]
    builtin = [name for name, found in named if found and all(m in tree.builtin for m in found)]
    notes = [f"built into kernel {cfg.kver}, nothing to carry: {', '.join(builtin)}"] \
        if builtin else []
    virtio = sorted({m for _name, found in named for m in found if m.startswith("virtio_")
                     and m not in VIRTIO_TRANSPORTS})
    transports = [t for t in VIRTIO_TRANSPORTS if t in modules or t in tree.builtin]
    if cfg.listed and virtio and not transports:
        notes.append(f"{', '.join(virtio)} without a virtio transport: a virtio disk on PCI "
                     "(qemu's default) is not found; add virtio_pci (or virtio_mmio)")
    return notes


def add_modules(img: image.Image, cfg: Config, tree: kmodules.ModuleTree,
                modules: list[str], keep_compressed: bool) -> list[str]:
    """The selected MODULES, their firmware and the index; returns the firmware files this
    host lacks. Compressed modules are stored decompressed unless KEEP_COMPRESSED: the
    image's own compression packs them nearly as small (the appliance image: 3.91 MB
    against 3.86 with its nine modules as .ko.xz), and the kernel loads them faster (the
    appliance's initrd phase 0.13 s shorter under TCG, 7 of 7 interleaved boots,
    bench/boot.py --ab). A generic image keeps them compressed where the kernel can
    decompress them (CONFIG_MODULE_DECOMPRESS): it carries every driver, loads few, and
    decompressed its unpacked size went from 33 to 55 MB."""
    dest_base = f"{layout.MODULES_DIR}/{cfg.kver}"
    wanted_firmware: list[str] = []
    for name in modules:
        rel = tree.paths[name]
        src = os.path.join(cfg.kmoddir, rel)
        if rel.endswith((".xz", ".zst", ".gz")) and not keep_compressed:
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


@dataclass
class Udev:
    """Whether the image carries systemd-udevd, when the init starts it, and why."""

    mode: str | None  # pyinit.layout.UDEV_MODES, or None: not carried
    reason: str


def decide_udev(cfg: Config, storage: stacks.Plan, app: appliance.Appliance) -> Udev:
    """--udev auto carries udevd only when the image needs it: rules added in the
    configuration, or dm/md devices that a systemd root expects udev to have seen."""
    asked = cfg.settings.udev
    have = os.path.exists(layout.UDEVD) and os.path.exists(layout.UDEVADM)
    if asked == "none":
        return Udev(None, "--udev none")
    if app.on:
        return Udev(None, f"an appliance image ({app.reason})")
    if asked == "systemd":
        if not have:
            raise BuildError(f"--udev systemd: expected {layout.UDEVD} and {layout.UDEVADM} "
                             "on this host (Debian's udev package), found none")
        return Udev("always", "asked for (--udev systemd)")
    if cfg.settings.udev_rules:
        return Udev("always" if have else None, "udev rules added in the configuration"
                    + ("" if have else ", but this host has no systemd-udevd"))
    if not storage.dm_or_md:
        return Udev(None, "no dm or md stack needs it")
    if cfg.hostonly and not execinit.is_systemd("/sbin/init"):
        return Udev(None, "dm/md devices, but this host's init is not systemd")
    if not have:
        return Udev(None, "dm/md devices for a systemd root, but this host has no "
                    "systemd-udevd: the root's udevd will not see them as ready")
    return Udev("storage", "dm/md devices for a systemd root: their udev database must "
                "survive into it (started only when a stack activates)")


def add_udev(img: image.Image, tools: Tools, udev: Udev, storage: stacks.Plan,
             extra_rules: list[str]) -> None:
    if udev.mode is None:
        return
    for path in (layout.UDEVD, layout.UDEVADM):
        add_tool(img, tools, path, path, "udev")
    rules = [*stacks.udev_rules(storage)]
    if udev.mode == "always":
        rules = [*UDEV_RULES, *rules]
        for helper in UDEV_HELPERS:
            if os.path.exists(helper):
                add_tool(img, tools, helper, helper, "udev")
    groups: set[str] = set()
    paths = [os.path.join(layout.UDEV_RULES_DIR, rule) for rule in dict.fromkeys(rules)]
    # The dm and md stacks' rules and the configured ones must be there: without
    # 95-dm-notify.rules cryptsetup and lvm wait for ever for udev's answer.
    required = {os.path.join(layout.UDEV_RULES_DIR, rule) for rule in stacks.udev_rules(
        storage) if not rule.startswith("64-btrfs")} | set(extra_rules)
    for path in [*paths, *extra_rules]:
        if not os.path.exists(path) and path in required:
            raise BuildError(f"udev: expected the rules file {path} on this host (the "
                             "package of the stack that needs it), found none")
        if os.path.exists(path):
            img.add_host_file(path, part="udev")
            with open(path, encoding="utf-8", errors="replace") as fh:
                text = fh.read()
            groups.update(re.findall(r'GROUP="([^"]+)"', text))
            if "dmsetup" in text and os.path.exists(stacks.DMSETUP):
                add_tool(img, tools, stacks.DMSETUP, stacks.DMSETUP, "udev")
    if any(s in storage.stacks for s in ("luks", "lvm")):
        img.add_bytes(os.path.join(layout.UDEV_RULES_DIR, stacks.DM_PERSIST_RULE),
                      stacks.DM_PERSIST_TEXT.encode(), part="udev")
    # The rules name groups (disk, cdrom, ...): udevd needs them resolvable.
    img.add_bytes("/etc/group", group_file(groups).encode(), part="udev")
    img.add_bytes("/etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", part="udev")
    if os.path.exists("/etc/udev/udev.conf"):
        img.add_host_file("/etc/udev/udev.conf", part="udev")
    img.add_bytes(layout.UDEV_MODE_FILE, udev.mode.encode() + b"\n", part="udev")


def plan_storage(cfg: Config, tree: kmodules.ModuleTree | None) -> stacks.Plan:
    """The storage stacks the image carries: asked for, under the host's root (host-only),
    or, for a generic image, every one the kernel supports."""
    settings = cfg.settings
    generic, left_out = [], []
    if cfg.mode == "generic" and tree is not None:
        for name in STACKS:  # those the kernel and this host can carry
            needs = stack_module(name).NEEDS
            missing = [m for m in needs.modules if not tree.resolve(m)]
            missing += [t for t in needs.tools if not os.path.exists(t)]
            if missing:
                left_out.append(f"{name} left out: no {', '.join(missing)}")
            else:
                generic.append(name)
    host = None
    cmdline: list[str] = []
    if cfg.hostonly:
        try:
            devnum, fstype, _source = hostonly.root_mount()
            host, cmdline = stacks.host_stack(devnum, fstype)
        except (hostonly.HostOnlyError, OSError) as err:
            raise BuildError(f"--hostonly: {err}") from err
    try:
        plan = stacks.plan(settings.storage, cfg.hostonly, generic, settings.luks_keys,
                           settings.crypttab, host=host)
    except stacks.StackError as err:
        raise BuildError(str(err)) from err
    plan.cmdline += cmdline
    plan.reasons += left_out
    return plan


def add_storage(img: image.Image, storage: stacks.Plan, tools: Tools,
                elsewhere: dict[str, list[str]]) -> None:
    """Each carried stack's tools (with their libraries, and those they dlopen), its
    directories and its files (none of which may take a path the runtime part has:
    ELSEWHERE)."""
    for path in storage.files:
        resolved = img.resolve(path)
        if resolved in elsewhere or path in elsewhere:
            raise BuildError(f"storage: {path} (a key file or configuration) would replace "
                             f"the image's own {resolved}: choose another path")
    for tool in storage.tools:
        if not os.path.exists(tool):
            package = stacks.PACKAGES.get(os.path.basename(tool), "")
            raise BuildError(f"storage: expected {tool} on this host"
                             + (f" (Debian's {package} package)" if package else "")
                             + ", found none")
        add_tool(img, tools, tool, tool, "storage")
    for soname in dict.fromkeys(lib for n in storage.needs for lib in n.libraries):
        library = next((os.path.join(d, soname) for d in tools.resolver.system_dirs
                        if os.path.exists(os.path.join(d, soname))), None)
        if library is None:
            raise BuildError(f"storage: expected {soname} in one of "
                             f"{', '.join(tools.resolver.system_dirs)}, found none")
        add_elf_closure(img, tools, [library], "storage", skip=set())
    for directory in dict.fromkeys(d for n in storage.needs for d in n.dirs):
        img.add_dir(directory, 0o700, part="storage")
    for path, (data, mode) in sorted(storage.files.items()):
        img.add_bytes(path, data, mode, part="storage")
    if storage.dm_or_md:  # systemd-shutdown runs it from /run/initramfs to take them down
        img.add_bytes(layout.SHUTDOWN, SHUTDOWN_SCRIPT.encode(), 0o755, part="storage")


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


def add_defaults(img: image.Image, cfg: Config, storage: stacks.Plan,
                 app: appliance.Appliance) -> None:
    """The default kernel options: an appliance's, the configuration's, then what a
    host-only image knows of its storage (rd.lvm.lv=, resume=); the real command line
    wins over all of them."""
    first = appliance.CMDLINE if app.on else ""
    words = " ".join(w for w in (first, cfg.settings.cmdline, *storage.cmdline) if w)
    if words:
        img.add_bytes(layout.DEFAULT_CMDLINE, words.encode() + b"\n", part="skeleton")


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
