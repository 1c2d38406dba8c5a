"""Being the distribution's initramfs: the image rebuilt when a kernel is installed, gone
when it is removed.

- ``--update KVER|all`` writes /boot/initrd.img-KVER (as update-initramfs -u does) for one
  kernel or for every kernel with a /boot/vmlinuz-KVER, then runs
  /etc/initramfs/post-update.d/ (run-parts: ``KVER IMAGE``), which boot loaders hook into.
  The previous image stays until the new one is complete (written beside it, renamed).
  Before anything is built, a kernel without its vmlinuz or its modules, and a boot
  directory that cannot be written (read-only), are refused in one line; ``all`` names on
  stderr each kernel (or modules directory) it skips because the other half is missing.
- ``--remove KVER`` deletes the image.
- ``--install-hooks`` writes the hooks that call them: Debian's
  /etc/kernel/postinst.d/pyinit and postrm.d/pyinit (``KVER /boot/vmlinuz-KVER``,
  ``$INITRD``, ``$DEB_MAINT_PARAMS``), and the kernel-install plugin 50-pyinit.install
  (``add KVER ENTRY_DIR KERNEL_IMAGE [INITRD...]``, ``$KERNEL_INSTALL_*``).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable

from pyinit import layout
from pyinit.builder import output

BOOT = "/boot"
MODULES = layout.MODULES_DIR
POST_UPDATE = "/etc/initramfs/post-update.d"
POSTINST = "/etc/kernel/postinst.d/pyinit"
POSTRM = "/etc/kernel/postrm.d/pyinit"
KERNEL_INSTALL = "/etc/kernel/install.d/50-pyinit.install"
HOOK_TIMEOUT = 300.0
RUN_PARTS_NAME = re.compile(r"[A-Za-z0-9_-]+")  # the names run-parts runs (no dots)

# Debian's kernel hooks (postinst.d and postrm.d): one text, two actions.
DEBIAN_HOOK_TEXT = """#!/bin/sh
# pyinit: {purpose} (written by {{tool}}).
# Called as: pyinit KVER /boot/vmlinuz-KVER, by the kernel package's maintainer script.
{{guard}}
version="$1"
{{no_version}}
[ "$INITRD" = No ] && exit 0
if [ -n "$DEB_MAINT_PARAMS" ]; then
    eval set -- "$DEB_MAINT_PARAMS"
    {wanted} || exit 0
fi
exec {{command}} {action} "$version"
"""
POSTINST_TEXT = DEBIAN_HOOK_TEXT.format(
    purpose="make the initramfs of a kernel Debian just installed",
    wanted='[ "$1" = configure ]', action="--update")
POSTRM_TEXT = DEBIAN_HOOK_TEXT.format(
    purpose="remove the initramfs of a kernel Debian just removed",
    wanted='[ "$1" = remove ] || [ "$1" = purge ]', action="--remove")
KERNEL_INSTALL_TEXT = """#!/bin/sh
# pyinit: kernel-install plugin, makes the initrd in the staging area (written by {tool}).
# Called as: 50-pyinit.install add KVER ENTRY_DIR KERNEL_IMAGE [INITRD...]
{guard}
[ "$1" = add ] || exit 0
[ "$#" -le 4 ] || exit 0  # initrds were given: nothing to generate
generator="${{KERNEL_INSTALL_INITRD_GENERATOR:-pyinit}}"
if [ "$generator" != pyinit ]; then
    [ "$KERNEL_INSTALL_VERBOSE" = 1 ] && \\
      echo "pyinit: initrd generator is $generator, not pyinit: nothing to do"
    exit 0
fi
case "$KERNEL_INSTALL_LAYOUT" in bls|uki) ;; *) exit 0 ;; esac
[ -n "$KERNEL_INSTALL_STAGING_AREA" ] || exit 0
[ "$KERNEL_INSTALL_VERBOSE" = 1 ] && \\
  echo "pyinit: making $KERNEL_INSTALL_STAGING_AREA/initrd for $2"
exec {command} --kver "$2" -o "$KERNEL_INSTALL_STAGING_AREA/initrd" --force
"""
# Every hook's first line: a hook left behind when its package was removed but not purged
# (conffiles stay) does nothing, as initramfs-tools' own hook does, instead of failing
# every later kernel install with status 127.
GUARD_TEXT = "[ -x {program} ] || exit 0  # pyinit was removed: nothing to do"
# The Debian hooks' first check: without KVER, --update "" would be another command.
NO_VERSION_TEXT = """if [ -z "$version" ]; then
    echo "$0: expected the kernel version as the first argument (KVER /boot/vmlinuz-KVER)," \\
      "found none" >&2
    exit 1
fi"""


SHUTDOWN_UNIT = "/usr/lib/systemd/system/pyinit-shutdown.service"
# Like dracut-shutdown.service: nothing at boot; when it is stopped at shutdown (while the
# filesystems are still mounted) the image is unpacked into /run/initramfs, where
# systemd-shutdown finds /shutdown. Only after a boot whose storage stack made dm or md
# devices (the init leaves the marker); a plain root needs none of it.
SHUTDOWN_UNIT_TEXT = """[Unit]
Description=Unpack pyinit's initramfs for the shutdown of a root on LUKS, LVM or RAID
After=local-fs.target boot.mount boot.automount
Wants=local-fs.target
ConditionPathExists={marker}

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/true
ExecStop={command} --prepare-shutdown

[Install]
WantedBy=sysinit.target
"""


class DistroError(ValueError):
    """A kernel, an image or a hook cannot be handled; the message names the path."""


def image_path(kver: str, boot: str = BOOT) -> str:
    return os.path.join(boot, f"initrd.img-{kver}")


def installed_kernels(boot: str = BOOT, modules: str = MODULES,
                      warn: Callable[[str], None] | None = None) -> list[str]:
    """Kernels with both a /boot/vmlinuz-KVER and modules (update-initramfs -k all); a
    kernel with only one of the two is named to WARN and skipped."""
    warn = warn or _warn
    try:
        names = os.listdir(boot)
    except OSError as err:
        raise DistroError(f"{boot}: expected the kernels' directory, found: "
                          f"{err.strerror}") from err
    kernels = {n.removeprefix("vmlinuz-") for n in names if n.startswith("vmlinuz-")}
    try:
        with_modules = {n for n in os.listdir(modules) if os.path.isdir(os.path.join(modules, n))}
    except OSError:
        with_modules = set()
    for kver in sorted(kernels - with_modules):
        warn(f"--update all: skipping {kver}: expected its modules in "
             f"{os.path.join(modules, kver)}, found none")
    for kver in sorted(with_modules - kernels):
        warn(f"--update all: skipping the modules in {os.path.join(modules, kver)}: expected "
             f"their kernel {os.path.join(boot, 'vmlinuz-' + kver)}, found none")
    return sorted(kernels & with_modules)


def _warn(text: str) -> None:
    print(f"{output.PROG}: warning: {text}", file=sys.stderr, flush=True)


def check_kver(option: str, kver: str) -> None:
    """KVER as --update and --remove take it: a name in /boot and /lib/modules."""
    if not kver:
        raise DistroError(f"{option}: expected a kernel version (KVER), found an empty word")
    if "/" in kver or kver in (".", ".."):
        raise DistroError(f"{option} {kver}: expected a kernel version (KVER), found a path")


def targets(which: str, boot: str = BOOT, modules: str = MODULES,
            warn: Callable[[str], None] | None = None) -> list[str]:
    """--update's argument: one kernel (it must be installed) or all of them, into a boot
    directory that can be written (checked before anything is built)."""
    check_kver("--update", which)
    if which == "all":
        kernels = installed_kernels(boot, modules, warn)
        if not kernels:
            raise DistroError(f"--update all: expected kernels in {boot} (vmlinuz-KVER) with "
                              f"modules in {modules}, found none")
    else:
        kernels = [_installed(which, boot, modules)]
    problem = output.unwritable(boot)
    if problem is not None:
        raise DistroError(f"--update {which}: expected a writable {boot}, found {problem}")
    return kernels


def _installed(kver: str, boot: str, modules: str) -> str:
    """KVER, when it has a kernel in BOOT and modules in MODULES."""
    if not os.path.isdir(boot):
        raise DistroError(f"--update {kver}: expected {boot}, found no directory")
    vmlinuz = os.path.join(boot, f"vmlinuz-{kver}")
    if not os.path.isfile(vmlinuz):
        raise DistroError(f"--update {kver}: expected the kernel {vmlinuz}, found none")
    if not os.path.exists(os.path.join(modules, kver)):
        raise DistroError(f"--update {kver}: expected the kernel's modules in "
                          f"{os.path.join(modules, kver)}, found none")
    return kver


def post_update(kver: str, image: str, directory: str = POST_UPDATE,
                say: Callable[[str], None] = print) -> None:
    """run-parts --arg=KVER --arg=IMAGE DIRECTORY, as initramfs-tools and dracut do."""
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return
    for name in names:
        path = os.path.join(directory, name)
        if not RUN_PARTS_NAME.fullmatch(name) or not os.path.isfile(path) \
                or not os.access(path, os.X_OK):
            continue
        try:
            done = subprocess.run([path, kver, image], capture_output=True, text=True,
                                  timeout=HOOK_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise DistroError(f"{path} {kver} {image}: {err}") from err
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise DistroError(f"{path} {kver} {image} exited with status "
                              f"{done.returncode}: {last}")
        say(f"{path}: done")


def remove(kver: str, boot: str = BOOT) -> str | None:
    """Delete the image of KVER; returns its path, or None when there was none."""
    check_kver("--remove", kver)
    path = image_path(kver, boot)
    try:
        os.unlink(path)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise DistroError(f"--remove {kver}: cannot delete {path}: {err.strerror}") from err
    return path


def prepare_shutdown(image: str, extract_to: Callable[[str, str], int],
                     run_dir: str = layout.RUN_DIR) -> str:
    """Unpack IMAGE into RUN_DIR for systemd-shutdown; returns the shutdown program."""
    if not os.path.exists(os.path.join(run_dir, os.path.basename(layout.STORAGE_ACTIVE))):
        raise DistroError(f"--prepare-shutdown: expected {layout.STORAGE_ACTIVE} (written by "
                          "pyinit when it made dm or md devices), found none")
    extract_to(image, run_dir)
    program = os.path.join(run_dir, layout.SHUTDOWN.lstrip("/"))
    if not os.access(program, os.X_OK):
        raise DistroError(f"--prepare-shutdown: {image} has no {layout.SHUTDOWN} (an image "
                          "without dm or md stacks)")
    return program


def command_line() -> str:
    """How the hooks call this builder: its interpreter and its entry point, as now run."""
    entry = os.path.abspath(sys.argv[0])
    if os.path.basename(entry) in ("mkinitramfs.py", output.INSTALLED) and \
            os.access(entry, os.X_OK):
        return shlex.quote(entry)
    return f"{shlex.quote(sys.executable)} -m pyinit.builder.cli"


LOCAL_SHUTDOWN_UNIT = "/etc/systemd/system/pyinit-shutdown.service"


def hooks(tool: str, command: str) -> list[tuple[str, str]]:
    """The kernel hooks' paths and texts, written by TOOL, calling COMMAND (--install-hooks
    and the Debian package write the same ones)."""
    words = shlex.split(command)
    guard = GUARD_TEXT.format(program=shlex.quote(words[0]))
    if words[1:2] == ["-m"]:  # an interpreter and pyinit's module: the module may be gone
        guard += (f"\n{shlex.quote(words[0])} -c 'import {words[2]}' 2>/dev/null || exit 0"
                  "  # nor pyinit's module")
    return [(POSTINST, POSTINST_TEXT.format(tool=tool, command=command, guard=guard,
                                            no_version=NO_VERSION_TEXT)),
            (POSTRM, POSTRM_TEXT.format(tool=tool, command=command, guard=guard,
                                        no_version=NO_VERSION_TEXT)),
            (KERNEL_INSTALL, KERNEL_INSTALL_TEXT.format(tool=tool, command=command,
                                                        guard=guard))]


def install_hooks(root: str = "/", command: str | None = None) -> list[str]:
    """Write the three kernel hooks and the shutdown unit (enabled) under ROOT; returns
    their paths."""
    command = command or command_line()
    written = []
    for path, text, mode in (
            *((path, text, 0o755) for path, text in
              hooks("pyinit-mkinitramfs --install-hooks", command)),
            (LOCAL_SHUTDOWN_UNIT, SHUTDOWN_UNIT_TEXT.format(marker=layout.STORAGE_ACTIVE,
                                                            command=command), 0o644)):
        full = os.path.join(root, path.lstrip("/"))
        try:
            os.makedirs(os.path.dirname(full), exist_ok=True)
            tmp = full + ".pyinit-new"
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.chmod(tmp, mode)
            os.replace(tmp, full)
        except OSError as err:
            raise DistroError(f"--install-hooks: cannot write {full}: {err.strerror}") \
                from err
        written.append(full)
    wants = os.path.join(root, "etc/systemd/system/sysinit.target.wants")
    link = os.path.join(wants, os.path.basename(LOCAL_SHUTDOWN_UNIT))
    try:
        os.makedirs(wants, exist_ok=True)
        if not os.path.lexists(link):
            os.symlink(LOCAL_SHUTDOWN_UNIT, link)
    except OSError as err:
        raise DistroError(f"--install-hooks: cannot enable {link}: {err.strerror}") from err
    return written


def running_in_chroot(mountinfo: str = "/proc/self/mountinfo") -> bool:
    """Whether this process runs in a chroot: its / is not PID 1's, or (where /proc/1/root
    cannot be read, as from another mount namespace) no mount shows at / in its
    mountinfo (a chroot into a directory). sysfs then describes another machine's
    hardware, so a host-only image would be wrong."""
    try:
        mine, init = os.stat("/"), os.stat("/proc/1/root")
        if (mine.st_dev, mine.st_ino) != (init.st_dev, init.st_ino):
            return True
    except OSError:
        pass
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as fh:
            return not any(line.split()[4] == "/" for line in fh if len(line.split()) > 4)
    except OSError:
        return False
