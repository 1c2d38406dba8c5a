"""The installs people have: LUKS1/LUKS2, LVM, mdraid and btrfs subvolumes, stacked in any
order, on the 7.x kernel (the 6.1 kernel boots the Debian layout too), with disks made in
a provisioning VM (tests/vm/provision.py) and cached by recipe."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.vm import harness, provision, stackdisks
from tests.vm.conftest import DRIVERS
from tests.vm.kernels import Kernel
from tests.vm.stackdisks import (
    INNER_LUKS_UUID,
    KEY,
    KEY_PATH,
    LUKS1_UUID,
    LUKS_UUID,
    PASSPHRASE,
    ROOT_UUID,
    STACK_LUKS_UUID,
)

UNATTENDED = "rd.shell=0 rd.emergency=poweroff"
STORAGE = ["--storage", "luks lvm mdraid btrfs"]


@pytest.fixture(scope="session")
def root_input(root_tree: Path) -> provision.Input:
    return stackdisks.root_input(str(root_tree))


@pytest.fixture(scope="session")
def raid1_61(kernel61: Kernel, root_input: provision.Input) -> dict[str, str]:
    """RAID1 disks made under the 6.1 kernel. Those the 7.x kernel assembled once are
    refused by 6.1 ("md: vda does not have a valid v1.2 superblock"), as on a machine that
    goes back to an older kernel after a newer one ran the array."""
    return provision.provision(stackdisks.raid1_recipe(root_input), kernel61)


@pytest.fixture(scope="session")
def raid1_luks_lvm_61(kernel61: Kernel, root_input: provision.Input) -> dict[str, str]:
    """RAID1 -> LUKS -> LVM made under the 6.1 kernel (see raid1_61)."""
    return provision.provision(stackdisks.raid1_luks_lvm(root_input), kernel61)


@pytest.fixture(scope="session")
def disks(kernel7: Kernel, root_input: provision.Input) -> dict[str, dict[str, str]]:
    """Every recipe's cached disks, made once per cache (one provisioning boot each)."""
    return {r.name: provision.provision(r, kernel7) for r in stackdisks.recipes(root_input)}


def storage_image_for(kernel: Kernel, tmp: Path) -> str:
    """An image with the four stacks and the key file, and no udevd (a busybox root)."""
    key = tmp / "root.key"
    key.write_bytes(KEY)
    image = str(tmp / "initrd-storage.img")
    harness.build_image(image, kernel.moddir, kernel.kver, DRIVERS[kernel.name],
                        extra=[*STORAGE, "--luks-key", f"{key}:{KEY_PATH}"], udev="none")
    return image


@pytest.fixture(scope="session")
def storage_image(kernel7: Kernel, tmp_path_factory: pytest.TempPathFactory) -> str:
    return storage_image_for(kernel7, tmp_path_factory.mktemp("storage-image"))


@pytest.fixture(scope="session")
def storage_image61(kernel61: Kernel, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The same for Debian 12's 6.1 kernel (modules uncompressed, MS_MOVE hand-over)."""
    return storage_image_for(kernel61, tmp_path_factory.mktemp("storage-image-61"))


def boot(kernel: Kernel, image: str, disks: list[str], cmdline: str, tmp_path: Path,
         memory_mb: int = 512, name: str = "boot") -> harness.BootResult:
    result = harness.boot(kernel.vmlinuz, image, disks,
                          f"console=ttyS0 panic=-1 {UNATTENDED} {cmdline}",
                          str(tmp_path / f"{name}.log"), timeout=300, memory_mb=memory_mb)
    assert not result.timed_out, result.log[-3000:]
    return result


def copies(paths: dict[str, str], tmp_path: Path, *names: str) -> list[str]:
    copied = provision.copies({n: paths[n] for n in names}, str(tmp_path))
    return [copied[n] for n in names]


def luks2_prompt(kernel7: Kernel, storage_image: str, disks: dict[str, dict[str, str]],
                 tmp_path: Path) -> harness.InteractiveVM:
    """A boot of the LUKS2 disk that asks for the passphrase on the serial console."""
    return harness.InteractiveVM(kernel7.vmlinuz, storage_image,
                                 copies(disks["luks2"], tmp_path, "d"),
                                 f"console=ttyS0 panic=-1 {UNATTENDED} root=UUID={ROOT_UUID} "
                                 f"rd.luks.uuid={LUKS_UUID}", str(tmp_path))


def test_luks2_passphrase_wrong_then_right(kernel7: Kernel, storage_image: str,
                                           disks: dict[str, dict[str, str]],
                                           tmp_path: Path) -> None:
    vm = luks2_prompt(kernel7, storage_image, disks, tmp_path)
    try:
        vm.expect(r"Please enter the passphrase for /dev/vda \(luks-" + LUKS_UUID)
        vm.send("not this one\n")
        vm.expect(r"wrong passphrase for /dev/vda \(2 left\)", timeout=180)
        vm.expect(r"Please enter the passphrase for /dev/vda")
        vm.send(PASSPHRASE + "\n")
        vm.expect(r"TESTINIT done", timeout=180)
        assert "not this one" not in vm.log and PASSPHRASE not in vm.log  # no echo
        assert "event=luks_unlocked device=/dev/vda name=luks-" + LUKS_UUID in vm.log
        vm.wait()
    finally:
        vm.stop()


def test_luks2_with_a_key_file(kernel7: Kernel, storage_image: str,
                               disks: dict[str, dict[str, str]], tmp_path: Path) -> None:
    result = boot(kernel7, storage_image, copies(disks["luks2"], tmp_path, "d"),
                  f"root=UUID={ROOT_UUID} rd.luks.name={LUKS_UUID}=cryptroot "
                  f"rd.luks.key={LUKS_UUID}={KEY_PATH}", tmp_path)
    assert "TESTINIT done" in result.log, result.log[-3000:]
    unlocked = result.events("luks_unlock")
    assert unlocked and unlocked[0]["name"] == "cryptroot" and unlocked[0]["key"] == "file"
    assert result.events("root_found")[0]["device"] == "/dev/dm-0"


def test_luks1(kernel7: Kernel, storage_image: str, disks: dict[str, dict[str, str]],
               tmp_path: Path) -> None:
    result = boot(kernel7, storage_image, copies(disks["luks1"], tmp_path, "d"),
                  f"root=UUID={ROOT_UUID} rd.luks.uuid={LUKS1_UUID} "
                  f"rd.luks.key={KEY_PATH}", tmp_path)
    assert "TESTINIT done" in result.log, result.log[-3000:]
    assert result.events("luks_unlock")[0]["luks"] == "1"


def test_lvm_on_luks_debian_layout_with_resume(kernel7: Kernel, tmp_path: Path,
                                               disks: dict[str, dict[str, str]]) -> None:
    """Nothing about crypto on the command line: the image's crypttab names the volume."""
    crypttab = tmp_path / "crypttab"
    crypttab.write_text(f"vda1_crypt UUID={LUKS_UUID} {KEY_PATH} luks,discard,initramfs\n")
    key = tmp_path / "root.key"
    key.write_bytes(KEY)
    config = tmp_path / "storage.toml"
    config.write_text(f'storage = ["luks", "lvm"]\ncrypttab = "{crypttab}"\n'
                      f'luks_keys = ["{key}:{KEY_PATH}"]\n')
    image = str(tmp_path / "initrd.img")
    harness.build_image(image, kernel7.moddir, kernel7.kver, DRIVERS[kernel7.name],
                        extra=["--config", str(config)], udev="none")
    listing = subprocess.run([sys.executable, str(Path(harness.REPO) / "mkinitramfs.py"), "--list",
                              image],
                             capture_output=True, text=True, check=True).stdout
    assert "etc/crypttab" in listing and "sbin/mdadm" not in listing  # only what was asked
    result = boot(kernel7, image, copies(disks["debian-layout"], tmp_path, "d"),
                  "root=/dev/mapper/debian--vg-root resume=/dev/mapper/debian--vg-swap_1",
                  tmp_path)
    assert "TESTINIT done" in result.log, result.log[-3000:]
    assert [e["target"] for e in result.events("lvm_activated")] == [
        "debian-vg/root", "debian-vg/swap_1"]
    resume = result.events("resume")
    assert resume and resume[0]["type"] == "swap"  # nothing hibernated on it


def test_hibernate_then_resume_through_lvm_on_luks(kernel7: Kernel, storage_image: str,
                                                   disks: dict[str, dict[str, str]],
                                                   tmp_path: Path) -> None:
    """Hibernate to the swap LV of Debian's layout, then boot again: pyinit unlocks the
    disk, activates the LVs and hands the swap to the kernel, which restores the machine
    (the hibernating init goes on where it stopped)."""
    [disk] = copies(disks["debian-layout"], tmp_path, "d")
    cmdline = (f"root=/dev/mapper/debian--vg-root resume=/dev/mapper/debian--vg-swap_1 "
               f"rd.luks.uuid={LUKS_UUID} rd.luks.key={KEY_PATH} init=/sbin/hibernate")
    first = boot(kernel7, storage_image, [disk], cmdline, tmp_path, name="hibernate")
    assert "HIBERNATE going down" in first.log, first.log[-3000:]
    # The image written, the machine went off (consoles suspended: no power-down line).
    assert "HIBERNATE resumed" not in first.log and "PM: hibernation" in first.log
    second = boot(kernel7, storage_image, [disk], cmdline, tmp_path, name="resume")
    resume = second.events("resume")
    assert resume and resume[0]["type"] == "swsuspend", second.log[-3000:]  # an image
    assert "HIBERNATE resumed pid=1" in second.log, second.log[-3000:]
    assert not second.events("root_mounted")  # restored before anything was mounted


def test_lvm_on_luks_and_a_degraded_raid1_on_the_6_1_kernel(
        kernel61: Kernel, storage_image61: str, disks: dict[str, dict[str, str]],
        raid1_61: dict[str, str], tmp_path: Path) -> None:
    """The two commonest stacks on Debian 12's own kernel, whose dm, md and crypto modules
    the image loads uncompressed, handing over with MS_MOVE."""
    result = boot(kernel61, storage_image61, copies(disks["debian-layout"], tmp_path, "d"),
                  f"root=/dev/mapper/debian--vg-root rd.luks.uuid={LUKS_UUID} "
                  f"rd.luks.key={KEY_PATH}", tmp_path, name="lvm-on-luks")
    assert "TESTINIT done" in result.log, result.log[-3000:]
    assert [e["target"] for e in result.events("lvm_activated")] == ["debian-vg/root"]
    assert [e["method"] for e in result.events("switch_root")] == ["move"]
    raid = boot(kernel61, storage_image61, copies(raid1_61, tmp_path, "a"),
                f"root=UUID={ROOT_UUID} rd.timeout=15", tmp_path, name="raid1")
    assert "TESTINIT done" in raid.log, raid.log[-3000:]
    assert raid.events("md_degraded") and "[U_]" in "".join(raid.lines("MDSTAT"))


def test_a_member_the_kernel_refuses_quotes_the_kernel(
        kernel61: Kernel, storage_image61: str, disks: dict[str, dict[str, str]],
        tmp_path: Path) -> None:
    """The 7.x kernel's RAID1 on the 6.1 kernel: mdadm says only "Invalid argument"; the
    failure quotes the kernel's reason beside it, and what to try."""
    result = boot(kernel61, storage_image61, copies(disks["raid1"], tmp_path, "a"),
                  f"root=UUID={ROOT_UUID} rd.timeout=15", tmp_path, name="refused")
    failure = next(line for line in result.log.splitlines()
                   if "boot failed in stage discover" in line)
    assert "mdadm --incremental /dev/vda exited with status" in failure, failure
    assert '(the kernel said: "md: vda does not have a valid v1.2 superblock' in failure, failure
    assert "try: read the kernel's words in the message" in result.log, result.log[-3000:]
    assert "reboot: Power down" in result.log


@pytest.mark.parametrize(("recipe", "names", "cmdline", "expect"), [
    ("luks1", ["d"], f"rd.luks.uuid={LUKS1_UUID} rd.luks.key={KEY_PATH}", "luks_unlocked"),
    ("luks-on-lvm", ["d"], f"rd.luks.uuid={INNER_LUKS_UUID} rd.luks.key={KEY_PATH}",
     "luks_unlocked"),
    ("raid1-luks-lvm", ["a", "b"], f"rd.luks.uuid={STACK_LUKS_UUID} rd.luks.key={KEY_PATH}",
     "lvm_activated"),
    ("btrfs-subvol", ["d"], "rootflags=subvol=@", "root_mounted"),
])
def test_the_other_stacks_on_the_6_1_kernel(
        kernel61: Kernel, storage_image61: str, disks: dict[str, dict[str, str]],
        raid1_luks_lvm_61: dict[str, str], tmp_path: Path, recipe: str, names: list[str],
        cmdline: str, expect: str) -> None:
    paths = raid1_luks_lvm_61 if recipe == "raid1-luks-lvm" else disks[recipe]
    root = "LABEL=subvolroot" if recipe == "btrfs-subvol" else f"UUID={ROOT_UUID}"
    result = boot(kernel61, storage_image61, copies(paths, tmp_path, *names),
                  f"root={root} {cmdline}", tmp_path)
    assert "TESTINIT done" in result.log, result.log[-3000:]
    assert result.events(expect)
    assert [e["method"] for e in result.events("switch_root")] == ["move"]


def test_luks_on_lvm(kernel7: Kernel, storage_image: str, disks: dict[str, dict[str, str]],
                     tmp_path: Path) -> None:
    result = boot(kernel7, storage_image, copies(disks["luks-on-lvm"], tmp_path, "d"),
                  f"root=UUID={ROOT_UUID} rd.luks.uuid={INNER_LUKS_UUID} "
                  f"rd.luks.key={KEY_PATH}", tmp_path)
    assert "TESTINIT done" in result.log, result.log[-3000:]
    assert [e["target"] for e in result.events("lvm_activated")] == ["vg0"]  # no names: all
    assert result.events("luks_unlocked")


def test_raid1_of_two_disks(kernel7: Kernel, storage_image: str,
                            disks: dict[str, dict[str, str]], tmp_path: Path) -> None:
    result = boot(kernel7, storage_image, copies(disks["raid1"], tmp_path, "a", "b"),
                  f"root=UUID={ROOT_UUID}", tmp_path)
    assert "TESTINIT done" in result.log, result.log[-3000:]
    assert result.events("md_started") and not result.events("md_degraded")
    assert "[UU]" in "".join(result.lines("MDSTAT"))


def test_raid1_with_a_disk_missing_boots_degraded(kernel7: Kernel, storage_image: str,
                                                  disks: dict[str, dict[str, str]],
                                                  tmp_path: Path) -> None:
    result = boot(kernel7, storage_image, copies(disks["raid1"], tmp_path, "a"),
                  f"root=UUID={ROOT_UUID} rd.timeout=15", tmp_path)
    assert "TESTINIT done" in result.log, result.log[-3000:]
    degraded = result.events("md_degraded")
    assert degraded and degraded[0]["present"] == "/dev/vda" and degraded[0]["missing"] == "1"
    assert degraded[0]["missing_slots"] == "1"  # the member that was /dev/vdb
    assert "[U_]" in "".join(result.lines("MDSTAT"))


def test_an_array_that_cannot_start_even_degraded_is_in_the_picture(
        kernel7: Kernel, storage_image: str, disks: dict[str, dict[str, str]],
        tmp_path: Path) -> None:
    result = boot(kernel7, storage_image, copies(disks["raid0"], tmp_path, "a"),
                  f"root=UUID={ROOT_UUID} rd.timeout=9", tmp_path)
    refused = result.events("md_not_started")
    assert refused and refused[0]["array"].startswith("/dev/md"), result.log[-3000:]
    assert re.search(r"boot failed in stage discover: .*arrays inactive: /dev/md\S+ \(UUID "
                     r"[0-9a-f:]+, members seen: /dev/vda\)", result.log), result.log[-3000:]
    assert "reboot: Power down" in result.log and "Attempted to kill init" not in result.log


def test_raid1_then_luks_then_lvm(kernel7: Kernel, storage_image: str,
                                  disks: dict[str, dict[str, str]], tmp_path: Path) -> None:
    result = boot(kernel7, storage_image, copies(disks["raid1-luks-lvm"], tmp_path, "a", "b"),
                  f"root=/dev/stackvg/root rd.luks.uuid={STACK_LUKS_UUID} "
                  f"rd.luks.key={KEY_PATH}", tmp_path)
    assert "TESTINIT done" in result.log, result.log[-3000:]
    order = ("md_started", "luks_unlocked", "lvm_activated", "root_found")
    positions = [result.log.index(f"event={name}") for name in order]
    assert positions == sorted(positions), positions


def test_btrfs_subvolume_root(kernel7: Kernel, storage_image: str,
                              disks: dict[str, dict[str, str]], tmp_path: Path) -> None:
    result = boot(kernel7, storage_image, copies(disks["btrfs-subvol"], tmp_path, "d"),
                  "root=LABEL=subvolroot rootflags=subvol=@", tmp_path)
    assert "TESTINIT done" in result.log, result.log[-3000:]
    assert "subvol=/@" in " ".join(result.lines("MOUNTINFO"))


def test_btrfs_top_level_without_init_says_subvol(kernel7: Kernel, storage_image: str,
                                                  disks: dict[str, dict[str, str]],
                                                  tmp_path: Path) -> None:
    result = boot(kernel7, storage_image, copies(disks["btrfs-subvol"], tmp_path, "d"),
                  "root=LABEL=subvolroot", tmp_path)
    assert "boot failed in stage switch_root: no init could be executed: /sbin/init: does " \
           "not exist" in result.log, result.log[-3000:]
    assert "a btrfs root may need rootflags=subvol=" in result.log


def test_btrfs_on_two_devices_waits_for_both(kernel7: Kernel, storage_image: str,
                                             disks: dict[str, dict[str, str]],
                                             tmp_path: Path) -> None:
    paths = copies(disks["btrfs-subvol"], tmp_path, "e", "f")
    result = boot(kernel7, storage_image, paths, "root=LABEL=tworoot", tmp_path)
    assert "TESTINIT done" in result.log, result.log[-3000:]


def test_an_argon2_keyslot_bigger_than_memory_is_one_clear_line(
        kernel7: Kernel, storage_image: str, tmp_path: Path) -> None:
    disk = tmp_path / "huge.img"
    with open(disk, "wb") as fh:
        fh.truncate(32 << 20)
    subprocess.run(["cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--pbkdf",
                    "argon2id", "--pbkdf-memory", "1048576", "--pbkdf-force-iterations", "4",
                    "--uuid", LUKS_UUID, str(disk), "-"], input=b"x", check=True,
                   capture_output=True)
    result = boot(kernel7, storage_image, [str(disk)],
                  f"root=UUID={ROOT_UUID} rd.luks.uuid={LUKS_UUID}", tmp_path)
    assert ("boot failed in stage discover: /dev/vda: LUKS keyslot 0 needs 1048576 KiB of "
            "memory for argon2id, and ") in result.log, result.log[-3000:]
    assert "Out of memory" not in result.log and "Kernel panic" not in result.log
    assert "reboot: Power down" in result.log


@pytest.mark.parametrize(("name", "cmdline", "message"), [
    ("missing key", f"rd.luks.uuid={LUKS_UUID} rd.luks.key=/etc/keys/none.key",
     "boot failed in stage discover: /dev/vda (luks-" + LUKS_UUID + "): key file "
     "/etc/keys/none.key is not in this image"),
    ("unknown VG", "rd.lvm.vg=nosuch rd.timeout=8",
     "volume groups named but not found: nosuch (found: none)"),
])
def test_bad_storage_input_is_one_line(kernel7: Kernel, storage_image: str,
                                       disks: dict[str, dict[str, str]], tmp_path: Path,
                                       name: str, cmdline: str, message: str) -> None:
    result = boot(kernel7, storage_image, copies(disks["luks2"], tmp_path, "d"),
                  f"root=UUID={ROOT_UUID} {cmdline}", tmp_path)
    assert message in result.log, result.log[-3000:]
    assert "reboot: Power down" in result.log and "Attempted to kill init" not in result.log


def test_a_damaged_luks_header_is_one_line(kernel7: Kernel, storage_image: str,
                                           disks: dict[str, dict[str, str]],
                                           tmp_path: Path) -> None:
    [disk] = copies(disks["luks2"], tmp_path, "d")
    with open(disk, "r+b") as fh:  # both copies of the JSON metadata
        for offset in (4096, 16384 + 4096):
            fh.seek(offset)
            fh.write(b"\0" * 512)
    result = boot(kernel7, storage_image, [disk],
                  f"root=UUID={ROOT_UUID} rd.luks.uuid={LUKS_UUID}", tmp_path)
    assert "boot failed in stage discover: /dev/vda (luks-" + LUKS_UUID + "): damaged LUKS2 " \
           "metadata" in result.log, result.log[-3000:]


def test_three_wrong_passphrases_end_in_the_failure_path(
        kernel7: Kernel, storage_image: str, disks: dict[str, dict[str, str]],
        tmp_path: Path) -> None:
    vm = luks2_prompt(kernel7, storage_image, disks, tmp_path)
    try:
        for left in (2, 1, 0):
            vm.expect(r"Please enter the passphrase for /dev/vda")
            vm.send("wrong\n")
            vm.expect(rf"wrong passphrase for /dev/vda \({left} left\)", timeout=180)
        vm.expect(r"boot failed in stage discover: /dev/vda \(luks-" + LUKS_UUID
                  + r"\): no keyslot opened with the passphrase, 3 tries")
        vm.expect(r"reboot: Power down")
        vm.wait()
    finally:
        vm.stop()
