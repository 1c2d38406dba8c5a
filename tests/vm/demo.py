"""Build a pyinit image for each test kernel and boot it against a sample root disk.

Prints the builder's summary, then the boot from the kernel's "Run /init" line to the real
init's report: the stage events, the hand-over method, the mount table and memory seen by
the real root's /sbin/init.
"""

from __future__ import annotations

import argparse
import sys
import tempfile

from tests.vm import harness, kernels
from tests.vm.conftest import DRIVERS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", choices=["debian-6.1", "debian-7", "both"], default="both")
    parser.add_argument("--compress", default="zstd")
    args = parser.parse_args()
    chosen = []
    if args.kernel in ("debian-6.1", "both"):
        chosen.append(kernels.fetch_61())
    if args.kernel in ("debian-7", "both"):
        chosen.append(kernels.fetch_7x())
    with tempfile.TemporaryDirectory(prefix="pyinit-demo-") as tmp:
        harness.make_rootfs(f"{tmp}/root")
        disk = harness.make_ext4_disk(f"{tmp}/root.img", f"{tmp}/root")
        print(f"sample root disk: {disk.path} (ext4, UUID={disk.uuid})")
        for kernel in chosen:
            image = f"{tmp}/initrd-{kernel.name}.img"
            print(f"\n=== {kernel.name}: {kernel.kver}")
            print(harness.build_image(image, kernel.moddir, kernel.kver, DRIVERS[kernel.name],
                                      args.compress).rstrip())
            result = harness.boot(kernel.vmlinuz, image, [disk.path],
                                  f"console=ttyS0 panic=-1 root=UUID={disk.uuid} rd.shell=0 "
                                  "rd.emergency=poweroff", f"{tmp}/{kernel.name}.log")
            shown = False
            for line in result.log.splitlines():
                shown = shown or "Run /init" in line
                if shown and any(k in line for k in ("Run /init", "pyinit", "TESTINIT",
                                                     "MOUNTINFO", "MEMINFO", "MODULE ")):
                    print(line)
            if result.timed_out or "TESTINIT done" not in result.log:
                print(f"boot of {kernel.name} did not reach the real init", file=sys.stderr)
                return 1
            print(f"(qemu wall time {result.seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
