"""Test disks with LUKS, LVM, mdraid and btrfs, made inside a provisioning VM and cached.

This machine's kernel has no device-mapper and no md, so the stacks are built where they
can be: the 7.x test kernel boots a tool initramfs (static busybox, cryptsetup, lvm, mdadm,
mke2fs, mkswap, btrfs-progs, their libraries and the kernel modules), which runs a recipe
(a busybox shell script) against the output disks, attached as virtio disks in order
(/dev/vda, /dev/vdb...), followed by the input images read-only. Tools are called by
absolute path: Debian's static busybox prefers its own applets over programs on PATH.

The disks are cached under CACHE/disks/KEY, KEY being a hash of the recipe, the disks'
sizes, the input images' recipes and the kernel; tests get copies (sparse), so a boot that
writes cannot spoil the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field

from pyinit.builder import compress, elfdeps, firmware, image
from pyinit.builder.kmodules import ModuleTree
from pyinit.storage import lvm
from tests.vm import harness, kernels

CACHE = os.path.join(kernels.CACHE, "disks")
TOOLS = ("/sbin/cryptsetup", "/sbin/lvm", "/sbin/mdadm", "/sbin/mke2fs", "/sbin/mkswap",
         "/sbin/mkfs.btrfs", "/bin/btrfs", "/sbin/dmsetup", "/sbin/sgdisk")
MODULES = ("virtio_blk", "virtio_pci", "dm_mod", "dm_crypt", "md_mod", "raid0", "raid1", "btrfs",
           "aesni_intel", "algif_skcipher", "xts", "ext4")
VERSION = "3"  # bump when the tool image or the cache layout changes


@dataclass
class Disk:
    name: str
    size_mb: int
    gpt: list[tuple[str, int]] = field(default_factory=list)  # (partition name, MB)


@dataclass
class Input:
    """A read-only image the recipe reads (an ext4 root to copy in), made on a cache miss.
    IDENTITY names what MAKE produces, for the cache key."""

    identity: str
    make: Callable[[str], None]  # writes the image to the path given


@dataclass
class Recipe:
    name: str
    disks: list[Disk]
    script: str
    inputs: list[Input] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)  # extra files for the tool image
    memory_mb: int = 768

    def key(self, kernel: kernels.Kernel) -> str:
        described = {"version": VERSION, "name": self.name, "script": self.script,
                     "disks": [(d.name, d.size_mb, d.gpt) for d in self.disks],
                     "inputs": [i.identity for i in self.inputs], "kernel": kernel.kver,
                     "files": {k: hashlib.sha256(v).hexdigest() for k, v in self.files.items()},
                     "test_init": hashlib.sha256(harness.TEST_INIT.encode()).hexdigest()}
        return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:24]


INIT = """#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox mkdir -p /run/cryptsetup /run/lvm /run/mdadm /tmp /mnt /dev/md
for m in {modules}; do /bin/busybox insmod /lib/modules/$m.ko || exit 1; done
n=0
while [ ! -e /sys/block/{last} ]; do
  n=$((n+1)); [ $n -gt 600 ] && echo PROVISION-NO-DISKS && exit 1
  /bin/busybox usleep 100000
done
export DM_DISABLE_UDEV=1 PATH=/sbin:/bin
set -e
echo PROVISION-START
. /recipe.sh
/bin/busybox sync
echo PROVISION-OK
/bin/busybox poweroff -f
"""


def tool_image(kernel: kernels.Kernel, recipe: Recipe, path: str) -> None:
    img = image.Image()
    resolver = elfdeps.Resolver()
    for tool in TOOLS:
        img.add_host_file(tool)
        for lib in resolver.closure([os.path.realpath(tool)]):
            img.add_host_file(lib)
    img.add_host_file("/bin/busybox")
    img.add_symlink("/bin/sh", "busybox")
    for directory in ("/proc", "/sys", "/dev", "/run", "/tmp", "/mnt", "/etc/lvm"):
        img.add_dir(directory)
    img.add_node("/dev/console", stat.S_IFCHR, 0o600, (5, 1))
    img.add_bytes("/etc/lvm/lvm.conf", (lvm.LVM_CONF_TEXT + "activation {\n udev_sync = 0\n "
                                        "udev_rules = 0\n}\n").encode())
    tree = ModuleTree.read(kernel.moddir)
    order: list[str] = []
    for name in tree.closure([m for m in MODULES if tree.resolve(m)]):
        for dep in [*tree.deps[name], name]:
            if dep not in order:
                order.append(dep)
    for name in order:
        img.add_bytes(f"/lib/modules/{name}.ko",
                      firmware.module_bytes(os.path.join(kernel.moddir, tree.paths[name])))
    last = f"vd{chr(ord('a') + len(recipe.disks) + len(recipe.inputs) - 1)}"
    img.add_bytes("/init", INIT.format(modules=" ".join(order), last=last).encode(), 0o755)
    img.add_bytes("/recipe.sh", recipe.script.encode(), 0o644)
    for name, data in recipe.files.items():
        img.add_bytes(name, data, 0o400)
    with open(path, "wb") as fh:
        fh.write(compress.compress(img.archive(), "zstd", 3))


def provision(recipe: Recipe, kernel: kernels.Kernel) -> dict[str, str]:
    """The recipe's disks (name -> cached path), made now when the cache has none."""
    target = os.path.join(CACHE, f"{recipe.name}-{recipe.key(kernel)}")
    paths = {d.name: os.path.join(target, f"{d.name}.img") for d in recipe.disks}
    if os.path.exists(os.path.join(target, "ok")):
        return paths
    os.makedirs(CACHE, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f"{recipe.name}-", dir=CACHE)
    try:
        outputs = []
        for disk in recipe.disks:
            out = os.path.join(work, f"{disk.name}.img")
            with open(out, "wb") as fh:
                fh.truncate(disk.size_mb << 20)
            if disk.gpt:
                argv = ["sgdisk", "-Z"]
                for number, (name, size) in enumerate(disk.gpt, 1):
                    argv += [f"-n{number}:0:+{size}M" if size else f"-n{number}:0:0",
                             f"-c{number}:{name}"]
                subprocess.run([*argv, out], check=True, capture_output=True)
            outputs.append(out)
        inputs = []
        for number, item in enumerate(recipe.inputs):
            path = os.path.join(work, f"input{number}.img")
            item.make(path)
            inputs.append(path)
        tools = os.path.join(work, "tools.img")
        tool_image(kernel, recipe, tools)
        log = os.path.join(work, "provision.log")
        argv = harness.qemu_argv(kernel.vmlinuz, tools, [], "console=ttyS0 panic=-1 quiet",
                                 recipe.memory_mb, ["-serial", f"file:{log}"])
        for out in outputs:
            argv += ["-drive", f"file={out},format=raw,if=virtio"]
        for path in inputs:
            argv += ["-drive", f"file={path},format=raw,if=virtio,readonly=on"]
        subprocess.run(argv, check=False, capture_output=True, timeout=900)
        with open(log, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
        if "PROVISION-OK" not in text:
            raise RuntimeError(f"provisioning {recipe.name} failed:\n{text[-4000:]}")
        for path in [*inputs, tools]:
            os.unlink(path)
        with open(os.path.join(work, "ok"), "w", encoding="utf-8") as fh:
            fh.write(text)
        shutil.rmtree(target, ignore_errors=True)
        os.rename(work, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return paths


def copies(paths: dict[str, str], directory: str) -> dict[str, str]:
    """Sparse copies of cached disks for one test."""
    result = {}
    for name, path in paths.items():
        copy = os.path.join(directory, f"{name}.img")
        subprocess.run(["cp", "--sparse=always", path, copy], check=True)
        result[name] = copy
    return result


def ext4_input(tree: str, size_mb: int, fs_uuid: str, label: str) -> Input:
    """An ext4 image of TREE (the test root) with a fixed UUID, to copy into a stack."""
    def make(path: str) -> None:
        harness.make_fs_image(path, tree, "ext4", size_mb, label, fs_uuid)

    return Input(f"ext4:{size_mb}:{fs_uuid}:{label}:{tree_identity(tree)}", make)


def tree_identity(tree: str) -> str:
    """What a tree holds (names, sizes, contents of small files), not its timestamps."""
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(tree):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            digest.update(os.path.relpath(full, tree).encode())
            if os.path.islink(full):
                digest.update(os.readlink(full).encode())
            elif os.path.getsize(full) < (1 << 20):
                with open(full, "rb") as fh:
                    digest.update(fh.read())
            else:
                digest.update(str(os.path.getsize(full)).encode())
    return digest.hexdigest()[:16]
