"""The rescue console driven over the serial line, rd.break, Ctrl-Alt-Del, and reaping."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.vm import harness
from tests.vm.conftest import DRIVERS
from tests.vm.kernels import Kernel

PROMPT = r">>> "


@pytest.fixture(scope="module")
def images(kernel7: Kernel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("console-images")
    python_only = str(tmp / "python-console.img")
    harness.build_image(python_only, kernel7.moddir, kernel7.kver, DRIVERS[kernel7.name])
    with_shell = str(tmp / "busybox-shell.img")
    harness.build_image(with_shell, kernel7.moddir, kernel7.kver, DRIVERS[kernel7.name],
                        extra=["--include", "/bin/busybox", "/bin/busybox"])
    return {"python": python_only, "shell": with_shell}


@pytest.fixture()
def start(kernel7: Kernel, tmp_path: Path, root_tree: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    disk = harness.make_ext4_disk(str(tmp_path / "root.img"), str(root_tree))
    machines: list[harness.InteractiveVM] = []

    def boot(image: str, cmdline: str) -> tuple[harness.InteractiveVM, harness.Disk]:
        vm = harness.InteractiveVM(kernel7.vmlinuz, image, [disk.path],
                                   f"console=ttyS0 {cmdline.format(uuid=disk.uuid)}",
                                   str(tmp_path))
        machines.append(vm)
        return vm, disk

    yield boot
    for vm in machines:
        vm.stop()


def test_fix_the_root_from_the_python_console(start: object, images: dict[str, str]) -> None:
    vm, disk = start(images["python"], "root=LABEL=wrong rd.timeout=3")  # type: ignore[operator]
    vm.expect(r"boot failed in stage discover: no device matched root=LABEL=wrong")
    vm.expect(PROMPT)
    vm.send("lsblk()\n")
    vm.expect(rf"/dev/vda \(254:0\) TYPE=ext4 UUID={disk.uuid} LABEL=pyroot")
    vm.expect(PROMPT)
    vm.send("log(3)\n")
    vm.expect(r"event=failure stage=discover")
    vm.expect(PROMPT)
    vm.send(f'cmdline("root=UUID={disk.uuid}")\n')
    vm.expect(rf"root=UUID={disk.uuid}")
    vm.expect(PROMPT)
    vm.send("resume()\n")
    vm.expect(r"event=switch_root method=pivot_root")
    vm.expect(r"TESTINIT pid=1")
    vm.expect(r"TESTINIT done")
    vm.wait()


def test_rd_break_mount_opens_the_console_and_leaving_it_continues(
        start: object, images: dict[str, str]) -> None:
    vm, _ = start(images["python"], "root=UUID={uuid} rd.break=mount")  # type: ignore[operator]
    vm.expect(r"pyinit rescue console \(stage mount\)")
    vm.expect(PROMPT)
    # (The kernel prints the init's kmsg records on the console only once the console
    # stops reading, so the break event shows up after the prompt is left.) The console
    # opened before mounting: nothing is on /sysroot yet.
    vm.send('print("mounted", os.path.ismount("/sysroot"))\n')
    vm.expect(r"mounted False")
    vm.expect(PROMPT)
    vm.send("\x04")  # Ctrl-D: end of input leaves the console
    vm.expect(r"TESTINIT done")
    vm.wait()
    log = vm.log
    assert log.index("event=break stage=mount") < log.index("event=root_mounted")


def test_ctrl_alt_del_reboots_cleanly(start: object, images: dict[str, str]) -> None:
    vm, _ = start(images["python"], "root=UUID={uuid} rd.break=discover")  # type: ignore[operator]
    vm.expect(PROMPT)
    vm.monitor("sendkey ctrl-alt-delete")
    vm.expect(r"Ctrl-Alt-Del: rebooting")
    vm.expect(r"event=power action=reboot")
    vm.expect(r"reboot: Restarting system")
    vm.wait()


def test_shell_children_are_ended_and_reaped(start: object, images: dict[str, str]) -> None:
    vm, _ = start(images["shell"], "root=UUID={uuid} rd.break=mount")  # type: ignore[operator]
    vm.expect(r"starting /bin/busybox \(stage mount\)")
    vm.expect(r"pyinit\(mount\)# ")
    vm.send("(sleep 1000 &) ; echo started-$((6*7))\n")  # the sleep is orphaned to PID 1
    vm.expect(r"started-42")
    vm.send("exit\n")
    vm.expect(r"event=children_ended count=1")
    vm.expect(r"TESTINIT done")
    procs = re.findall(r"PROC (\d+) (\S+) (\S) (\d+)", vm.log)
    assert [p[0] for p in procs] == ["1"], procs
    vm.wait()
