"""A storage tool's failure quotes what the kernel logged while the tool ran."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyinit import cmdline, command, kernlog, storage
from pyinit.blockdev import BlockDevice
from pyinit.storage import mdraid

REFUSED = "md: vda does not have a valid v1.2 superblock, not importing!"
MDADM_SAID = b"mdadm: failed to add /dev/vda to new array /dev/md/provision:0: Invalid argument.\n"


def test_only_the_kernels_own_records_are_quoted() -> None:
    assert kernlog._kernel_message(f"4,812,5021733,-;{REFUSED}\n SUBSYSTEM=block\n".encode()) \
        == REFUSED
    assert kernlog._kernel_message(b"3,813,5021800,-;md: md_import_device returned -22\n") \
        == "md: md_import_device returned -22"
    # pyinit's own lines (LOG_USER: 14 = 1*8+6) and udevd's (LOG_DAEMON) are not the kernel's.
    assert kernlog._kernel_message(b"14,814,5021900,-;pyinit: md_started\n") is None
    assert kernlog._kernel_message(b"30,815,5022000,-;systemd-udevd[80]: starting\n") is None
    assert kernlog._kernel_message(b"garbage") is None
    assert kernlog.quoted(()) == ""
    assert kernlog.quoted(("a", "b")) == ' (the kernel said: "a"; "b")'


@pytest.mark.skipif(not os.access("/dev/kmsg", os.R_OK) or os.geteuid() != 0,
                    reason="needs /dev/kmsg and root")
def test_a_watch_reads_what_the_kernel_said_after_it_and_only_that() -> None:
    """On this machine's kernel: drop_caches makes the kernel itself log a line (facility 0).
    A watch started before it quotes the line, one started after does not, and a program's
    own record is never quoted."""
    before = kernlog.Watch()
    with open("/proc/sys/vm/drop_caches", "w", encoding="ascii") as fh:
        fh.write("1")
    fd = os.open("/dev/kmsg", os.O_WRONLY)
    try:
        os.write(fd, b"<3>pyinit-test: not the kernel's\n")
    finally:
        os.close(fd)
    after = kernlog.Watch()
    said = before.lines()
    assert any("drop_caches: 1" in line for line in said), said
    assert not any("pyinit-test" in line for line in said)
    assert before.fd is None  # lines() closes it
    assert not any("drop_caches" in line for line in after.lines())
    assert kernlog.Watch("/nonexistent").lines() == ()


def test_a_watch_on_something_that_cannot_seek_quotes_nothing(tmp_path: Path) -> None:
    read, write = os.pipe()
    os.write(write, b"4,1,1,-;old\n")
    try:
        assert kernlog.Watch(f"/proc/self/fd/{read}").lines() == ()
    finally:
        os.close(read)
        os.close(write)


class FakeWatch:
    def __init__(self) -> None:
        self.closed = False

    def lines(self) -> tuple[str, ...]:
        return (REFUSED, "md: md_import_device returned -22")

    def close(self) -> None:
        self.closed = True


class Stacks:
    udev_running = True


def test_a_failed_tool_carries_the_kernels_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernlog, "Watch", FakeWatch)
    run = storage.Env.run
    with pytest.raises(command.CommandError) as err:
        run(Stacks(), ["sh", "-c", "echo 'Invalid argument.' >&2; exit 2"])  # type: ignore[arg-type]
    assert str(err.value) == ("sh -c echo 'Invalid argument.' >&2; exit 2 exited with status 2: "
                              f'Invalid argument. (the kernel said: "{REFUSED}"; '
                              '"md: md_import_device returned -22")')
    done = run(Stacks(), ["sh", "-c", "exit 1"], check=False)  # type: ignore[arg-type]
    assert done.kernel == (REFUSED, "md: md_import_device returned -22")
    assert run(Stacks(), ["true"]).kernel == ()  # type: ignore[arg-type]
    with pytest.raises(command.CommandError, match=r"no answer within 0.2 s \(the kernel said"):
        run(Stacks(), ["sleep", "5"], timeout=0.2)  # type: ignore[arg-type]


def test_a_refused_md_member_quotes_the_kernel_and_says_what_to_try(
        monkeypatch: pytest.MonkeyPatch) -> None:
    class Env:
        options = cmdline.parse("root=UUID=0")

        def load_modules(self, needs: storage.Needs, reason: str) -> None:
            pass

        def before_activation(self) -> None:
            pass

        def run(self, argv: list[str], check: bool = True) -> command.Done:
            return command.Done(2, b"", MDADM_SAID, kernel=(REFUSED,))

    monkeypatch.setattr(mdraid, "run_dir", lambda *dirs: None)
    member = BlockDevice("/dev/vda", (252, 0), "disk", "vda", None,
                         {"ID_FS_TYPE": "linux_raid_member", "ID_FS_UUID": "a1b2c3d4"})
    with pytest.raises(storage.StorageError) as err:
        mdraid.MdRaid(Env()).offer(member)  # type: ignore[arg-type]
    assert str(err.value) == ("mdadm --incremental /dev/vda exited with status 2: mdadm: failed "
                              "to add /dev/vda to new array /dev/md/provision:0: Invalid "
                              f'argument. (the kernel said: "{REFUSED}")')
    assert "newer kernel" in err.value.hint and "mdadm --examine" in err.value.hint
    assert storage.StorageError("x").hint == storage.StorageError.hint
