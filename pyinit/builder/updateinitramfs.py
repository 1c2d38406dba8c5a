"""``update-initramfs`` as pyinit's Debian package provides it: initramfs-tools' options,
with initramfs-tools' meanings, over ``pyinit-mkinitramfs --update`` and ``--remove``.

- ``-u`` updates images that exist: with no ``-k``, the newest installed kernel that has one
  (initramfs-tools' set_highest_version, by Debian version order, never ``uname -r``);
  ``-k all``, every installed kernel that has one; ``-k KVER``, that one. An image that does
  not exist is named and left alone, with status 0, so that a package's ``update-initramfs
  -u`` in a chroot or after the running kernel was removed does not fail the package.
- ``-c -k KVER|all`` creates (builds whether or not an image exists).
- ``-d -k KVER|all`` deletes.
- ``-b DIR`` another boot directory; ``-v``, ``-t``, ``-s`` are accepted.
- initramfs-tools' own kernel hook, left behind after pyinit replaced it, calls
  ``update-initramfs -c -k KVER`` in the same kernel install as pyinit's hook: that call
  does nothing, so the image is built once.
- Under dpkg, a bare ``update-initramfs -u`` from another package's maintainer script
  activates the ``update-initramfs`` trigger instead ("deferring update (trigger
  activated)"), as initramfs-tools does: pyinit's own postinst then updates once, at the end.
"""

from __future__ import annotations

import getopt
import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from functools import cmp_to_key

from pyinit.builder import distro

DIGITS = "0123456789"
PRERELEASE = re.compile(r"-(rc|trunk)")
USAGE = "usage: update-initramfs -c|-u|-d [-k KVER|all] [-b DIR] [-v]"
PACKAGE = "pyinit"  # the package whose trigger this is: its own postinst never defers


def _order(char: str) -> int:
    """dpkg's order of one character of a version part: ~ first, then the end, letters,
    then everything else."""
    if char == "~":
        return -1
    if char in DIGITS:
        return 0
    if char.isascii() and char.isalpha():
        return ord(char)
    return ord(char) + 256


def _compare_part(a: str, b: str) -> int:
    """dpkg's verrevcmp: non-digit runs by _order, digit runs as numbers."""
    i = j = 0
    while i < len(a) or j < len(b):
        first_diff = 0
        while (i < len(a) and a[i] not in DIGITS) or (j < len(b) and b[j] not in DIGITS):
            ac = _order(a[i]) if i < len(a) else 0
            bc = _order(b[j]) if j < len(b) else 0
            if ac != bc:
                return ac - bc
            i, j = i + 1, j + 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        while i < len(a) and a[i] in DIGITS and j < len(b) and b[j] in DIGITS:
            if not first_diff:
                first_diff = ord(a[i]) - ord(b[j])
            i, j = i + 1, j + 1
        if i < len(a) and a[i] in DIGITS:
            return 1
        if j < len(b) and b[j] in DIGITS:
            return -1
        if first_diff:
            return first_diff
    return 0


def _split(version: str) -> tuple[int, str, str]:
    epoch, sep, rest = version.partition(":")
    if not sep or not epoch or any(c not in DIGITS for c in epoch):
        epoch, rest = "0", version
    upstream, sep, revision = rest.rpartition("-")
    if not sep:
        upstream, revision = rest, ""
    return int(epoch), upstream, revision


def compare_versions(a: str, b: str) -> int:
    """<0, 0, >0 as dpkg --compare-versions orders A and B."""
    ea, ua, ra = _split(a)
    eb, ub, rb = _split(b)
    if ea != eb:
        return ea - eb
    return _compare_part(ua, ub) or _compare_part(ra, rb)


def compare_kernels(a: str, b: str) -> int:
    """As linux-version sort (initramfs-tools' set_highest_version) orders kernel releases:
    dpkg's order, with -rc and -trunk before the release they lead to."""
    return compare_versions(PRERELEASE.sub(r"~\1", a), PRERELEASE.sub(r"~\1", b))


def newest(versions: Sequence[str]) -> str | None:
    return max(versions, key=cmp_to_key(compare_kernels), default=None)


def _say(text: str) -> None:
    print(f"update-initramfs: {text}", flush=True)


def deferred(argv: Sequence[str], env: Mapping[str, str],
             trigger: Callable[[], bool]) -> bool:
    """Whether this call is a bare -u from another package's maintainer script, handed to
    the update-initramfs trigger (True once the trigger was activated)."""
    package = env.get("DPKG_MAINTSCRIPT_PACKAGE", "")
    if list(argv) != ["-u"] or not package or package == PACKAGE:
        return False
    if not trigger():
        return False
    _say("deferring update (trigger activated)")
    return True


def activate_trigger() -> bool:
    try:
        done = subprocess.run(["dpkg-trigger", "--no-await", "update-initramfs"],
                              capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def plan(mode: str, version: str | None, boot: str, modules: str) -> list[tuple[str, str]]:
    """The (option, KVER) calls of pyinit-mkinitramfs for MODE (update, create, delete);
    what is left alone is said on stdout. Raises distro.DistroError for bad input."""
    def has_image(kver: str) -> bool:
        return os.path.isfile(distro.image_path(kver, boot))

    if mode == "update":
        if version in (None, "all"):
            with_images = [k for k in distro.installed_kernels(boot, modules) if has_image(k)]
            chosen = with_images if version == "all" else [newest(with_images) or ""][:1]
            chosen = [k for k in chosen if k]
            if not chosen:
                _say(f"no initramfs in {boot} to update (expected "
                     f"{distro.image_path('KVER', boot)} for an installed kernel): nothing "
                     "to do")
            return [("--update", k) for k in chosen]
        if not has_image(version):
            _say(f"{distro.image_path(version, boot)} does not exist: nothing to update "
                 f"(update-initramfs -c -k {version} creates it)")
            return []
        return [("--update", version)]
    if version is None:
        raise distro.DistroError(f"-{mode[0]}: expected -k KVER or -k all, found no -k")
    if mode == "create":
        kernels = distro.installed_kernels(boot, modules) if version == "all" else [version]
        return [("--update", k) for k in kernels]
    if version == "all":  # the images of installed kernels, not every initrd.img-* file
        return [("--remove", k) for k in distro.installed_kernels(boot, modules)
                if has_image(k)]
    return [("--remove", version)]


def left_over_hook(mode: str, version: str | None, env: Mapping[str, str], hook: str) -> bool:
    """Whether this is initramfs-tools' kernel hook, left behind when pyinit replaced it
    (``update-initramfs -c -k KVER`` from /etc/kernel/postinst.d, DEB_MAINT_PARAMS set),
    while pyinit's own hook in the same run-parts builds that image: one build, not two."""
    return (mode == "create" and version not in (None, "all")
            and bool(env.get("DEB_MAINT_PARAMS")) and os.access(hook, os.X_OK))


def main(argv: Sequence[str] | None = None, boot: str = distro.BOOT,
         modules: str = distro.MODULES, env: Mapping[str, str] | None = None,
         hook: str = distro.POSTINST,
         build: Callable[[list[str]], int] | None = None,
         trigger: Callable[[], bool] = activate_trigger) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    env = os.environ if env is None else env
    if deferred(argv, env, trigger):
        return 0
    try:
        opts, rest = getopt.getopt(argv, "cudk:b:vtsh")
    except getopt.GetoptError as err:
        print(f"update-initramfs: error: {err}; {USAGE}", file=sys.stderr)
        return 2
    modes = {"-c": "create", "-u": "update", "-d": "delete"}
    mode = version = None
    for opt, value in opts:
        if opt in modes:
            mode = modes[opt]
        elif opt == "-k":
            version = value
        elif opt == "-b":
            boot = value
        elif opt == "-h":
            print(USAGE)
            return 0
    if rest or mode is None:
        found = f"found {' '.join(rest)}" if rest else "found none"
        print(f"update-initramfs: error: expected -c, -u or -d, {found}; {USAGE}",
              file=sys.stderr)
        return 2
    if left_over_hook(mode, version, env, hook):
        _say(f"{hook} makes the image of {version} in this kernel install: nothing to do")
        return 0
    try:
        calls = plan(mode, version, boot, modules)
    except (distro.DistroError, OSError) as err:
        print(f"update-initramfs: error: {err}", file=sys.stderr)
        return 1
    if build is None:
        from pyinit.builder import cli

        build = cli.main
    for option, kver in calls:
        status = build([option, kver, "--boot-dir", boot])
        if status != 0:
            return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
