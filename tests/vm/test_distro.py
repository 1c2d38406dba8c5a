"""pyinit as Debian's initramfs tool, end to end.

A debootstrapped Debian 12 with systemd, laid out as Debian's installer does for "guided,
encrypted LVM" (LUKS2 partition, VG debian-vg with root and swap_1, crypttab and fstab),
gets pyinit's package, then Debian's 6.1 kernel package, both with apt (as the README says:
apt resolves their dependencies from the machine's mirror): the kernel hook builds
/boot/initrd.img-KVER. That kernel with that image then boots the system: systemd reports
no failed unit, the swap LV active, the initrd's time and pyinit's events in the journal,
and at power-off the image, unpacked again, takes the LVM on LUKS stack down without a
complaint. `pyinit-mkinitramfs --update all` rebuilds it; apt's removal of the kernel
package removes it. Going back to initramfs-tools leaves kernel installs working. Beside
it: --update's bad input and --boot-test.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pyinit.builder import archive, debpkg
from tests.vm import debian, harness, kernels, provision
from tests.vm.conftest import DRIVERS
from tests.vm.kernels import Kernel

REPO = Path(__file__).resolve().parents[2]
KEY = bytes(range(64, 128))
KEY_PATH = "/etc/keys/root.key"
LUKS_UUID = "7e57f00d-0000-4000-8000-0000000000d1"
ROOT_UUID = "7e57f00d-0000-4000-8000-0000000000d2"
FSTAB = ("/dev/mapper/debian--vg-root / ext4 errors=remount-ro 0 1\n"
         "/dev/mapper/debian--vg-swap_1 none swap sw 0 0\n")
# As Debian's installer writes it, with a key file instead of a passphrase (no one types
# here), marked for the initramfs; pyinit's configuration carries the key.
CRYPTTAB = f"vda1_crypt UUID={LUKS_UUID} {KEY_PATH} luks,discard,initramfs\n"
CONFIG = f'luks_keys = ["{KEY_PATH}"]\n'
ARGON = "--pbkdf argon2id --pbkdf-memory 32768 --pbkdf-force-iterations 4"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    """The Debian root with pyinit's package, then the 6.1 kernel package, installed.
    Returns (root, kernel version, what dpkg said while installing the kernel)."""
    top = tmp_path_factory.mktemp("distro")
    root = str(top / "root")
    debian.unpack(root)
    debian.configure(root, FSTAB, CRYPTTAB)
    key = Path(root) / KEY_PATH.lstrip("/")
    key.parent.mkdir(parents=True, exist_ok=True)
    key.write_bytes(KEY)
    key.chmod(0o400)
    debian.write(root, "/etc/pyinit/mkinitramfs.toml", CONFIG)
    debian.install_deb(root, debpkg.build(str(top)))
    said = debian.install_deb(root, kernels.deb_61())
    kver = next(n.removeprefix("vmlinuz-") for n in os.listdir(f"{root}/boot")
                if n.startswith("vmlinuz-"))
    return root, kver, said


@pytest.fixture(scope="module")
def encrypted_disk(installed: tuple[str, str, str], kernel7: Kernel,
                   tmp_path_factory: pytest.TempPathFactory) -> str:
    """The installed root on LVM on LUKS, as Debian's installer lays it out."""
    root, _kver, _ = installed
    ext4 = str(tmp_path_factory.mktemp("debian-ext4") / "root.ext4")
    used = int(subprocess.run(["du", "-sm", root], capture_output=True, text=True,
                              check=True).stdout.split()[0])
    size = used + used // 4 + 64
    harness.make_fs_image(ext4, root, "ext4", size, "debianroot", ROOT_UUID)
    digest = hashlib.sha256()
    with open(ext4, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)

    def make(path: str) -> None:
        os.link(ext4, path)

    script = (f"/sbin/cryptsetup luksFormat --batch-mode --type luks2 {ARGON} --uuid "
              f"{LUKS_UUID} /dev/vda1 /root.key\n"
              "/sbin/cryptsetup open --key-file /root.key /dev/vda1 vda1_crypt\n"
              "/sbin/lvm pvcreate -y /dev/mapper/vda1_crypt\n"
              "/sbin/lvm vgcreate -y debian-vg /dev/mapper/vda1_crypt\n"
              f"/sbin/lvm lvcreate -y -L {size}M -n root debian-vg\n"
              "/sbin/lvm lvcreate -y -l 100%FREE -n swap_1 debian-vg\n"
              "/bin/busybox dd if=/dev/vdb of=/dev/debian-vg/root bs=1M\n"
              "/sbin/mkswap /dev/debian-vg/swap_1\n"
              "/sbin/lvm vgchange -an debian-vg\n/sbin/cryptsetup close vda1_crypt\n")
    recipe = provision.Recipe(
        "debian-lvm-luks", [provision.Disk("d", size + 140, [("cryptlvm", 0)])], script,
        [provision.Input(f"ext4:{digest.hexdigest()}", make)], {"/root.key": KEY})
    return provision.provision(recipe, kernel7)["d"]


def test_the_kernel_package_gets_an_image_that_boots_systemd_on_lvm_on_luks(
        installed: tuple[str, str, str], encrypted_disk: str, tmp_path: Path) -> None:
    root, kver, said = installed
    image = f"{root}/boot/initrd.img-{kver}"
    assert os.path.isfile(image), said
    listing = subprocess.run([sys.executable, str(REPO / "mkinitramfs.py"), "--list", image],
                             capture_output=True, text=True, check=True).stdout
    assert "usr/lib/pyinit/pyinit/init.pyc" in listing  # pyinit's, not another tool's
    assert "etc/crypttab" in listing and KEY_PATH.lstrip("/") in listing
    # Generic (a chroot is no host): every stack this root has the tools for.
    assert "storage: luks, lvm, btrfs (" in said and "mdraid left out: no /sbin/mdadm" in said
    assert "udev: storage" in said
    [disk] = provision.copies({"d": encrypted_disk}, str(tmp_path)).values()
    result = harness.boot(f"{root}/boot/vmlinuz-{kver}", image, [disk],
                          "console=ttyS0 panic=-1 rd.shell=0 rd.emergency=poweroff "
                          "root=/dev/mapper/debian--vg-root "
                          "resume=/dev/mapper/debian--vg-swap_1",
                          str(tmp_path / "debian.log"), timeout=600, memory_mb=768)
    assert not result.timed_out, result.log[-4000:]
    probe = debian.probe(result.log)
    assert probe.get("done") == "", result.log[-4000:]
    assert probe["failed"] == "", probe  # no failed units
    assert probe["swaps"].split() in (["/dev/dm-2"], ["/dev/mapper/debian--vg-swap_1"]), probe
    assert int(probe["initrd-timestamp"]) > 0, probe
    assert "(initrd)" in probe["analyze"], probe
    # The initrd starts where the kernel ran /init (seconds into a TCG boot), not earlier.
    kernel_part = probe["analyze"].split("Startup finished in ")[1].split(" (kernel)")[0]
    assert kernel_part.endswith("s") and not kernel_part.endswith("ms"), probe
    # /run/initramfs/pyinit.log survived the move, and every one of its events reached the
    # journal through /dev/kmsg: the kernel lets only 10 records in 5 s through unless
    # printk_devkmsg=on, so a count of 10 or so would show nothing.
    assert probe["pyinit-log"].isdigit() and int(probe["pyinit-log"]) > 10, probe
    assert probe["journal-pyinit"] == probe["pyinit-log"], probe
    assert result.events("udevd_started")[0]["reason"] == "storage"
    assert "Timed out waiting for device" not in result.log
    assert [e["method"] for e in result.events("switch_root")] == ["move"]
    assert "--switched-root --system --deserialize" in probe["pid1"], probe
    # The shutdown: systemd pivots back into the image, unpacked again, whose /shutdown
    # takes the LVM on LUKS stack down. (systemd's own pass before that says "Could not
    # detach DM" for the busy root stack, as it does under every initramfs.)
    assert "Returning to initrd" in result.log, result.log[-4000:]
    assert "pyinit-shutdown: storage stack taken down" in result.log, result.log[-4000:]
    for complaint in ("Failed to detach", "Could not stop", "Kernel panic"):
        assert complaint not in result.log, complaint
    assert "reboot: Power down" in result.log


def test_removing_the_kernel_removes_its_image(installed: tuple[str, str, str]) -> None:
    root, kver, said = installed
    image = f"{root}/boot/initrd.img-{kver}"
    # The image the postinst hook made (pyinit's), or the removal below would prove nothing.
    assert os.path.isfile(image), said
    listing = subprocess.run([sys.executable, str(REPO / "mkinitramfs.py"), "--list", image],
                             capture_output=True, text=True, check=True).stdout
    assert "usr/lib/pyinit/pyinit/init.pyc" in listing
    # --update all rebuilds it (the new image replaces the hook's).
    before = os.stat(image).st_ino
    done = debian.in_chroot(root, "pyinit-mkinitramfs --update all")
    assert done.returncode == 0, done.stdout + done.stderr
    assert os.stat(image).st_ino != before, done.stdout
    done = debian.in_chroot(root, f"apt-get remove -y -q linux-image-{kver}-unsigned",
                            env={"DEBIAN_FRONTEND": "noninteractive"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert not os.path.exists(f"{root}/boot/vmlinuz-{kver}"), done.stdout  # the kernel went
    assert not os.path.exists(image), done.stdout  # and its image with it


def test_update_keeps_the_old_image_on_bad_input(kernel7: Kernel, tmp_path: Path) -> None:
    boot = tmp_path / "boot"
    boot.mkdir()
    (boot / f"vmlinuz-{kernel7.kver}").write_bytes(b"kernel")
    (boot / "vmlinuz-9.9.9-nomodules").write_bytes(b"kernel")
    old = boot / f"initrd.img-{kernel7.kver}"
    old.write_bytes(b"the previous image")

    def update(kver: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(REPO / "mkinitramfs.py"), "--update", kver,
                               "--boot-dir", str(boot), "--kmoddir", kernel7.moddir,
                               "--add-drivers",
                               " ".join(DRIVERS[kernel7.name]), *extra],
                              capture_output=True, text=True, timeout=300)

    for bad, message in ((update(kernel7.kver, "--compress-level", "99"), "compress"),
                         (update("9.9.9-none"), f"expected the kernel {boot}/vmlinuz-9.9.9-none"),
                         (update("9.9.9-nomodules"), "expected the kernel's modules in")):
        assert bad.returncode == 1 and bad.stderr.count("\n") == 1, bad.stderr
        assert message in bad.stderr
        assert old.read_bytes() == b"the previous image"
    good = update(kernel7.kver)
    assert good.returncode == 0, good.stderr
    # Replaced by a zstd image, after the uncompressed early-microcode archive where this
    # machine has microcode.
    formats = [fmt for fmt, _raw in archive.segments(old.read_bytes())]
    assert list(itertools.dropwhile(lambda fmt: fmt == "none", formats))[:1] == ["zstd"], formats


def test_boot_test_passes_a_good_image_and_fails_a_bad_one(kernel7: Kernel, tmp_path: Path,
                                                           root_tree: Path) -> None:
    image = str(tmp_path / "initrd.img")
    harness.build_image(image, kernel7.moddir, kernel7.kver, DRIVERS[kernel7.name])
    disk = harness.make_ext4_disk(str(tmp_path / "root.img"), str(root_tree))
    before = Path(disk.path).read_bytes()

    def boot_test(path: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(REPO / "mkinitramfs.py"), "--boot-test", path,
                               "--kernel", kernel7.vmlinuz, "--root", disk.path],
                              capture_output=True,
                              text=True, timeout=900)

    good = boot_test(image)
    assert good.returncode == 0, good.stdout + good.stderr
    assert good.stdout.startswith("boot test PASS:"), good.stdout
    assert "(TCG, software emulation)" in good.stdout or "(KVM" in good.stdout
    assert "stopped at: TESTINIT" in good.stdout, good.stdout
    assert Path(disk.path).read_bytes() == before  # the disk was never written
    # Without the disk's driver the root never appears: a FAIL that says where it stopped.
    config = tmp_path / "short.toml"
    config.write_text('cmdline = "rd.timeout=5"\n')
    bare = str(tmp_path / "bare.img")
    harness.build_image(bare, kernel7.moddir, kernel7.kver, ["xfs"],
                        extra=["--config", str(config)])
    bad = boot_test(bare)
    assert bad.returncode == 1 and bad.stdout.startswith("boot test FAIL:"), bad.stdout
    assert "stopped at: boot failed in stage discover: no device matched" in bad.stdout


def test_going_back_to_initramfs_tools_keeps_kernel_installs_working(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """apt installs pyinit's package, its Python runs (leaving __pycache__), then apt
    installs initramfs-tools, which removes pyinit without purging it: its hooks stay. A
    kernel installed after that installs, and initramfs-tools builds its image."""
    top = tmp_path_factory.mktemp("back-to-initramfs-tools")
    root = str(top / "root")
    debian.unpack(root)
    debian.network(root)
    deb = debpkg.build(str(top))
    shutil.copy(deb, f"{root}/tmp/")
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    done = debian.in_chroot(root, "apt-get update -q && apt-get install -y -q "
                            f"--no-install-recommends /tmp/{os.path.basename(deb)} && "
                            "pyinit-mkinitramfs --help >/dev/null && "
                            "ls /usr/lib/python3/dist-packages/pyinit/__pycache__ | head -1",
                            env=env)
    assert done.returncode == 0 and ".pyc" in done.stdout, done.stdout + done.stderr
    done = debian.in_chroot(root, "apt-get install -y -q --no-install-recommends "
                            "initramfs-tools", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Removing pyinit" in done.stdout, done.stdout
    assert os.path.exists(f"{root}/etc/kernel/postinst.d/pyinit")  # a conffile: it stays
    left = [str(p) for p in Path(f"{root}/usr/lib/python3/dist-packages").glob("pyinit/**/*")]
    assert left == [], left  # no compiled files left behind
    kernel_deb = kernels.deb_61()
    said = debian.install_deb(root, kernel_deb)  # raises when apt or dpkg fails
    assert not re.search(r"exited with (return code|status) 127|pyinit-mkinitramfs: not found",
                         said), said
    kver = next(n.removeprefix("vmlinuz-") for n in os.listdir(f"{root}/boot")
                if n.startswith("vmlinuz-"))
    image = f"{root}/boot/initrd.img-{kver}"
    assert os.path.isfile(image), said
    listing = subprocess.run([sys.executable, str(REPO / "mkinitramfs.py"), "--list", image],
                             capture_output=True, text=True, check=True).stdout
    assert "usr/lib/pyinit" not in listing and "scripts/" in listing  # initramfs-tools' own
