"""The two test kernels, from Debian's packages, fetched by package name and cached.

- Debian 12's 6.1 cloud kernel (linux-image-6.1.*-cloud-amd64-unsigned): no nullfs root,
  exercises the MS_MOVE hand-over; its virtio drivers are plain .ko modules.
- Debian unstable's 7.x cloud kernel (linux-binary-7.*, linux-modules-7.*, linux-base-7.*):
  nullfs root, exercises pivot_root; its modules are .ko.xz.

The mirror comes from the machine's own apt sources; unstable is reached with a private apt
state directory, so the system's apt configuration is never touched. Each kernel is cached
as CACHE/NAME/{vmlinuz, lib/modules/KVER (after depmod)}.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass

CACHE = os.environ.get("PYINIT_CACHE", os.path.expanduser("~/.cache/pyinit"))


@dataclass(frozen=True)
class Kernel:
    name: str
    kver: str
    vmlinuz: str
    moddir: str  # BASE/lib/modules/KVER

    @property
    def base(self) -> str:
        return self.moddir.rsplit("/lib/modules/", 1)[0]


def mirror_uri() -> str:
    """The machine's Debian mirror: from a deb822 stanza in /etc/apt/sources.list.d/*.sources
    or, as Debian's installer and debootstrap write it, a one-line /etc/apt/sources.list."""
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        for stanza in text.split("\n\n"):
            if re.search(r"^Suites:.*\b(bookworm|trixie|sid|stable)\b", stanza, re.M):
                m = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
                if m and "security" not in m.group(1):
                    return m.group(1)
    try:
        with open("/etc/apt/sources.list", encoding="utf-8") as fh:
            for line in fh:
                m = re.match(r"\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(bookworm|trixie|sid|stable)\b",
                             line)
                if m and "security" not in m.group(1):
                    return m.group(1)
    except FileNotFoundError:
        pass
    raise RuntimeError("no Debian mirror in /etc/apt/sources.list.d/*.sources or "
                       "/etc/apt/sources.list: expected a deb822 stanza with URIs: and "
                       "Suites:, or a deb line")


class Apt:
    """apt-get/apt-cache with either the system state or a private state for one suite."""

    def __init__(self, suite: str | None) -> None:
        self.opts: list[str] = []
        if suite is None:
            return
        state = os.path.join(CACHE, "apt", suite)
        for sub in ("lists/partial", "cache/archives/partial", "parts"):
            os.makedirs(os.path.join(state, sub), exist_ok=True)
        source_list = os.path.join(state, "sources.list")
        with open(source_list, "w", encoding="utf-8") as fh:
            fh.write(f"deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
                     f"{mirror_uri()} {suite} main\n")
        self.opts = [
            "-o", f"Dir::State::Lists={state}/lists",
            "-o", f"Dir::Etc::SourceList={source_list}",
            "-o", f"Dir::Etc::SourceParts={state}/parts",
            "-o", f"Dir::Cache={state}/cache",
            "-o", "APT::Sandbox::User=root",
        ]
        self.run("apt-get", "update", "-q")

    def run(self, tool: str, *args: str, cwd: str | None = None) -> str:
        out = subprocess.run([tool, *self.opts, *args], check=True, capture_output=True,
                             text=True, cwd=cwd)
        return out.stdout

    def newest(self, pattern: str) -> str:
        names = [n for n in self.run("apt-cache", "pkgnames").split()
                 if re.fullmatch(pattern, n)]
        if not names:
            raise RuntimeError(f"no package matching {pattern} in the apt lists")
        return max(names, key=_version_key)


def _version_key(name: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", name)]


def _fetch(apt: Apt, packages: list[str], dest: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        apt.run("apt-get", "download", *packages, cwd=tmp)
        for deb in sorted(glob.glob(os.path.join(tmp, "*.deb"))):
            subprocess.run(["dpkg-deb", "-x", deb, dest], check=True)


def _finish(name: str, tmp_root: str) -> Kernel:
    """Normalise an extracted tree to BASE/lib/modules/KVER + vmlinuz, run depmod."""
    moddirs = glob.glob(os.path.join(tmp_root, "usr/lib/modules/*")) + glob.glob(
        os.path.join(tmp_root, "lib/modules/*"))
    if not moddirs:
        raise RuntimeError(f"{name}: no lib/modules/KVER in the extracted packages")
    kver = os.path.basename(moddirs[0])
    final = os.path.join(CACHE, "kernels", name)
    base = final + ".tmp"
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(os.path.join(base, "lib/modules"))
    moddir = os.path.join(base, "lib/modules", kver)
    shutil.move(moddirs[0], moddir)
    vmlinuz = (glob.glob(os.path.join(moddir, "vmlinuz"))
               + glob.glob(os.path.join(tmp_root, "boot/vmlinuz-*")))[0]
    shutil.move(vmlinuz, os.path.join(base, "vmlinuz"))
    for config in glob.glob(os.path.join(tmp_root, "boot/config-*")):
        shutil.copy(config, os.path.join(moddir, "config"))
    subprocess.run(["depmod", "-b", base, kver], check=True, capture_output=True)
    shutil.rmtree(final, ignore_errors=True)
    os.rename(base, final)
    return load(name)


def load(name: str) -> Kernel:
    final = os.path.join(CACHE, "kernels", name)
    moddir = glob.glob(os.path.join(final, "lib/modules/*"))
    if not moddir or not os.path.exists(os.path.join(final, "vmlinuz")):
        raise FileNotFoundError(f"kernel {name} is not in {CACHE}/kernels: run "
                                f"bash .ci/install")
    return Kernel(name, os.path.basename(moddir[0]), os.path.join(final, "vmlinuz"), moddir[0])


def fetch_61() -> Kernel:
    try:
        return load("debian-6.1")
    except FileNotFoundError:
        pass
    apt = Apt(None)
    package = apt.newest(r"linux-image-6\.1\.\d+-\d+-cloud-amd64-unsigned")
    with tempfile.TemporaryDirectory() as tmp:
        _fetch(apt, [package], tmp)
        return _finish("debian-6.1", tmp)


def fetch_7x() -> Kernel:
    try:
        return load("debian-7")
    except FileNotFoundError:
        pass
    apt = Apt("sid")
    binary = apt.newest(r"linux-binary-7\.[\d.]+\+[\w.]+-cloud-amd64")
    suffix = binary.removeprefix("linux-binary-")
    with tempfile.TemporaryDirectory() as tmp:
        _fetch(apt, [binary, f"linux-modules-{suffix}", f"linux-base-{suffix}"], tmp)
        return _finish("debian-7", tmp)


def deb_61() -> str:
    """Debian 12's 6.1 cloud kernel as its .deb (the distribution test installs it)."""
    debs = os.path.join(CACHE, "debs")
    found = sorted(glob.glob(os.path.join(debs, "linux-image-6.1.*-cloud-amd64-unsigned_*.deb")))
    if found:
        return found[-1]
    os.makedirs(debs, exist_ok=True)
    apt = Apt(None)
    package = apt.newest(r"linux-image-6\.1\.\d+-\d+-cloud-amd64-unsigned")
    apt.run("apt-get", "download", package, cwd=debs)
    found = sorted(glob.glob(os.path.join(debs, f"{package}_*.deb")))
    if not found:
        raise RuntimeError(f"apt-get download {package} left no .deb in {debs}")
    return found[-1]


def main() -> int:
    for kernel in (fetch_61(), fetch_7x()):
        print(f"{kernel.name}: {kernel.kver} {kernel.vmlinuz}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
