"""Build-time and size benchmark: pyinit against initramfs-tools and dracut.

For one kernel (Debian unstable's 7.x cloud kernel from the test cache, or --kernel 6.1),
builds each tool's image N times with the same modules (virtio_blk and ext4: the host-only
set for the test VMs) and prints a table of build time (min/median), compressed and
unpacked size and file count, then writes a PNG bar chart.

- pyinit: what a user gets without flags, beside the tuned image:
  - "pyinit default": mkinitramfs.py --hostonly (what a build for the running kernel does
    without flags; --kver/--kmoddir only name the test kernel): the modules, fsck and storage
    stack this machine's root needs, udevd only if that stack needs it;
  - "pyinit listed": --add-drivers "virtio_blk ext4" --udev none, the tuned image;
  - "pyinit generic": --no-hostonly, every storage stack this host and kernel can carry;
  - "pyinit (cold cache)": the default build after the interpreter or pyinit changed.
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
                                     ("/usr/bin/dracut", "dracut-core"),
                                     ("/usr/lib/dracut/modules.d/90dmsquash-live",
                                      "dracut-live"),
                                     ("/usr/share/initramfs-tools/hooks/cryptroot",
                                      "cryptsetup-initramfs"))
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


PYINIT_FLAVOURS = {
    "pyinit default": ["--hostonly"],
    "pyinit listed": ["--add-drivers", " ".join(MODULES), "--udev", "none"],
    "pyinit generic": ["--no-hostonly"],
}


def bench_pyinit(kernel: kernels.Kernel, out: str, runs: int) -> list[Row]:
    """The default build cold, then each flavour warm."""
    base = [sys.executable, os.path.join(REPO, "mkinitramfs.py"), "-o", out, "--kver",
            kernel.kver, "--kmoddir", kernel.moddir, "--force"]
    cold = Row("pyinit (cold cache)", [timed([*base, *PYINIT_FLAVOURS["pyinit default"],
                                               "--no-cache"])])
    cold.size, cold.unpacked, cold.files = measure(out)
    rows = [cold]
    for name, flags in PYINIT_FLAVOURS.items():
        row = Row(name)
        for _ in range(runs):
            row.times.append(timed([*base, *flags]))
        row.size, row.unpacked, row.files = measure(out)
        rows.append(row)
    return rows


NAMESPACE_SCRIPT = """
set -e
mount -t tmpfs bench /lib/modules
mkdir -p /lib/modules/$KVER
mount --bind "$MODDIR" /lib/modules/$KVER
mount -t tmpfs bench /boot
cp "$MODDIR/config" /boot/config-$KVER
if [ -n "$CRYPTDIR" ]; then
  mount --bind "$CRYPTDIR/crypttab" /etc/crypttab
  mount --bind "$CRYPTDIR" /etc/cryptsetup-initramfs
fi
for i in $(seq $RUNS); do
  start=$(date +%s.%N)
  /usr/sbin/mkinitramfs -d "$CONFDIR" -o "$OUT" "$KVER" >/dev/null 2>&1
  end=$(date +%s.%N)
  echo "TIME $(echo "$end - $start" | bc)"
done
"""


@dataclass
class Crypt:
    """A LUKS volume for initramfs-tools' cryptroot hook: its /etc/crypttab line names the
    key as KEY_DIR/NAME.key, and the conf-hook's KEYFILE_PATTERN carries it. Both are bind
    mounts in the benchmark's namespace: the host's files are never touched."""

    name: str
    uuid: str
    key: bytes

    def crypttab(self, key_path: str) -> str:
        """Its /etc/crypttab line, the key file at KEY_PATH (as Debian's, marked for the
        initramfs: the host's root is not on it)."""
        return f"{self.name} UUID={self.uuid} {key_path} luks,discard,initramfs\n"


# The cryptroot hook reads its conf-hook here; the benchmark's own directory covers it.
KEY_DIR = "/etc/cryptsetup-initramfs"


def crypt_dir(crypt: Crypt, tmp: str) -> str:
    directory = tempfile.mkdtemp(dir=tmp)
    os.chmod(directory, 0o700)
    files = {"crypttab": crypt.crypttab(f"{KEY_DIR}/{crypt.name}.key"),
             "conf-hook": f'KEYFILE_PATTERN="{KEY_DIR}/*.key"\nUMASK=0077\n'}
    for name, text in files.items():
        with open(os.path.join(directory, name), "w", encoding="utf-8") as fh:
            fh.write(text)
    with open(os.open(os.path.join(directory, f"{crypt.name}.key"),
                      os.O_WRONLY | os.O_CREAT, 0o400), "wb") as fh:
        fh.write(crypt.key)
    return directory


def bench_initramfs_tools(kernel: kernels.Kernel, out: str, runs: int, tmp: str,
                          crypt: Crypt | None = None) -> Row:
    """initramfs-tools with MODULES; with CRYPT, cryptsetup-initramfs unlocks it (lvm2's
    hook and udev rules, always there when lvm2 is installed, activate what is on it)."""
    confdir = os.path.join(tmp, "initramfs-tools")
    shutil.copytree("/etc/initramfs-tools", confdir)
    with open(os.path.join(confdir, "initramfs.conf"), "a", encoding="utf-8") as fh:
        fh.write("\nMODULES=list\nCOMPRESS=zstd\nBUSYBOX=auto\n")
    with open(os.path.join(confdir, "modules"), "w", encoding="utf-8") as fh:
        fh.write("\n".join(MODULES) + "\n")
    created = [d for d in ("/lib/modules", "/boot") if not os.path.isdir(d)]
    for directory in created:
        os.makedirs(directory)  # mount points, covered by tmpfs inside the namespace
    if crypt is not None and not os.path.isfile("/etc/crypttab"):
        raise RuntimeError("initramfs-tools with LUKS: expected /etc/crypttab (the cryptsetup "
                           "package's) to bind the benchmark's over, found none")
    try:
        env = {**os.environ, "KVER": kernel.kver, "MODDIR": kernel.moddir, "CONFDIR": confdir,
               "OUT": out, "RUNS": str(runs),
               "CRYPTDIR": crypt_dir(crypt, tmp) if crypt is not None else ""}
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


def bench_dracut(kernel: kernels.Kernel, out: str, runs: int,
                 extra: list[str] | None = None) -> Row:
    argv = ["dracut", "--quiet", "--force", "--no-hostonly", "--kver", kernel.kver,
            "--kmoddir", kernel.moddir, "--add-drivers", " ".join(MODULES),
            "--compress", "zstd", *(extra or []), out]
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
    """A PNG of the table, when matplotlib is installed (it is not a dependency)."""
    try:
        import matplotlib
    except ImportError:
        print("chart: matplotlib is not installed, no chart written")
        return

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
    print(f"chart: {path}")


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
        cold, *flavours = bench_pyinit(kernel, os.path.join(tmp, "pyinit.img"), args.runs)
        itools = bench_initramfs_tools(kernel, os.path.join(tmp, "itools.img"), args.runs, tmp)
        dracut = bench_dracut(kernel, os.path.join(tmp, "dracut.img"), args.dracut_runs)
    rows = [*flavours, cold, itools, dracut]
    print(f"kernel {kernel.kver}, modules {' '.join(MODULES)}, Python "
          f"{sys.version.split()[0]}")
    print(table(rows))
    default = flavours[0]
    median = statistics.median(default.times)
    cold_median = statistics.median(cold.times)
    for other in (itools, dracut):
        theirs = statistics.median(other.times)
        print(f"pyinit's default builds {theirs / median:.1f}x faster than {other.tool} "
              f"(medians; {theirs / cold_median:.1f}x with a cold cache)")
    chart(rows, args.chart, f"image builds for {kernel.kver}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
