"""A real Debian 12 root with systemd, made with debootstrap from the machine's own Debian
mirror and cached as a tarball, with a probe that reports what systemd saw.

The probe (a unit ordered after multi-user.target) writes PROBE lines to /dev/kmsg: the
failed units, the active swaps, systemd's initrd timestamp and how many of pyinit's events
the journal holds; once the boot has finished it writes ``systemd-analyze``'s line and
powers the machine off.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile

from tests.vm import kernels

SUITE = "bookworm"
PACKAGES = ("systemd", "systemd-sysv", "udev", "lvm2", "dmsetup", "cryptsetup-bin", "kmod",
            "e2fsprogs", "python3", "python3-cffi-backend", "python3-pyudev",
            "python3-structlog", "python3-pyelftools", "python3-zstandard", "python3-lz4",
            "binutils", "zstd", "cpio", "linux-base")
TRIM = ("var/cache/apt", "var/lib/apt/lists", "usr/share/doc", "usr/share/locale",
        "usr/share/man", "usr/share/info")
MACHINE_ID = "7e57c0de7e57c0de7e57c0de7e57c0de"

PROBE = """#!/bin/sh
# pyinit's test probe: what systemd saw, on /dev/kmsg, then power off once booted.
out() { echo "PROBE $*" > /dev/kmsg; }
out "failed $(systemctl --failed --no-legend --plain | awk '{print $1}' | tr '\\n' ' ')"
out "swaps $(swapon --noheadings --show=NAME | tr '\\n' ' ')"
out "initrd-timestamp $(systemctl show -p InitRDTimestampMonotonic --value)"
out "journal-pyinit $(journalctl -b -t pyinit -o cat | grep -c '^event=')"
out "pyinit-log $(grep -c '^pyinit: event=' /run/initramfs/pyinit.log 2>/dev/null || echo none)"
out "jobs $(systemctl list-jobs --no-legend | wc -l)"
out "pid1 $(tr '\\0' ' ' < /proc/1/cmdline)"
systemd-run --quiet --on-active=3 --unit=pyinit-probe-finish /usr/local/sbin/pyinit-probe-finish
"""
PROBE_FINISH = """#!/bin/sh
out() { echo "PROBE $*" > /dev/kmsg; }
n=0
while ! systemd-analyze > /run/analyze 2>&1 && [ $n -lt 60 ]; do n=$((n+1)); sleep 1; done
out "analyze $(head -n 1 /run/analyze)"
out "done"
systemctl --no-block poweroff
"""
PROBE_UNIT = """[Unit]
Description=pyinit test probe
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/pyinit-probe

[Install]
WantedBy=multi-user.target
"""


def tarball() -> str:
    """The cached debootstrap of SUITE with PACKAGES (made on first use)."""
    key = hashlib.sha256(json.dumps([SUITE, PACKAGES, TRIM]).encode()).hexdigest()[:16]
    path = os.path.join(kernels.CACHE, "debian", f"{SUITE}-{key}.tar")
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="debootstrap-", dir=os.path.dirname(path)) as tmp:
        root = os.path.join(tmp, "root")
        done = subprocess.run(["debootstrap", "--variant=minbase",
                               f"--include={','.join(PACKAGES)}", SUITE, root,
                               kernels.mirror_uri()], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"debootstrap failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
        for sub in TRIM:
            shutil.rmtree(os.path.join(root, sub), ignore_errors=True)
        subprocess.run(["tar", "-C", root, "--numeric-owner", "-cf", path + ".tmp", "."],
                       check=True)
        os.rename(path + ".tmp", path)
    return path


def unpack(directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    subprocess.run(["tar", "-C", directory, "--numeric-owner", "-xf", tarball()], check=True)


def write(root: str, path: str, text: str, mode: int = 0o644) -> None:
    full = os.path.join(root, path.lstrip("/"))
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(full, mode)


def configure(root: str, fstab: str, crypttab: str = "") -> None:
    """A bootable test system: fstab, crypttab, a fixed machine id, the probe enabled."""
    write(root, "/etc/fstab", fstab)
    write(root, "/etc/crypttab", crypttab)
    write(root, "/etc/hostname", "pyinit-test\n")
    write(root, "/etc/machine-id", MACHINE_ID + "\n")
    write(root, "/usr/local/sbin/pyinit-probe", PROBE, 0o755)
    write(root, "/usr/local/sbin/pyinit-probe-finish", PROBE_FINISH, 0o755)
    write(root, "/etc/systemd/system/pyinit-probe.service", PROBE_UNIT)
    wants = os.path.join(root, "etc/systemd/system/multi-user.target.wants")
    os.makedirs(wants, exist_ok=True)
    link = os.path.join(wants, "pyinit-probe.service")
    if not os.path.lexists(link):
        os.symlink("/etc/systemd/system/pyinit-probe.service", link)


def in_chroot(root: str, command: str, env: dict[str, str] | None = None,
              binds: tuple[tuple[str, str], ...] = (), timeout: float = 900
              ) -> subprocess.CompletedProcess[str]:
    """COMMAND (sh) in ROOT, with /proc, /sys, /dev (and a tmpfs /dev/shm) mounted and
    BINDS (host directory, path in ROOT) bound, in a private mount namespace: nothing of it
    shows outside."""
    mounts = [f"mount -t proc proc {root}/proc", f"mount -t sysfs sysfs {root}/sys",
              f"mount --bind /dev {root}/dev", f"mount -t tmpfs tmpfs {root}/dev/shm"]
    for source, target in binds:
        inside = shlex.quote(f"{root}{target}")
        mounts.append(f"mkdir -p {inside} && mount --bind {shlex.quote(source)} {inside}")
    script = " && ".join([*mounts, f"chroot {root} /bin/sh -c {shlex.quote(command)}"])
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=timeout,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **(env or {})})


def network(root: str) -> None:
    """ROOT resolves names as this machine does (apt reaches the machine's mirror)."""
    conf = os.path.join(root, "etc/resolv.conf")
    if not os.path.exists(conf) or os.path.getsize(conf) == 0:
        if os.path.lexists(conf):
            os.unlink(conf)
        shutil.copy("/etc/resolv.conf", conf)


def install_deb(root: str, deb: str) -> str:
    """apt-get install ./DEB in ROOT, as the README says: apt resolves DEB's dependencies
    from the machine's Debian mirror (its lists fetched once). Returns what apt and dpkg
    said (raises when they failed)."""
    network(root)
    lists = os.path.join(root, "var/lib/apt/lists")
    update = "" if os.path.isdir(lists) and any(n.endswith("_Packages") for n in
                                                os.listdir(lists)) else "apt-get update -q && "
    shutil.copy(deb, os.path.join(root, "tmp"))
    done = in_chroot(root, f"{update}apt-get install -y -q --no-install-recommends "
                           f"/tmp/{os.path.basename(deb)}",
                     env={"DEBIAN_FRONTEND": "noninteractive"})
    if done.returncode != 0:
        raise RuntimeError(f"apt-get install {deb} in {root}: {done.stdout}{done.stderr}")
    os.unlink(os.path.join(root, "tmp", os.path.basename(deb)))
    return done.stdout + done.stderr


def probe(log: str) -> dict[str, str]:
    """The probe's report from a serial log: key -> rest of the line."""
    found = {}
    for line in log.splitlines():
        if "PROBE " in line:
            key, _, value = line.split("PROBE ", 1)[1].partition(" ")
            found[key] = value.strip()
    return found
