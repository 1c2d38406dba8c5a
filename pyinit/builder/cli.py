"""mkinitramfs.py: build an initramfs image around the pyinit init.

    mkinitramfs.py -o OUTPUT [--kver KVER] [--kmoddir DIR] [--add-drivers "m1 m2"]
                   [--omit-drivers "m"] [--hostonly | --no-hostonly | --listed]
                   [--compress zstd|gzip|xz|lz4|none] [--compress-level N] [--python PATH]
                   [--include SRC DST] [--fsck TYPES] [--udev auto|systemd|none]
                   [--appliance] [--config FILE] [--no-early-microcode] [--no-cache]
                   [--force]
    mkinitramfs.py --list IMAGE
    mkinitramfs.py --extract IMAGE DIR
    mkinitramfs.py --update KVER|all [--boot-test] [--boot-dir DIR]
    mkinitramfs.py --remove KVER [--boot-dir DIR]
    mkinitramfs.py --install-hooks [DESTDIR]
    mkinitramfs.py --boot-test IMAGE [--kernel VMLINUZ] [--root DEV]

This module turns the command line into a Config and every failure into one line on stderr;
the build itself, step by step, is pyinit.builder.pipeline.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from typing import NoReturn, TypeVar

from pyinit import layout
from pyinit.builder import (
    appliance,
    archive,
    boottest,
    compress,
    config,
    cpio,
    distro,
    elfdeps,
    extract,
    hostfile,
    image,
    kmodules,
    missing,
    output,
    pyruntime,
)
from pyinit.builder.pipeline import BuildError, Config, Result, build
from pyinit.modindex import INDEX_NAME

T = TypeVar("T")
PROG = output.PROG


class Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line and exit status 1 like every other bad input
    (not a usage block and exit status 2)."""

    def error(self, message: str) -> NoReturn:
        raise BuildError(f"{message} (see {PROG} --help)")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = Parser(prog=PROG, description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("-o", "--output", help="the image to write")
    parser.add_argument("--kver", help="kernel version (default: the running kernel)")
    parser.add_argument("--kmoddir", help="modules directory (default: /lib/modules/KVER)")
    parser.add_argument("--add-drivers", action="append", default=[], metavar='"M1 M2"',
                        help="modules (names or aliases) to carry, with their dependencies")
    parser.add_argument("--omit-drivers", action="append", default=[], metavar='"M1 M2"',
                        help="modules never to carry")
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--hostonly", dest="mode", action="store_const", const="host-only",
                       help="the modules and storage this host's root needs (default when "
                       "KVER is the running kernel); --add-drivers adds to them")
    modes.add_argument("--no-hostonly", dest="mode", action="store_const", const="generic",
                       help="the generic set for unknown hardware (default for another "
                       "kernel); --add-drivers adds to it")
    modes.add_argument("--listed", dest="mode", action="store_const", const="listed",
                       help="only the --add-drivers modules (the default when they are given "
                       "without --hostonly or --no-hostonly)")
    parser.add_argument("--compress", choices=compress.FORMATS, default=None)
    parser.add_argument("--compress-level", type=int, default=None)
    parser.add_argument("--python", help="the interpreter to ship (default: this one)")
    parser.add_argument("--include", nargs=2, action="append", default=[], metavar=("SRC", "DST"),
                        help="copy a host file into the image (ELF files with their libraries)")
    parser.add_argument("--fsck", action="append", default=[], metavar='"TYPE ..."',
                        help="carry fsck.TYPE (with its libraries) for these filesystem types")
    parser.add_argument("--storage", action="append", default=[], metavar='"luks lvm ..."',
                        help="carry these storage stacks (luks, lvm, mdraid, btrfs)")
    parser.add_argument("--luks-key", action="append", default=[], metavar="FILE[:PATH]",
                        help="carry a LUKS key file (mode 0400; at PATH, else the same path)")
    parser.add_argument("--crypttab", default=None, metavar="FILE",
                        help="read crypttab entries from FILE (default: /etc/crypttab)")
    parser.add_argument("--udev", choices=config.UDEV_MODES, default=None,
                        help="carry systemd-udevd (auto: when this host has it)")
    parser.add_argument("--appliance", action="store_const", const=True, default=None,
                        help="for a read-only squashfs/erofs root under dm-verity with an "
                        "overlay: their modules, no udevd, no fsck, and a failed boot "
                        "reboots (rd.shell=0 rd.emergency=reboot) for the A/B boot counter")
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="a TOML file read after /etc/pyinit/mkinitramfs{.toml,.d/*.toml}")
    parser.add_argument("--no-early-microcode", dest="early_microcode", action="store_false",
                        default=None, help="do not prepend the host's CPU microcode")
    parser.add_argument("--no-cache", dest="cache", action="store_false",
                        help="rebuild the Python runtime part instead of reusing it")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing image; --extract into a non-empty DIR")
    parser.add_argument("--update", metavar="KVER|all",
                        help="rebuild /boot/initrd.img-KVER (update-initramfs -u -k KVER)")
    parser.add_argument("--remove", metavar="KVER", help="delete /boot/initrd.img-KVER")
    parser.add_argument("--boot-dir", default=distro.BOOT, metavar="DIR",
                        help="where --update and --remove find kernels and images")
    parser.add_argument("--install-hooks", nargs="?", const="/", metavar="DESTDIR",
                        help="install the kernel hooks (Debian postinst.d/postrm.d, "
                        "kernel-install) that call --update and --remove")
    parser.add_argument("--boot-test", nargs="?", const="", metavar="IMAGE",
                        help="boot IMAGE in qemu against a snapshot of the root device "
                        "(with --update: the new image, which replaces the old one only "
                        "if it passes)")
    parser.add_argument("--prepare-shutdown", nargs="?", const="", metavar="IMAGE",
                        help="unpack IMAGE (default: /boot/initrd.img-$(uname -r)) into "
                        "/run/initramfs for systemd-shutdown (pyinit-shutdown.service)")
    parser.add_argument("--kernel", metavar="VMLINUZ",
                        help="the kernel for --boot-test (default: /boot/vmlinuz-KVER)")
    parser.add_argument("--root", metavar="DEV",
                        help="the root device for --boot-test (default: this machine's)")
    parser.add_argument("--list", metavar="IMAGE", help="print the contents of an image")
    parser.add_argument("--extract", nargs=2, metavar=("IMAGE", "DIR"),
                        help="unpack an image into a directory")
    return parser.parse_args(argv)


def _words(groups: list[str]) -> list[str]:
    return [w for group in groups for w in group.replace(",", " ").split()]


def config_from(args: argparse.Namespace,
                default_mode: tuple[str, str] | None = None) -> Config:
    if not args.output:
        raise BuildError("expected -o OUTPUT (or --list IMAGE, or --extract IMAGE DIR)")
    settings = config.load(args.config)
    settings.add_drivers += _words(args.add_drivers)
    settings.omit_drivers += _words(args.omit_drivers)
    settings.fsck += _words(args.fsck)
    settings.include += [(s, d) for s, d in args.include]
    settings.storage += _words(args.storage)
    settings.luks_keys += args.luks_key
    for key in ("compress", "compress_level", "python", "udev", "early_microcode", "crypttab",
                "appliance"):
        value = getattr(args, key)
        if value is not None:
            setattr(settings, key, value)
    compress.check_level(settings.compress, settings.compress_level)
    kver = args.kver or os.uname().release
    running = kver == os.uname().release and args.kmoddir is None
    mode, why = config.choose_mode(args.mode, settings, default_mode, kver, running)
    return Config(args.output, kver, args.kmoddir or f"{layout.MODULES_DIR}/{kver}", settings,
                  mode == "host-only", args.force, source_date_epoch(), args.cache,
                  running_kernel=running, listed=mode == "listed", mode_reason=why)


def source_date_epoch() -> int:
    """The archive mtime: $SOURCE_DATE_EPOCH, which must fit newc's 8-hex-digit field."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "0")
    if not re.fullmatch(r"[0-9]+", epoch):
        raise BuildError(f"SOURCE_DATE_EPOCH={epoch[:40]!r}: expected a whole number of "
                         "seconds")
    if len(epoch.lstrip("0")) > len(str(cpio.FIELD_MAX)) or int(epoch) > cpio.FIELD_MAX:
        raise BuildError(f"SOURCE_DATE_EPOCH={epoch[:40]}: expected at most {cpio.FIELD_MAX} "
                         "(newc cpio stores the mtime in 8 hex digits: 2106-02-07)")
    return int(epoch)


def read_image(path: str) -> bytes:
    try:
        data = hostfile.read_regular(path)[1]
    except hostfile.HostFileError as err:
        raise BuildError(f"{path}: expected an image file, found {err.found}") from err
    except OSError as err:
        raise BuildError(f"{path}: expected a readable image, found: {err.strerror}") from err
    if not data.strip(b"\0"):
        found = f"{len(data)} zero bytes" if data else "an empty file"
        raise BuildError(f"{path}: not an image: expected a newc cpio archive (plain or "
                         f"compressed), found {found}")
    return data


def inspect(path: str, action: Callable[[bytes], T]) -> T:
    """ACTION on the image at PATH; a corrupt image's error names the file."""
    data = read_image(path)
    try:
        return action(data)
    except (cpio.CpioError, compress.CompressError) as err:
        raise BuildError(f"{path}: {err}") from err


def summary(cfg: Config, result: Result, seconds: float) -> str:
    lines = [f"{cfg.output}: {len(result.data) / 1e6:.2f} MB {cfg.settings.compress}, "
             f"{result.unpacked / 1e6:.2f} MB unpacked, {result.entries} entries, built in "
             f"{seconds:.2f} s{' (python runtime from cache)' if result.cached_runtime else ''}",
             f"  modules ({cfg.mode}: {cfg.mode_reason}): {len(result.modules)}"
             + (f" ({', '.join(result.modules[:8])}{', ...' if len(result.modules) > 8 else ''})"
                if result.modules else "")]
    for part, size in result.parts.items():
        if size:
            lines.append(f"  {part:<16} {size / 1e6:8.2f} MB")
    if result.firmware_missing:
        lines.append("  firmware not on this host: " + ", ".join(result.firmware_missing))
    if result.storage is not None and result.storage.stacks:
        lines.append(f"  storage: {', '.join(result.storage.stacks)} ("
                     f"{'; '.join(result.storage.reasons)})")
    if result.udev is not None:
        lines.append(f"  udev: {result.udev.mode or 'none'} ({result.udev.reason})")
    if result.appliance is not None and result.appliance.on:
        lines.append(f"  appliance: no fsck, {appliance.CMDLINE} by default "
                     f"({result.appliance.reason})")
    lines += [f"  note: {note}" for note in result.notes]
    return "\n".join(lines)


class Interrupted(BaseException):
    """SIGTERM, SIGHUP or SIGINT: raised where the build is, so every cleanup runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.name = signal.Signals(signum).name


SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


def _interrupt(signum: int, _frame: object) -> None:
    for sig in SIGNALS:  # one is enough: the cleanup it starts is not interrupted again
        signal.signal(sig, signal.SIG_IGN)
    raise Interrupted(signum)


def say(text: str) -> None:
    """Print TEXT; a closed stdout (| head) loses it, not the exit status, and leaves no
    BrokenPipeError for the interpreter to report at exit."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    previous = {sig: signal.signal(sig, _interrupt) for sig in SIGNALS}
    try:
        return run(sys.argv[1:] if argv is None else argv)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run(argv: list[str]) -> int:
    state = ""  # what an interruption leaves behind, for its message
    try:
        args = parse_args(argv)
        if args.list:
            say("\n".join(inspect(args.list, archive.list_lines)))
            return 0
        if args.extract:
            path, directory = args.extract
            count = inspect(path, lambda data: extract.extract(data, directory, args.force))
            say(f"{directory}: {count} entries")
            return 0
        if args.install_hooks is not None:
            for path in distro.install_hooks(args.install_hooks):
                say(f"{path}: written")
            return 0
        if args.remove is not None:
            removed = distro.remove(args.remove, args.boot_dir)
            say(f"{removed}: removed" if removed else
                f"{distro.image_path(args.remove, args.boot_dir)}: there was none")
            return 0
        if args.update is not None:
            modules = os.path.dirname(args.kmoddir.rstrip("/")) if args.kmoddir else \
                distro.MODULES
            for kver in distro.targets(args.update, args.boot_dir, modules):
                state = " (the previous image is unchanged)"
                update(args, kver)
            return 0
        if args.prepare_shutdown is not None:
            image_file = args.prepare_shutdown or distro.image_path(os.uname().release,
                                                                     args.boot_dir)
            program = distro.prepare_shutdown(image_file, lambda path, directory: inspect(
                path, lambda data: extract.extract(data, directory, True)))
            say(f"{program}: ready for systemd-shutdown")
            return 0
        if args.boot_test is not None:
            if not args.boot_test:
                raise BuildError("--boot-test: expected IMAGE (or --update KVER --boot-test)")
            outcome = run_boot_test(args.boot_test, args.kernel, args.root)
            return 0 if outcome.passed else 1
        cfg = config_from(args)
        state = " (no image written)"
        start = time.monotonic()
        result = build(cfg)
        output.write_atomically(cfg.output, result.data, cfg.force)
        state = f" ({cfg.output} was written)"
        say(summary(cfg, result, time.monotonic() - start))
        return 0
    except Interrupted as sig:
        return fail(f"interrupted by {sig.name}{state}")
    except ImportError as err:  # a package imported where it is first needed (zstandard)
        return fail(missing.message(err))
    except (BuildError, image.ImageError, distro.DistroError, boottest.BootTestError,
            cpio.CpioError, compress.CompressError, kmodules.ModulesError, elfdeps.ElfError,
            pyruntime.RuntimeError_,
            config.ConfigError, ValueError, OSError) as err:
        return fail(str(err))


def update(args: argparse.Namespace, kver: str) -> None:
    """--update KVER: the image of an installed kernel, host-only unless configured (or in a
    chroot, whose sysfs is another machine's), written beside the old one and put in place
    when complete (with --boot-test: only if it boots), then post-update.d."""
    path = distro.image_path(kver, args.boot_dir)
    args.output, args.kver, args.force = path, kver, True
    chroot = distro.running_in_chroot()
    cfg = config_from(args, ("generic", "--update in a chroot, whose sysfs is another "
                             "machine's") if chroot else ("host-only", "--update outside a chroot"))
    start = time.monotonic()
    result = build(cfg)
    if args.boot_test is not None:
        # Staged as the builder's temporary files are, so that the next build removes what
        # a SIGKILL during the (long) boot test leaves.
        staged = output.stage(path, result.data, True)
        try:
            outcome = run_boot_test(staged, args.kernel or
                                    os.path.join(args.boot_dir, f"vmlinuz-{kver}"), args.root)
            if not outcome.passed:
                raise BuildError(f"--update {kver}: the new image failed its boot test "
                                 f"({outcome.stopped}); {path} is unchanged")
            output.put_in_place(staged, path, True)
        finally:
            output.discard(staged)
    else:
        output.write_atomically(path, result.data, True)
    say(summary(cfg, result, time.monotonic() - start))
    distro.post_update(kver, path, say=say)


def run_boot_test(image_path: str, kernel: str | None, root: str | None) -> boottest.Outcome:
    """--boot-test: say what happened; the caller turns it into the exit status."""
    data = read_image(image_path)
    kvers = sorted({e.name.split("/")[-2] for _fmt, e in archive.entries(data)
                    if e.name.endswith("/" + INDEX_NAME)})
    kernel = kernel or (os.path.join(distro.BOOT, f"vmlinuz-{kvers[0]}") if kvers else
                        os.path.join(distro.BOOT, f"vmlinuz-{os.uname().release}"))
    device, root_arg, disk_if = boottest.root_device(root)
    outcome = boottest.boot_test(image_path, kernel, device, root_arg, disk_if)
    verdict = "PASS" if outcome.passed else "FAIL"
    seconds = "?" if outcome.initrd_seconds is None else f"{outcome.initrd_seconds:.2f} s"
    say(f"boot test {verdict}: {image_path} with {kernel} against {device} "
        f"({outcome.accel.upper()}{', software emulation' if outcome.accel == 'tcg' else ''});"
        f" initrd phase {seconds}; stopped at: {outcome.stopped}")
    return outcome


def fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":  # python3 -m pyinit.builder.cli, as the hooks may call it
    sys.exit(main())
