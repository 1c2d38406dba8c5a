"""Boot a real kernel with a pyinit image against a real root disk under qemu (TCG).

Root disks are made without loop devices: a directory tree (static busybox and a test
/sbin/init that reports what it sees) packed by ``mkfs.ext4 -d``. The test init prints
``TESTINIT`` lines on the serial console and powers the machine off, so a boot ends by itself;
every boot also has a hard timeout.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUSYBOX = "/bin/busybox"
APPLETS = ("sh", "cat", "echo", "grep", "ls", "poweroff", "reboot", "sync", "mount", "sleep",
           "test", "[", "readlink", "stat", "head", "tr", "env", "swapon")

TEST_INIT = r"""#!/bin/sh
# The real root's init, for tests: report what the hand-over left behind, then power off.
echo "TESTINIT pid=$$"
echo "TESTINIT argv0=$0"
echo "TESTINIT args=$*"
echo "TESTINIT argc=$#"
echo "TESTINIT env=$(env | tr '\n' ' ')"
echo "pyinit-test: real init running" > /dev/kmsg
while read -r line; do echo "MOUNTINFO $line"; done < /proc/self/mountinfo
grep -E '^(MemTotal|MemFree|Shmem|Unevictable):' /proc/meminfo | while read -r k v u; do
  echo "MEMINFO $k $v"
done
while read -r name rest; do echo "MODULE $name"; done < /proc/modules
[ -e /proc/mdstat ] && while read -r line; do echo "MDSTAT $line"; done < /proc/mdstat
for f in /init /usr/lib/pyinit /etc/initrd-release /root/.pyenv /sysroot; do
  [ -e "$f" ] && echo "TESTINIT reachable $f"
done
echo "FDLS $(ls /proc/self/fd | tr '\n' ' ')"
echo "SIGNALS $(grep -E '^Sig(Ign|Blk)' /proc/self/status | tr '\n\t' '  ')"
for p in /proc/[0-9]*; do
  read -r pid comm state ppid rest < "$p/stat" 2>/dev/null || continue
  [ "$pid" = 2 ] || [ "$ppid" = 2 ] || echo "PROC $pid $comm $state $ppid"
done
echo "TESTINIT done"
sync
poweroff -f
"""


HIBERNATE = r"""#!/bin/sh
# init= for the resume test: hibernate to the swap named in /etc/hibernate-swap, then,
# once resumed, say so and power off.
swap=$(cat /etc/hibernate-swap)
swapon "$swap" || { echo "HIBERNATE swapon failed"; poweroff -f; }
echo "HIBERNATE going down"
echo disk > /sys/power/state || echo "HIBERNATE failed"
echo "HIBERNATE resumed pid=$$"
sync
poweroff -f
"""


@dataclass
class Disk:
    path: str
    uuid: str
    label: str


def make_rootfs(directory: str, init_name: str = "sbin/init") -> None:
    for sub in ("bin", "sbin", "dev", "proc", "sys", "run", "tmp", "etc"):
        os.makedirs(os.path.join(directory, sub), exist_ok=True)
    shutil.copy(BUSYBOX, os.path.join(directory, "bin/busybox"))
    for applet in APPLETS:
        link = os.path.join(directory, "bin", applet)
        if not os.path.lexists(link):
            os.symlink("busybox", link)
    for name in (init_name, "sbin/altinit"):  # altinit: for init= tests
        init = os.path.join(directory, name)
        os.makedirs(os.path.dirname(init), exist_ok=True)
        with open(init, "w", encoding="utf-8") as fh:
            fh.write(TEST_INIT)
        os.chmod(init, 0o755)
    with open(os.path.join(directory, "etc/os-release"), "w", encoding="utf-8") as fh:
        fh.write("ID=pyinit-test\n")
    with open(os.path.join(directory, "sbin/hibernate"), "w", encoding="utf-8") as fh:
        fh.write(HIBERNATE)
    os.chmod(os.path.join(directory, "sbin/hibernate"), 0o755)
    with open(os.path.join(directory, "etc/hibernate-swap"), "w", encoding="utf-8") as fh:
        fh.write("/dev/mapper/debian--vg-swap_1\n")


def make_ext4_disk(path: str, tree: str, size_mb: int = 64, label: str = "pyroot") -> Disk:
    return Disk(path, make_fs_image(path, tree, "ext4", size_mb, label), label)


@dataclass
class BootResult:
    log: str
    seconds: float
    timed_out: bool

    def lines(self, prefix: str) -> list[str]:
        return [line.split(prefix, 1)[1].strip() for line in self.log.splitlines()
                if prefix in line]

    def events(self, event: str) -> list[dict[str, str]]:
        """pyinit's logfmt events of one name, as dicts."""
        found = []
        for line in self.log.splitlines():
            m = re.search(r"pyinit: (event=\S+.*)$", line)
            if not m:
                continue
            fields = dict(re.findall(r'(\w[\w.]*)=("(?:[^"\\]|\\.)*"|\S*)', m.group(1)))
            fields = {k: v.strip('"') for k, v in fields.items()}
            if fields.get("event") == event:
                found.append(fields)
        return found


def qemu_argv(vmlinuz: str, initrd: str, disks: list[str], cmdline: str, memory_mb: int,
              devices: list[str], cpus: int = 1) -> list[str]:
    """CPUS vCPUs under TCG (nested KVM fails here), no reboot, virtio disks; DEVICES adds
    the serial console and any control sockets."""
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", str(memory_mb),
            "-smp", str(cpus), "-nodefaults", "-display", "none", "-no-reboot", *devices,
            "-kernel", vmlinuz, "-initrd", initrd, "-append", cmdline]
    for disk in disks:
        argv += ["-drive", f"file={disk},format=raw,if=virtio"]
    return argv


def boot(vmlinuz: str, initrd: str, disks: list[str], cmdline: str, log_path: str,
         timeout: float = 180, memory_mb: int = 512, cpus: int = 1) -> BootResult:
    """Boot under qemu TCG; returns the serial log. Kills qemu after TIMEOUT seconds."""
    argv = qemu_argv(vmlinuz, initrd, disks, cmdline, memory_mb,
                     ["-serial", f"file:{log_path}"], cpus)
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    timed_out = False
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.kill()
        out, _ = proc.communicate()
    seconds = time.monotonic() - start
    with open(log_path, encoding="utf-8", errors="replace") as fh:
        log = fh.read()
    if proc.returncode not in (0, None) and not timed_out:
        log += f"\n[qemu exited {proc.returncode}: {out.decode(errors='replace')}]"
    return BootResult(log, seconds, timed_out)


def build_image(output: str, kernel_moddir: str, kver: str, drivers: list[str],
                compression: str = "zstd", extra: list[str] | None = None,
                udev: str | None = None) -> str:
    """mkinitramfs.py for a test kernel; UDEV None: the builder's default (auto)."""
    argv = [sys.executable, os.path.join(REPO, "mkinitramfs.py"), "-o", output, "--kver", kver,
            "--kmoddir", kernel_moddir, "--compress", compression, "--force", *(extra or [])]
    if udev is not None:
        argv += ["--udev", udev]
    if drivers:
        argv += ["--add-drivers", " ".join(drivers)]
    done = subprocess.run(argv, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"mkinitramfs.py failed: {done.stderr.strip()}")
    return done.stdout


class InteractiveVM:
    """A qemu whose serial console the test reads and types into, with a monitor socket
    for keys (Ctrl-Alt-Del) and hotplug. Always stopped by stop() or its timeout."""

    def __init__(self, vmlinuz: str, initrd: str, disks: list[str], cmdline: str,
                 workdir: str, memory_mb: int = 512) -> None:
        tag = uuid.uuid4().hex[:8]
        self.monitor_path = os.path.join(workdir, f"monitor-{tag}.sock")
        self.qmp_path = os.path.join(workdir, f"qmp-{tag}.sock")
        argv = qemu_argv(vmlinuz, initrd, disks, cmdline, memory_mb,
                         ["-serial", "stdio",
                          "-monitor", f"unix:{self.monitor_path},server=on,wait=off",
                          "-qmp", f"unix:{self.qmp_path},server=on,wait=off"])
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.output = bytearray()
        self.position = 0
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while chunk := os.read(self.proc.stdout.fileno(), 4096):
            with self._lock:
                self.output += chunk

    @property
    def log(self) -> str:
        with self._lock:
            return self.output.decode(errors="replace")

    def expect(self, pattern: str, timeout: float = 120) -> re.Match[str]:
        """Wait for PATTERN in the output after the previous match."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log
            m = regex.search(text, self.position)
            if m:
                self.position = m.end()
                return m
            if self.proc.poll() is not None and self._reader.is_alive() is False:
                break
            time.sleep(0.1)
        raise AssertionError(f"{pattern!r} not seen within {timeout} s; console tail:\n"
                             f"{self.log[-3000:]}")

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def monitor(self, command: str) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(self.monitor_path)
            sock.recv(4096)  # the banner
            sock.sendall(command.encode() + b"\n")
            time.sleep(0.5)

    def qmp(self, *commands: dict[str, object]) -> list[dict[str, object]]:
        """Run QMP commands (after the capabilities handshake); raise on an error reply."""
        replies = []
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(30)
            sock.connect(self.qmp_path)
            stream = sock.makefile("rwb")

            def call(message: dict[str, object]) -> dict[str, object]:
                stream.write(json.dumps(message).encode() + b"\n")
                stream.flush()
                while True:
                    reply: dict[str, object] = json.loads(stream.readline())
                    if "event" not in reply:
                        return reply

            json.loads(stream.readline())  # the greeting
            call({"execute": "qmp_capabilities"})
            for command in commands:
                reply = call(command)
                if "error" in reply:
                    raise AssertionError(f"QMP {command} failed: {reply['error']}")
                replies.append(reply)
        return replies

    def wait(self, timeout: float = 120) -> int:
        """Wait for qemu to exit (the guest powered off or rebooted with -no-reboot)."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"the VM did not stop within {timeout} s; console tail:\n"
                                 f"{self.log[-3000:]}") from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=5)


def make_fs_image(path: str, tree: str, fstype: str, size_mb: int, label: str,
                  fs_uuid: str | None = None) -> str:
    """A filesystem image of TREE without loop devices; returns its UUID (squashfs: "")."""
    fs_uuid = fs_uuid or str(uuid.uuid4())
    with open(path, "wb") as fh:
        fh.truncate(size_mb << 20)
    if fstype in ("ext4", "ext3", "ext2"):
        argv = [f"mkfs.{fstype}", "-q", "-F", "-L", label, "-U", fs_uuid, "-d", tree, path]
    elif fstype == "btrfs":
        argv = ["mkfs.btrfs", "-q", "-f", "-L", label, "-U", fs_uuid, "--rootdir", tree, path]
    elif fstype == "xfs":
        proto = path + ".proto"
        with open(proto, "w", encoding="utf-8") as fh:
            fh.write(xfs_protofile(tree))
        argv = ["mkfs.xfs", "-q", "-f", "-L", label, "-m", f"uuid={fs_uuid}", "-p", proto, path]
    elif fstype == "squashfs":
        os.unlink(path)
        argv = ["mksquashfs", tree, path, "-noappend", "-quiet", "-no-progress", "-all-root"]
        fs_uuid = ""
    elif fstype == "erofs":
        os.unlink(path)
        argv = ["mkfs.erofs", "--quiet", "--all-root", f"-U{fs_uuid}", path, tree]
    else:
        raise ValueError(f"no recipe for {fstype}")
    subprocess.run(argv, check=True, capture_output=True)
    return fs_uuid


def xfs_protofile(tree: str) -> str:
    """mkfs.xfs -p: a prototype file describing TREE (files, directories, symlinks)."""
    def mode(path: str) -> str:
        return f"{os.lstat(path).st_mode & 0o777:03o}"

    def walk(directory: str, depth: int) -> list[str]:
        lines = []
        for name in sorted(os.listdir(directory)):
            full = os.path.join(directory, name)
            pad = " " * depth
            if os.path.islink(full):
                lines.append(f"{pad}{name} l--777 0 0 {os.readlink(full)}")
            elif os.path.isdir(full):
                lines.append(f"{pad}{name} d--{mode(full)} 0 0")
                lines += walk(full, depth + 1)
                lines.append(f"{pad}$")
            else:
                lines.append(f"{pad}{name} ---{mode(full)} 0 0 {full}")
        return lines

    return "\n".join(["/dev/null", "0 0", "d--755 0 0", *walk(tree, 1), "$", ""])


@dataclass
class Partition:
    name: str  # the GPT partition label
    fstype: str
    size_mb: int
    label: str
    guid: str = ""
    fs_uuid: str = ""
    number: int = 0
    image: str = ""  # a ready-made file to copy in, instead of a filesystem of the tree


def make_gpt_disk(path: str, tree: str, partitions: list[Partition], workdir: str) -> None:
    """A GPT disk image (sgdisk) whose partitions hold filesystems made as separate files
    and copied in at their offsets: no loop devices."""
    total = sum(p.size_mb for p in partitions) + 2
    with open(path, "wb") as fh:
        fh.truncate(total << 20)
    argv = ["sgdisk", "-Z", "-U", str(uuid.uuid4())]
    for number, part in enumerate(partitions, 1):
        part.number = number
        part.guid = part.guid or str(uuid.uuid4())
        argv += [f"-n{number}:0:+{part.size_mb}M", f"-c{number}:{part.name}",
                 f"-u{number}:{part.guid}", f"-t{number}:8300"]
    subprocess.run([*argv, path], check=True, capture_output=True)
    for part in partitions:
        info = subprocess.run(["sgdisk", "-i", str(part.number), path], check=True,
                              capture_output=True, text=True).stdout
        m = re.search(r"First sector: (\d+)", info)
        assert m, info
        image = part.image or os.path.join(workdir, f"part{part.number}.img")
        if not part.image:
            part.fs_uuid = make_fs_image(image, tree, part.fstype, part.size_mb, part.label)
        with open(image, "rb") as src, open(path, "r+b") as dst:
            dst.seek(int(m.group(1)) * 512)
            shutil.copyfileobj(src, dst, 1 << 20)
        if not part.image:
            os.unlink(image)
