"""The init's logger: one /dev/kmsg descriptor at a time, however often it is configured."""

from __future__ import annotations

import os
from pathlib import Path

from pyinit import log


def test_configure_again_closes_the_previous_descriptor(tmp_path: Path) -> None:
    sink = tmp_path / "kmsg"
    sink.touch()
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        log.configure(kmsg=str(sink))
    assert len(os.listdir("/proc/self/fd")) == before + 1
    log.close()
    assert len(os.listdir("/proc/self/fd")) == before


def test_the_skeleton_init_looks_where_the_builder_puts_pyinit() -> None:
    from pyinit import layout

    init = (Path(__file__).parents[2] / "rootfs-skel" / "init").read_text()
    assert f'sys.path.insert(0, "{layout.SITE}")' in init
