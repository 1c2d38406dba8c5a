"""The init's logger: one /dev/kmsg descriptor at a time, however often it is configured."""

from __future__ import annotations

import os
from pathlib import Path

from pyinit import log


def test_configure_again_closes_the_previous_descriptors(tmp_path: Path) -> None:
    sink = tmp_path / "kmsg"
    sink.touch()
    before = len(os.listdir("/proc/self/fd"))
    log.use_file(str(tmp_path / "initramfs" / "pyinit.log"))
    try:
        for _ in range(5):
            log.configure(kmsg=str(sink))
        assert len(os.listdir("/proc/self/fd")) == before + 2  # kmsg and the log file
        log.get().info("stage", stage="mount", duration=0.012)
        log.close()
        assert len(os.listdir("/proc/self/fd")) == before
    finally:
        log._LOG_FILE.clear()
    line = "pyinit: event=stage stage=mount duration=0.012 level=info"
    assert (tmp_path / "initramfs" / "pyinit.log").read_text().startswith(line)
    assert sink.read_text().startswith(f"<6>{line}")


def test_kmsg_rate_limit_is_lifted_while_pyinit_runs_and_put_back(tmp_path: Path) -> None:
    sysctl = tmp_path / "printk_devkmsg"
    sysctl.write_text("ratelimit\n")
    log.unthrottle_kmsg(str(sysctl))
    assert sysctl.read_text() == "on\n"  # the kernel takes nothing without the newline
    log.restore_kmsg(str(sysctl))
    assert sysctl.read_text() == "ratelimit\n"


def test_the_skeleton_init_looks_where_the_builder_puts_pyinit() -> None:
    from pyinit import layout

    init = (Path(__file__).parents[2] / "rootfs-skel" / "init").read_text()
    assert f'sys.path.insert(0, "{layout.SITE}")' in init
