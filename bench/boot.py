"""Boot-time benchmark: pyinit against a busybox-shell floor, initramfs-tools and dracut,
on both test kernels, under qemu TCG, with one and with two vCPUs.

Two figures, from the kernel's own clock: the initrd phase, from the printk time of "Run
/init as init process" to the first line the real root's init writes to /dev/kmsg
("pyinit-test: real init running"), and the whole boot, from kernel start (printk 0) to
that line, which includes the kernel unpacking the image (size is time too).

pyinit's images: "pyinit" is what a user gets without flags (only --kver, --kmoddir and
--add-drivers, as every image here needs for the test kernel), "pyinit host-only" adds
--hostonly, which is what a build for the running kernel does without flags (this
machine's root: virtio and ext4, with fsck.ext4), "pyinit udevd" adds --udev systemd, and
"pyinit early" boots the default image with pyinit.early=1 (the modules load in a thread
beside the init's imports instead of after them: pyinit/early.py, off by default).
Each image boots N times per vCPU count, interleaved (each round boots every image once,
so a slower minute of the host falls on all alike; a boot that panics under TCG is booted
again and counted); the table gives the medians,
the ratios of the default images to the others, their stage durations, and the real
init's MemFree and Unevictable ("kept": ramfs pages of an initramfs nobody deleted;
pyinit must keep none). A PNG chart is written next to this file.

The "lvm on luks" rows boot Debian's "guided, encrypted LVM" layout (a LUKS2 partition,
VG debian-vg with LVs root and swap_1; tests/vm/stackdisks.py, provisioned once and cached)
unlocked with a key file, root=/dev/mapper/debian--vg-root: pyinit with --storage "luks
lvm", the crypttab line and --luks-key; initramfs-tools with cryptsetup-initramfs (the same
crypttab line, the key through KEYFILE_PATTERN) and lvm2; dracut --no-hostonly with its
crypt and lvm modules, the key included and named by rd.luks.key=.

`--ab A.img B.img` boots two given images instead, turn about (A B, then B A), against
the test root as ext4, as a squashfs with a tmpfs overlay, or as that squashfs under
dm-verity (`--ab-roots`), and reports the medians with their spread, the ratio B/A and the
paired differences (boot i of A beside boot i of B).

The busybox floor is built here: static busybox, an /init that mounts /proc /sys /dev, loads
the virtio modules with insmod, waits for the disk, mounts it and hands over with
switch_root (6.1) or pivot_root (7.x).
"""

from __future__ import annotations

import argparse
import io
import os
import re
import stat
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench import build as buildbench  # noqa: E402
from pyinit import early  # noqa: E402
from pyinit.builder import compress, cpio, firmware  # noqa: E402
from pyinit.builder.kmodules import ModuleTree  # noqa: E402
from tests.vm import harness, kernels, provision, stackdisks  # noqa: E402
from tests.vm.conftest import DRIVERS  # noqa: E402

FLOOR_INIT = """#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
for m in {modules}; do /bin/busybox insmod /lib/modules/$m.ko; done
while ! /bin/busybox test -b /dev/vda; do /bin/busybox usleep 10000; done
/bin/busybox mount -o ro /dev/vda /newroot
for d in dev proc sys; do /bin/busybox mount --move /$d /newroot/$d; done
{handover}
"""
SWITCH_ROOT = "exec /bin/busybox switch_root /newroot /sbin/init"
# pyinit's images: the default (no flags but what the test kernel needs), and tuned ones.
PYINIT_IMAGES = {"pyinit": [], "pyinit host-only": ["--hostonly"],
                 "pyinit udevd": ["--udev", "systemd"]}
# The images a user gets without flags: their ratios to every other image are printed.
RATIO_IMAGES = ("pyinit", "pyinit host-only", "pyinit appliance")
PIVOT_ROOT = ("cd /newroot && /bin/busybox pivot_root . . && exec /bin/busybox chroot . "
              "/bin/sh -c 'umount -l / 2>/dev/null; exec /sbin/init'")


# Debian's "guided, encrypted LVM" (tests/vm/stackdisks.py), unlocked with a key file: the
# root LV named as Debian names it, nothing about crypto on the command line for the tools
# that carry a crypttab (pyinit, initramfs-tools); dracut without host-only reads none.
PLAIN = "plain ext4"
STACK = "lvm on luks"
# The appliance rows: the test root as a squashfs under dm-verity (its hash tree on a second
# disk) with a tmpfs overlay, booted by an --appliance image; dracut boots the same squashfs
# with its dmsquash-live module (root=live: on the squashfs device, an overlayfs in tmpfs).
# Debian 12's dracut 059 has no verity support outside a systemd initrd, so its row
# verifies nothing: the comparison favours it.
APPLIANCE = "verity+overlay"
APPLIANCE_LINE = ("roothash={hash} systemd.verity_root_data=/dev/vda "
                  "systemd.verity_root_hash=/dev/vdb")
STACK_ROOT = "root=/dev/mapper/debian--vg-root"
STACK_NAME = "vda1_crypt"
STACK_DRACUT = (f"rd.luks.uuid={stackdisks.LUKS_UUID} rd.luks.key={stackdisks.KEY_PATH} "
                "rd.lvm.lv=debian-vg/root")
# What the reference tools are told to carry for the cipher (pyinit's luks stack carries
# these itself: pyinit/storage/luks.py).
CRYPTO_MODULES = ["dm_crypt", "xts", "aesni_intel", "algif_skcipher"]


@dataclass
class Series:
    image: str
    kernel: str
    cpus: int = 1
    group: str = PLAIN  # ratios are taken within a group: PLAIN or STACK
    phases: list[float] = field(default_factory=list)
    totals: list[float] = field(default_factory=list)  # kernel start -> real init
    memfree_kb: list[int] = field(default_factory=list)
    unevictable_kb: list[int] = field(default_factory=list)  # ramfs pages still held
    stages: dict[str, list[float]] = field(default_factory=dict)
    size: int = 0
    failed: int = 0  # boots that never reached the real init, booted again


def floor_image(kernel: kernels.Kernel, path: str) -> None:
    """The busybox-shell floor, uncompressed modules in load order, zstd like the others."""
    tree = ModuleTree.read(kernel.moddir)
    modules = tree.closure(DRIVERS[kernel.name])
    order: list[str] = []
    for name in modules:
        for dep in [*tree.deps[name], name]:
            if dep not in order:
                order.append(dep)
    entries = [cpio.Entry(d, stat.S_IFDIR | 0o755)
               for d in ("bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules")]
    entries.append(cpio.Entry("dev/console", stat.S_IFCHR | 0o600, b"", (5, 1)))
    with open("/bin/busybox", "rb") as fh:
        entries.append(cpio.Entry("bin/busybox", stat.S_IFREG | 0o755, fh.read()))
    entries.append(cpio.Entry("bin/sh", stat.S_IFLNK | 0o777, b"busybox"))
    for name in order:
        data = firmware.module_bytes(os.path.join(kernel.moddir, tree.paths[name]))
        entries.append(cpio.Entry(f"lib/modules/{name}.ko", stat.S_IFREG | 0o644, data))
    handover = PIVOT_ROOT if kernel.name == "debian-7" else SWITCH_ROOT
    script = FLOOR_INIT.format(modules=" ".join(order), handover=handover)
    entries.append(cpio.Entry("init", stat.S_IFREG | 0o755, script.encode()))
    out = io.BytesIO()
    cpio.write(out, entries)
    with open(path, "wb") as fh:
        fh.write(compress.compress(out.getvalue(), "zstd", 19))


def stack_images(kernel: kernels.Kernel, tmp: str, skip: list[str]) -> dict[str, str]:
    """pyinit, initramfs-tools and dracut images for STACK with the key file: each told
    only what a user of that tool tells it (pyinit: the stacks, crypttab and key)."""
    key = os.path.join(tmp, "root.key")
    with open(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o400), "wb") as fh:
        fh.write(stackdisks.KEY)
    crypt = buildbench.Crypt(STACK_NAME, stackdisks.LUKS_UUID, stackdisks.KEY)
    images: dict[str, str] = {}
    if "pyinit" not in skip:
        crypttab = os.path.join(tmp, "crypttab")
        with open(crypttab, "w", encoding="utf-8") as fh:
            fh.write(crypt.crypttab(stackdisks.KEY_PATH))
        images["pyinit"] = f"{tmp}/stack-pyinit-{kernel.name}.img"
        harness.build_image(images["pyinit"], kernel.moddir, kernel.kver,
                            [*DRIVERS[kernel.name], "ext4"],
                            extra=["--storage", "luks lvm", "--crypttab", crypttab,
                                   "--luks-key", f"{key}:{stackdisks.KEY_PATH}"])
    buildbench.MODULES[:] = [*DRIVERS[kernel.name], "ext4", *CRYPTO_MODULES]
    if "initramfs-tools" not in skip:
        images["initramfs-tools"] = f"{tmp}/stack-itools-{kernel.name}.img"
        buildbench.bench_initramfs_tools(
            kernel, images["initramfs-tools"], 1, tempfile.mkdtemp(dir=tmp), crypt)
    if "dracut" not in skip:
        images["dracut"] = f"{tmp}/stack-dracut-{kernel.name}.img"
        buildbench.bench_dracut(kernel, images["dracut"], 1,
                                ["--add", "crypt lvm", "--include", key, stackdisks.KEY_PATH])
    return images


def appliance_runs(kernel: kernels.Kernel, tmp: str, disks: list[str], root_hash: str,
                   skip: list[str]) -> list[tuple[str, str, str, list[str], str, str]]:
    image = f"{tmp}/appliance-{kernel.name}.img"
    harness.build_image(image, kernel.moddir, kernel.kver, DRIVERS[kernel.name],
                        extra=["--appliance"])
    runs = [(APPLIANCE, "pyinit appliance", image, disks,
             APPLIANCE_LINE.format(hash=root_hash), "rd.overlay")]
    if "dracut" not in skip:
        dracut = f"{tmp}/dracut-live-{kernel.name}.img"
        buildbench.MODULES[:] = [*DRIVERS[kernel.name], "squashfs", "overlay", "loop"]
        buildbench.bench_dracut(kernel, dracut, 1, ["--add", "dmsquash-live"])
        runs.append((APPLIANCE, "dracut live", dracut, disks[:1], "root=live:/dev/vda",
                     "rd.live.overlay.overlayfs=1"))
    return runs


def printk_time(log: str, text: str) -> float | None:
    m = re.search(r"^\[\s*(\d+\.\d+)\] " + re.escape(text), log, re.M)
    return float(m.group(1)) if m else None


BOOT_TRIES = 3  # a guest that panics under TCG (rare, seen on both kernels) boots again


def boot_once(series: Series, kernel: kernels.Kernel, image: str, disks: list[str],
              root: str, run: int, tmp: str, extra: str = "") -> None:
    """One boot of IMAGE, its figures added to SERIES: callers interleave the images run by
    run, so that a slower minute of the host falls on all of them alike. A boot that never
    reaches the real init is tried again (counted in series.failed), up to BOOT_TRIES."""
    series.size = os.path.getsize(image)
    for attempt in range(BOOT_TRIES):
        log = os.path.join(tmp, f"{series.group}-{series.image}-{kernel.name}-{series.cpus}-"
                                f"{run}-{attempt}.log".replace(" ", "_").replace("/", "_"))
        result = harness.boot(kernel.vmlinuz, image, disks,
                              f"console=ttyS0 panic=-1 {root} {extra}", log,
                              timeout=300, cpus=series.cpus)
        start = printk_time(result.log, "Run /init as init process")
        end = printk_time(result.log, "pyinit-test: real init running")
        if start is not None and end is not None:
            break
        series.failed += 1
        last = (result.log.strip().splitlines() or ["no output"])[-1]
        print(f"{series.image} ({series.group}) on {kernel.name}, smp {series.cpus}: boot "
              f"{run} did not reach the real init (console ending in {last!r})",
              file=sys.stderr, flush=True)
    else:
        raise RuntimeError(f"{series.image} ({series.group}) on {kernel.name}: expected the "
                           f"real init's line, found none in {BOOT_TRIES} boots")
    series.phases.append(end - start)
    series.totals.append(end)
    memfree = re.search(r"MEMINFO MemFree: (\d+)", result.log)
    if memfree:
        series.memfree_kb.append(int(memfree.group(1)))
    kept = re.search(r"MEMINFO Unevictable: (\d+)", result.log)
    if kept:
        series.unevictable_kb.append(int(kept.group(1)))
    for event in result.events("stage"):
        series.stages.setdefault(event["stage"], []).append(float(event["duration"]))


# The roots --ab boots its images against: the test root as ext4 (root=UUID=), as a squashfs
# with a tmpfs overlay, and as that squashfs under dm-verity (the hash tree on a second
# disk), as the appliance rows boot it.
AB_ROOTS = ("plain", "squashfs+overlay", "verity+overlay")
AB_MIN_RUNS = 7


def ab_root(kind: str, tree: str, tmp: str) -> tuple[list[str], str]:
    """The disks and the command line that boot TREE as KIND (one of AB_ROOTS)."""
    if kind == "plain":
        disk = harness.make_ext4_disk(f"{tmp}/ab-root.img", tree)
        return [disk.path], f"root=UUID={disk.uuid}"
    squashfs = f"{tmp}/ab-root.squashfs"
    if not os.path.exists(squashfs):  # one squashfs for both kinds that boot it
        harness.make_fs_image(squashfs, tree, "squashfs", 1, "unused")
    if kind == "squashfs+overlay":
        return [squashfs], "root=/dev/vda rootfstype=squashfs rd.overlay"
    hashed = f"{tmp}/ab-root.hash"
    said = subprocess.run(["veritysetup", "format", squashfs, hashed], check=True,
                          capture_output=True, text=True).stdout
    root_hash = next(line.split(":", 1)[1].strip() for line in said.splitlines()
                     if line.startswith("Root hash:"))
    return [squashfs, hashed], APPLIANCE_LINE.format(hash=root_hash) + " rd.overlay"


def spread(values: list[float]) -> str:
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return (f"median {statistics.median(values):.3f} s (quartiles {q1:.3f}-{q3:.3f}, "
            f"min-max {min(values):.3f}-{max(values):.3f})")


def ab_report(a: Series, b: Series) -> str:
    """Both series' medians with their spread, and the ratio B/A with the paired figures:
    boot i of A and boot i of B ran back to back, so their difference cancels the host's
    drift."""
    lines = []
    for label, series in (("A", a), ("B", b)):
        stages = ", ".join(f"{k} {statistics.median(v):.3f}" for k, v in series.stages.items())
        lines += [f"{label} {series.image} (smp {series.cpus}, {len(series.phases)} boots, "
                  f"{series.failed} booted again, {series.size / 1e6:.2f} MB): initrd "
                  f"{spread(series.phases)}",
                  f"  total {spread(series.totals)}",
                  f"  stages (median s): {stages}"]
    for what, mine, other in (("initrd", b.phases, a.phases), ("total", b.totals, a.totals)):
        diffs = [x - y for x, y in zip(mine, other, strict=True)]
        faster = sum(d < 0 for d in diffs)
        lines.append(f"B/A {what} {statistics.median(mine) / statistics.median(other):.3f}; "
                     f"paired B-A median {statistics.median(diffs):+.3f} s "
                     f"(min-max {min(diffs):+.3f}..{max(diffs):+.3f}), B faster in {faster} "
                     f"of {len(diffs)} boots")
    return "\n".join(lines)


def ab_main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """--ab A.img B.img: the two images booted turn about (A B, then B A), ABBA order
    cancelling a drift within a round, on one kernel, for each vCPU count."""
    if args.kernel == "both":
        parser.error("--ab: expected --kernel debian-6.1 or debian-7 (the kernel both images "
                     "were built for), found both")
    if args.runs < AB_MIN_RUNS:
        parser.error(f"--ab: expected --runs {AB_MIN_RUNS} or more, found {args.runs}")
    roots = args.ab_roots.split(",")
    if len(roots) != 2 or not set(roots) <= set(AB_ROOTS):
        parser.error(f"--ab-roots: expected two of {', '.join(AB_ROOTS)} joined by a comma, "
                     f"found {args.ab_roots!r}")
    for image in args.ab:
        if not os.path.isfile(image) or not os.access(image, os.R_OK):
            parser.error(f"--ab: expected a readable image file, found none at {image}")
    kernel = kernels.fetch_61() if args.kernel == "debian-6.1" else kernels.fetch_7x()
    with tempfile.TemporaryDirectory(prefix="pyinit-bootbench-ab-") as tmp:
        harness.make_rootfs(f"{tmp}/root")
        made = {kind: ab_root(kind, f"{tmp}/root", tmp) for kind in dict.fromkeys(roots)}
        boots = [(image, *made[kind]) for image, kind in zip(args.ab, roots, strict=True)]
        print(versions() + f"; kernel {kernel.kver}")
        for cpus in (int(n) for n in args.smp.split(",")):
            pair = [Series(f"{image} [{kind}]", kernel.name, cpus, kind)
                    for image, kind in zip(args.ab, roots, strict=True)]
            for run in range(args.runs):
                for i in (0, 1) if run % 2 == 0 else (1, 0):
                    image, disks, line = boots[i]
                    boot_once(pair[i], kernel, image, disks, line, run, tmp)
            print(ab_report(*pair), flush=True)
    return 0


def versions() -> str:
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True,
                          text=True).stdout.splitlines()[0]
    return f"{qemu}; Python {sys.version.split()[0]}"


def report(all_series: list[Series]) -> str:
    lines = [f"{'root':<11} {'image':<18} {'kernel':<11} {'smp':>3} {'runs':>4} "
             f"{'initrd s':>8} {'total s':>7} {'MB':>6} {'MemFree MB':>10} {'kept kB':>7} "
             f"{'again':>5}"]
    for s in all_series:
        mem = statistics.median(s.memfree_kb) / 1024 if s.memfree_kb else float("nan")
        kept = statistics.median(s.unevictable_kb) if s.unevictable_kb else float("nan")
        lines.append(f"{s.group:<11} {s.image:<18} {s.kernel:<11} {s.cpus:>3} "
                     f"{len(s.phases):>4} "
                     f"{statistics.median(s.phases):>8.2f} {statistics.median(s.totals):>7.2f} "
                     f"{s.size / 1e6:>6.2f} {mem:>10.1f} {kept:>7.0f} {s.failed:>5}")
    for kernel, cpus, group in sorted({(s.kernel, s.cpus, s.group) for s in all_series}):
        peers = [s for s in all_series
                 if s.kernel == kernel and s.cpus == cpus and s.group == group]
        where = f"{kernel} smp {cpus}, {group}"
        for mine in (s for s in peers if s.image in RATIO_IMAGES):  # defaults against others
            for other in (s for s in peers if s.image not in RATIO_IMAGES):
                initrd = statistics.median(mine.phases) / statistics.median(other.phases)
                total = statistics.median(mine.totals) / statistics.median(other.totals)
                lines.append(f"{where}: {mine.image} / {other.image} = initrd "
                             f"{initrd:.2f}, total {total:.2f}")
            stages = ", ".join(f"{k} {statistics.median(v):.3f}"
                               for k, v in mine.stages.items())
            lines.append(f"{where}: {mine.image} stages (median s): {stages}")
    return "\n".join(lines)


def chart(all_series: list[Series], path: str) -> None:
    """A PNG of the 1-vCPU medians (of the first vCPU count booted when 1 was not), when
    matplotlib is installed (it is not a dependency)."""
    try:
        import matplotlib
    except ImportError:
        print("chart: matplotlib is not installed, no chart written")
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    all_series = [s for s in all_series if s.group == PLAIN]
    cpus = min(s.cpus for s in all_series)
    kernels_seen = sorted({s.kernel for s in all_series})
    images = list(dict.fromkeys(s.image for s in all_series))
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(kernels_seen)
    for i, kernel in enumerate(kernels_seen):
        values = [statistics.median(next(s.phases for s in all_series
                                         if s.kernel == kernel and s.image == image
                                         and s.cpus == cpus))
                  for image in images]
        ax.bar([x + i * width for x in range(len(images))], values, width, label=kernel)
    ax.set_xticks([x + width * (len(kernels_seen) - 1) / 2 for x in range(len(images))])
    ax.set_xticklabels(images)
    ax.set_ylabel(f"initrd phase, median guest s ({cpus} vCPU)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"chart: {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--kernel", choices=["debian-6.1", "debian-7", "both"], default="both")
    parser.add_argument("--skip", action="append", default=[],
                        help="leave out an image: busybox, initramfs-tools, dracut, \"pyinit "
                             "host-only\", \"pyinit udevd\", \"early\", or the stack "
                             f"rows: \"{STACK}\", or the appliance rows: \"{APPLIANCE}\"")
    parser.add_argument("--smp", default="1,2", help="vCPU counts to boot with (default 1,2)")
    parser.add_argument("--chart", default=os.path.join(REPO, "bench", "boot.png"))
    parser.add_argument("--ab", nargs=2, metavar=("A.img", "B.img"),
                        help="boot two images turn about instead (--runs 7 or more, one "
                             "--kernel), and report their medians, spread and ratio")
    parser.add_argument("--ab-roots", default="plain,plain",
                        help=f"with --ab, the roots A and B boot: two of {', '.join(AB_ROOTS)} "
                             "(default plain,plain)")
    args = parser.parse_args()
    if args.ab:
        return ab_main(args, parser)
    smp = [int(n) for n in args.smp.split(",")]
    buildbench.ensure_tools()
    chosen = []
    if args.kernel in ("debian-6.1", "both"):
        chosen.append(kernels.fetch_61())
    if args.kernel in ("debian-7", "both"):
        chosen.append(kernels.fetch_7x())
    all_series: list[Series] = []
    with tempfile.TemporaryDirectory(prefix="pyinit-bootbench-") as tmp:
        harness.make_rootfs(f"{tmp}/root")
        disk = harness.make_ext4_disk(f"{tmp}/root.img", f"{tmp}/root")
        stack_disks: list[str] = []
        if STACK not in args.skip:  # made under the 7.x kernel, as the storage tests' are
            made = provision.provision(
                stackdisks.debian_layout(stackdisks.root_input(f"{tmp}/root")),
                kernels.fetch_7x())
            stack_disks = list(provision.copies(made, tmp).values())
        appliance_disks: list[str] = []
        root_hash = ""
        if APPLIANCE not in args.skip:
            squashfs, hashed = f"{tmp}/root.squashfs", f"{tmp}/root.hash"
            harness.make_fs_image(squashfs, f"{tmp}/root", "squashfs", 1, "unused")
            said = subprocess.run(["veritysetup", "format", squashfs, hashed], check=True,
                                  capture_output=True, text=True).stdout
            root_hash = next(line.split(":", 1)[1].strip() for line in said.splitlines()
                             if line.startswith("Root hash:"))
            appliance_disks = [squashfs, hashed]
        for kernel in chosen:
            images: dict[str, str] = {}
            drivers = [*DRIVERS[kernel.name], "ext4"]
            for name, extra in PYINIT_IMAGES.items():
                if name not in args.skip:
                    images[name] = f"{tmp}/{name.replace(' ', '-')}-{kernel.name}.img"
                    harness.build_image(images[name], kernel.moddir, kernel.kver, drivers,
                                        extra=extra)
            if "busybox" not in args.skip:
                images["busybox"] = f"{tmp}/busybox-{kernel.name}.img"
                floor_image(kernel, images["busybox"])
            if "initramfs-tools" not in args.skip:
                images["initramfs-tools"] = f"{tmp}/itools-{kernel.name}.img"
                buildbench.MODULES[:] = [*DRIVERS[kernel.name], "ext4"]
                buildbench.bench_initramfs_tools(kernel, images["initramfs-tools"], 1,
                                                 tempfile.mkdtemp(dir=tmp))
            if "dracut" not in args.skip:
                images["dracut"] = f"{tmp}/dracut-{kernel.name}.img"
                buildbench.MODULES[:] = [*DRIVERS[kernel.name], "ext4"]
                buildbench.bench_dracut(kernel, images["dracut"], 1)
            # (group, image name, image, disks, root=, extra command line)
            runs = [(PLAIN, name, image, [disk.path], f"root=UUID={disk.uuid}", "")
                    for name, image in images.items()]
            if "pyinit" in images and "early" not in args.skip:
                runs.append((PLAIN, "pyinit early", images["pyinit"], [disk.path],
                             f"root=UUID={disk.uuid}", early.ON))
            if stack_disks:
                for name, image in stack_images(kernel, tmp, args.skip).items():
                    runs.append((STACK, name, image, stack_disks, STACK_ROOT,
                                 STACK_DRACUT if name == "dracut" else ""))
            if appliance_disks:
                runs += appliance_runs(kernel, tmp, appliance_disks, root_hash, args.skip)
            for cpus in smp:
                batch = [Series(name, kernel.name, cpus, group) for group, name, *_ in runs]
                for run in range(args.runs):  # interleaved: every image once per round
                    for series, (_, _, image, disks, root, words) in zip(batch, runs,
                                                                        strict=True):
                        boot_once(series, kernel, image, disks, root, run, tmp, words)
                for series in batch:
                    print(f"{series.image} ({series.group}) on {kernel.name}, smp {cpus}: "
                          f"median initrd {statistics.median(series.phases):.2f} s, total "
                          f"{statistics.median(series.totals):.2f} s", flush=True)
                all_series += batch
    print(versions() + "; kernels " + ", ".join(k.kver for k in chosen))
    print(report(all_series))
    chart(all_series, args.chart)
    return 0


if __name__ == "__main__":
    sys.exit(main())
