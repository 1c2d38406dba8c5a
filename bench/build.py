"""Build-time and size benchmark: pyinit against initramfs-tools and dracut.

For one kernel (Debian unstable's 7.x cloud kernel from the test cache, or --kernel 6.1),
builds each tool's image N times with the same modules (virtio_blk and ext4: the host-only
set for the test VMs) and prints a table of build time (min/median), compressed and
unpacked size and file count, then writes a PNG bar chart.

- pyinit: mkinitramfs.py --add-drivers "virtio_blk ext4" (zstd); its first build fills the
  runtime cache and is reported separately as "cold".
- initramfs-tools: mkinitramfs with MODULES=list, the same modules, COMPRESS=zstd.
- dracut: dracut --no-hostonly --add-drivers "virtio_blk ext4" --compress zstd.

initramfs-tools reads modules only from /lib/modules/KVER: the benchmark runs it in a
private mount namespace with the kernel's modules bind-mounted there. Both reference tools
are Debian packages (initramfs-tools, dracut-core); the benchmark installs them when absent.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from pyinit.builder import archive  # noqa: E402
from tests.vm import kernels  # noqa: E402

MODULES = ["virtio_blk", "ext4"]


@dataclass
class Row:
    tool: str
    times: list[float] = field(default_factory=list)
    size: int = 0
    unpacked: int = 0
    files: int = 0
    note: str = ""


def ensure_tools() -> None:
    missing = [pkg for tool, pkg in (("/usr/sbin/mkinitramfs", "initramfs-tools"),
                                     ("/usr/bin/dracut", "dracut-core"))
               if not os.path.exists(tool)]
    if missing:
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
                       check=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def measure(path: str) -> tuple[int, int, int]:
    with open(path, "rb") as fh:
        data = fh.read()
    unpacked = files = 0
    for _fmt, entry in archive.entries(data):
        unpacked += len(entry.data)
        files += 1
    return len(data), unpacked, files


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    start = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    elapsed = time.monotonic() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} failed: {done.stderr.strip()[-500:]}")
    return elapsed


def bench_pyinit(kernel: kernels.Kernel, out: str, runs: int) -> tuple[Row, Row]:
    argv = [sys.executable, os.path.join(REPO, "mkinitramfs.py"), "-o", out, "--kver",
            kernel.kver, "--kmoddir", kernel.moddir, "--add-drivers", " ".join(MODULES),
            "--udev", "none", "--force"]
    cold = Row("pyinit (cold cache)", [timed([*argv, "--no-cache"])])
    warm = Row("pyinit")
    for _ in range(runs):
        warm.times.append(timed(argv))
    for row in (cold, warm):
        row.size, row.unpacked, row.files = measure(out)
    return cold, warm


NAMESPACE_SCRIPT = """
set -e
mount -t tmpfs bench /lib/modules
mkdir -p /lib/modules/$KVER
mount --bind "$MODDIR" /lib/modules/$KVER
mount -t tmpfs bench /boot
cp "$MODDIR/config" /boot/config-$KVER
for i in $(seq $RUNS); do
  start=$(date +%s.%N)
  /usr/sbin/mkinitramfs -d "$CONFDIR" -o "$OUT" "$KVER" >/dev/null 2>&1
  end=$(date +%s.%N)
  echo "TIME $(echo "$end - $start" | bc)"
done
"""


def bench_initramfs_tools(kernel: kernels.Kernel, out: str, runs: int, tmp: str) -> Row:
    confdir = os.path.join(tmp, "initramfs-tools")
    shutil.copytree("/etc/initramfs-tools", confdir)
    with open(os.path.join(confdir, "initramfs.conf"), "a", encoding="utf-8") as fh:
        fh.write("\nMODULES=list\nCOMPRESS=zstd\nBUSYBOX=auto\n")
    with open(os.path.join(confdir, "modules"), "w", encoding="utf-8") as fh:
        fh.write("\n".join(MODULES) + "\n")
    created = [d for d in ("/lib/modules", "/boot") if not os.path.isdir(d)]
    for directory in created:
        os.makedirs(directory)  # mount points, covered by tmpfs inside the namespace
    try:
        env = {**os.environ, "KVER": kernel.kver, "MODDIR": kernel.moddir, "CONFDIR": confdir,
               "OUT": out, "RUNS": str(runs)}
        done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                               NAMESPACE_SCRIPT], capture_output=True, text=True, env=env,
                              check=False)
    finally:
        for directory in created:
            os.rmdir(directory)
    times = [float(line.split()[1]) for line in done.stdout.splitlines()
             if line.startswith("TIME")]
    if done.returncode != 0 or len(times) != runs:
        raise RuntimeError(f"initramfs-tools failed: {done.stderr.strip()[-500:]}")
    row = Row("initramfs-tools", times)
    row.size, row.unpacked, row.files = measure(out)
    return row


def bench_dracut(kernel: kernels.Kernel, out: str, runs: int) -> Row:
    argv = ["dracut", "--quiet", "--force", "--no-hostonly", "--kver", kernel.kver,
            "--kmoddir", kernel.moddir, "--add-drivers", " ".join(MODULES),
            "--compress", "zstd", out]
    row = Row("dracut")
    for _ in range(runs):
        row.times.append(timed(argv))
    row.size, row.unpacked, row.files = measure(out)
    return row


def table(rows: list[Row]) -> str:
    head = (f"{'tool':<22} {'runs':>4} {'min s':>7} {'median s':>9} {'zstd MB':>8} "
            f"{'unpacked MB':>12} {'files':>6}")
    lines = [head, "-" * len(head)]
    for row in rows:
        lines.append(f"{row.tool:<22} {len(row.times):>4} {min(row.times):>7.2f} "
                     f"{statistics.median(row.times):>9.2f} {row.size / 1e6:>8.2f} "
                     f"{row.unpacked / 1e6:>12.2f} {row.files:>6}")
    return "\n".join(lines)


def chart(rows: list[Row], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    names = [r.tool for r in rows]
    ax1.bar(names, [statistics.median(r.times) for r in rows], color="#4878a8")
    ax1.set_ylabel("median build time (s)")
    ax1.set_yscale("log")
    ax2.bar(names, [r.size / 1e6 for r in rows], color="#a86848", label="compressed")
    ax2.bar(names, [r.unpacked / 1e6 for r in rows], color="none", edgecolor="black",
            label="unpacked")
    ax2.set_ylabel("MB")
    ax2.legend()
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", rotation=20)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", choices=["7", "6.1"], default="7")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dracut-runs", type=int, default=3)
    parser.add_argument("--chart", default=os.path.join(REPO, "bench", "build.png"))
    args = parser.parse_args()
    ensure_tools()
    kernel = kernels.fetch_7x() if args.kernel == "7" else kernels.fetch_61()
    with tempfile.TemporaryDirectory(prefix="pyinit-bench-") as tmp:
        cold, warm = bench_pyinit(kernel, os.path.join(tmp, "pyinit.img"), args.runs)
        itools = bench_initramfs_tools(kernel, os.path.join(tmp, "itools.img"), args.runs, tmp)
        dracut = bench_dracut(kernel, os.path.join(tmp, "dracut.img"), args.dracut_runs)
    rows = [warm, cold, itools, dracut]
    print(f"kernel {kernel.kver}, modules {' '.join(MODULES)}, Python "
          f"{sys.version.split()[0]}")
    print(table(rows))
    median = statistics.median(warm.times)
    cold_median = statistics.median(cold.times)
    for other in (itools, dracut):
        theirs = statistics.median(other.times)
        print(f"pyinit builds {theirs / median:.1f}x faster than {other.tool} (medians; "
              f"{theirs / cold_median:.1f}x with a cold cache)")
    chart(rows, args.chart, f"image builds for {kernel.kver}")
    print(f"chart: {args.chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
