"""dm-verity roots on real kernels: a squashfs image whose hash tree veritysetup wrote on the
host, mapped by the init as /dev/mapper/root through the device-mapper ioctls."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from pyinit import verity
from tests.vm import debian, harness
from tests.vm.kernels import Kernel

# init= on the verified root: reads a file that fills most of the image, then runs the
# test init in its place (still PID 1).
CHECK = r"""#!/bin/sh
echo "VERITY pid=$$"
echo "VERITY cmdline=$(cat /proc/cmdline)"
if cat /big > /dev/null 2>&1; then echo "VERITY read=ok"; else echo "VERITY read=failed"; fi
echo written > /written 2>/dev/null && echo "VERITY write=ok" || echo "VERITY write=refused"
exec /sbin/init
"""
BIG = 4 << 20  # incompressible, so squashfs stores it as it is


@dataclass
class Image:
    squashfs: str
    hash: str
    root_hash: str


def formatted(squashfs: str, hashed: str) -> Image:
    out = subprocess.run(["veritysetup", "format", squashfs, hashed], check=True,
                         capture_output=True, text=True).stdout
    root_hash = next(line.split(":", 1)[1].strip() for line in out.splitlines()
                     if line.startswith("Root hash:"))
    return Image(squashfs, hashed, root_hash)


def flip(path: str, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))


@pytest.fixture(scope="session")
def verity_images(root_tree: Path, tmp_path_factory: pytest.TempPathFactory
                  ) -> dict[str, Image]:
    """Two slots' squashfs images with their hash trees: "a" good, "b" corrupt at its start
    (the squashfs superblock), and "flipped": "a" with one byte of /big changed."""
    top = tmp_path_factory.mktemp("verity")
    images = {}
    for slot in ("a", "b"):
        tree = top / f"tree-{slot}"
        shutil.copytree(root_tree, tree, symlinks=True)
        (tree / "big").write_bytes(os.urandom(BIG))
        (tree / "etc/slot").write_text(f"{slot}\n")
        check = tree / "sbin/veritycheck"
        check.write_text(CHECK)
        check.chmod(0o755)
        squashfs = str(top / f"{slot}.squashfs")
        harness.make_fs_image(squashfs, str(tree), "squashfs", 1, "unused")
        images[slot] = formatted(squashfs, str(top / f"{slot}.hash"))
    flipped = str(top / "flipped.squashfs")
    shutil.copy(images["a"].squashfs, flipped)
    flip(flipped, os.path.getsize(flipped) // 2)  # inside /big
    images["flipped"] = Image(flipped, images["a"].hash, images["a"].root_hash)
    flip(images["b"].squashfs, 100)  # after the tree was made: slot B no longer verifies
    return images


@pytest.fixture(scope="session")
def ab_disk(verity_images: dict[str, Image], tmp_path_factory: pytest.TempPathFactory) -> str:
    """One GPT disk with both slots, each partition's PARTUUID from its root hash (systemd's
    discoverable partitions): a1 a2 b1 b2."""
    top = tmp_path_factory.mktemp("ab-disk")
    parts = []
    for slot in ("a", "b"):
        image = verity_images[slot]
        data_uuid, hash_uuid = verity.partuuids(bytes.fromhex(image.root_hash))
        for kind, path, guid in (("data", image.squashfs, data_uuid),
                                 ("hash", image.hash, hash_uuid)):
            size_mb = -(-os.path.getsize(path) // (1 << 20))
            parts.append(harness.Partition(f"{slot}-{kind}", "raw", size_mb, "", guid=guid,
                                           image=path))
    disk = str(top / "ab.img")
    harness.make_gpt_disk(disk, "", parts, str(top))
    return disk


def boot(kernel: Kernel, image: str, disks: list[str], cmdline: str, tmp_path: Path
         ) -> harness.BootResult:
    result = harness.boot(kernel.vmlinuz, image, disks,
                          f"console=ttyS0 panic=-1 {cmdline}",
                          str(tmp_path / "boot.log"), timeout=240)
    assert not result.timed_out, result.log[-3000:]
    return result


def said(result: harness.BootResult) -> dict[str, str]:
    return dict(line.split("=", 1) for line in result.lines("VERITY ") if "=" in line)


@pytest.mark.parametrize("kernel_name", ["debian-6.1", "debian-7"])
def test_a_verified_squashfs_root_with_its_devices_named(
        kernel_name: str, request: pytest.FixtureRequest,
        appliance_image: Callable[[Kernel], str], verity_images: dict[str, Image],
        tmp_path: Path) -> None:
    kernel: Kernel = request.getfixturevalue("kernel61" if kernel_name == "debian-6.1"
                                             else "kernel7")
    good = verity_images["a"]
    result = boot(kernel, appliance_image(kernel), [good.squashfs, good.hash],
                  f"roothash={good.root_hash} systemd.verity_root_data=/dev/vda "
                  "systemd.verity_root_hash=/dev/vdb rw init=/sbin/veritycheck rauc.slot=A",
                  tmp_path)
    answers = said(result)
    assert answers.get("pid") == "1", result.log[-3000:]
    # An A/B updater reads the booted slot from the line as the boot loader wrote it.
    assert "rauc.slot=A" in answers["cmdline"].split()
    assert "systemd.verity_root_data=/dev/vda" in answers["cmdline"].split()
    assert answers["read"] == "ok" and answers["write"] == "refused"
    [opened] = result.events("verity_opened")
    assert opened["device"] == "/dev/mapper/root" and opened["data"] == "/dev/vda"
    assert opened["hash"] == "/dev/vdb" and opened["root_hash"] == good.root_hash
    [mounted] = result.events("root_mounted")
    # /dev/mapper/root's kernel name; rw on the line is ignored, and nothing is fscked
    assert mounted["device"].startswith("/dev/dm-") and mounted["mode"] == "ro"
    assert not result.events("fsck")
    root_line = next(line for line in result.lines("MOUNTINFO") if " / / " in line)
    assert f" - squashfs {mounted['device']} ro" in root_line, root_line
    assert "TESTINIT done" in result.log


def test_the_partitions_found_from_the_root_hash_under_an_overlay(
        kernel7: Kernel, appliance_image: Callable[[Kernel], str],
        verity_images: dict[str, Image], ab_disk: str, tmp_path: Path) -> None:
    good = verity_images["a"]
    result = boot(kernel7, appliance_image(kernel7), [ab_disk],
                  f"roothash={good.root_hash} systemd.volatile=overlay init=/sbin/veritycheck",
                  tmp_path)
    answers = said(result)
    assert answers.get("pid") == "1", result.log[-3000:]
    assert answers["read"] == "ok" and answers["write"] == "ok"  # into the tmpfs
    [opened] = result.events("verity_opened")
    assert (opened["data"], opened["hash"]) == ("/dev/vda1", "/dev/vda2")
    assert result.events("overlay_mounted")
    assert "TESTINIT done" in result.log


def test_slot_b_corrupt_is_never_replaced_by_slot_a(
        kernel7: Kernel, appliance_image: Callable[[Kernel], str],
        verity_images: dict[str, Image], ab_disk: str, tmp_path: Path) -> None:
    slot_b = verity_images["b"]
    result = boot(kernel7, appliance_image(kernel7), [ab_disk], f"roothash={slot_b.root_hash}",
                  tmp_path)
    assert (f"boot failed in stage verity: verity root (data /dev/vda3, hash /dev/vda4, "
            f"roothash {slot_b.root_hash}): its first data block does not match the hash "
            "tree: Input/output error (the kernel said: ") in result.log, result.log[-3000:]
    assert "data block 0 is corrupted" in result.log and "verity_opened" not in result.log
    assert "root_mounted" not in result.log and "TESTINIT" not in result.log
    assert "rd.emergency=reboot" in result.log and "reboot: Restarting system" in result.log


def test_a_flipped_byte_reads_as_an_error(
        kernel7: Kernel, appliance_image: Callable[[Kernel], str],
        verity_images: dict[str, Image], tmp_path: Path) -> None:
    flipped = verity_images["flipped"]
    result = boot(kernel7, appliance_image(kernel7), [flipped.squashfs, flipped.hash],
                  f"roothash={flipped.root_hash} systemd.verity_root_data=/dev/vda "
                  "systemd.verity_root_hash=/dev/vdb init=/sbin/veritycheck", tmp_path)
    answers = said(result)
    assert answers.get("pid") == "1", result.log[-3000:]
    assert answers["read"] == "failed"  # EIO: no corruption option given
    assert "data block" in result.log and "is corrupted" in result.log
    assert "TESTINIT done" in result.log


def test_a_wrong_root_hash_mounts_nothing_and_resets(
        kernel7: Kernel, appliance_image: Callable[[Kernel], str],
        verity_images: dict[str, Image], tmp_path: Path) -> None:
    good, other = verity_images["a"], verity_images["b"]
    result = boot(kernel7, appliance_image(kernel7), [good.squashfs, good.hash],
                  f"roothash={other.root_hash} systemd.verity_root_data=/dev/vda "
                  "systemd.verity_root_hash=/dev/vdb", tmp_path)
    assert (f"boot failed in stage verity: /dev/vdb: the hash tree's top block hashes to "
            f"{good.root_hash}, roothash= is {other.root_hash}") in result.log, \
        result.log[-3000:]
    assert "verity_opened" not in result.log and "root_mounted" not in result.log
    assert "reboot: Restarting system" in result.log


def test_a_signature_the_kernel_does_not_trust_is_refused(
        kernel7: Kernel, appliance_image: Callable[[Kernel], str],
        verity_images: dict[str, Image], tmp_path: Path) -> None:
    good = verity_images["a"]
    key, cert, text, sig = (str(tmp_path / n) for n in ("key.pem", "cert.pem", "hash", "sig"))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "1", "-subj", "/CN=pyinit untrusted test"],
                   check=True, capture_output=True)
    Path(text).write_text(good.root_hash)
    subprocess.run(["openssl", "smime", "-sign", "-nocerts", "-noattr", "-binary", "-in", text,
                    "-inkey", key, "-signer", cert, "-outform", "der", "-out", sig],
                   check=True, capture_output=True)
    signature = base64.b64encode(Path(sig).read_bytes()).decode()
    result = boot(kernel7, appliance_image(kernel7), [good.squashfs, good.hash],
                  f"roothash={good.root_hash} systemd.verity_root_data=/dev/vda "
                  "systemd.verity_root_hash=/dev/vdb "
                  f"systemd.verity_root_options=root-hash-signature=base64:{signature}",
                  tmp_path)
    assert ("boot failed in stage verity: verity root (data /dev/vda, hash /dev/vdb, roothash "
            f"{good.root_hash}): the kernel refused the table with root-hash-signature=") \
        in result.log, result.log[-3000:]
    assert "root_mounted" not in result.log


def test_a_verified_debian_root_under_an_overlay_boots_systemd(
        kernel7: Kernel, appliance_image: Callable[[Kernel], str], tmp_path: Path) -> None:
    """The debootstrapped Debian as a squashfs under dm-verity, systemd.volatile=overlay:
    systemd comes up with no failed unit, its writes in the tmpfs."""
    root = str(tmp_path / "root")
    debian.unpack(root)
    debian.configure(root, "# the root is the initramfs's: a verified image under an overlay\n")
    squashfs = str(tmp_path / "debian.squashfs")
    subprocess.run(["mksquashfs", root, squashfs, "-noappend", "-quiet", "-no-progress",
                    "-comp", "zstd"], check=True)
    shutil.rmtree(root)
    image = formatted(squashfs, str(tmp_path / "debian.hash"))
    result = harness.boot(kernel7.vmlinuz, appliance_image(kernel7), [image.squashfs, image.hash],
                          f"console=ttyS0 panic=-1 roothash={image.root_hash} "
                          "systemd.verity_root_data=/dev/vda systemd.verity_root_hash=/dev/vdb "
                          "systemd.volatile=overlay", str(tmp_path / "debian.log"),
                          timeout=600, memory_mb=768)
    assert not result.timed_out, result.log[-4000:]
    probe = debian.probe(result.log)
    assert probe.get("done") == "", result.log[-4000:]
    assert probe["failed"] == "", probe  # no failed units
    assert result.events("verity_opened") and result.events("overlay_mounted")
    assert "--switched-root --system --deserialize" in probe["pid1"], probe


USR_CHECK = r"""#!/bin/sh
echo "USR marker=$(cat /usr/marker 2>/dev/null || echo none)"
if (echo x > /usr/x) 2>/dev/null; then echo "USR write=ok"; else echo "USR write=refused"; fi
exec /sbin/init
"""


def test_a_verified_usr_on_a_plain_root(kernel7: Kernel, appliance_image: Callable[[Kernel], str],
                                        root_tree: Path, tmp_path: Path) -> None:
    """usrhash= makes /dev/mapper/usr, mounted read-only on /sysroot/usr."""
    tree = tmp_path / "root"
    shutil.copytree(root_tree, tree, symlinks=True)
    (tree / "usr").mkdir(exist_ok=True)
    (tree / "sbin/usrcheck").write_text(USR_CHECK)
    (tree / "sbin/usrcheck").chmod(0o755)
    disk = harness.make_ext4_disk(str(tmp_path / "root.ext4"), str(tree))
    (tmp_path / "usr").mkdir()
    (tmp_path / "usr/marker").write_text("verified-usr\n")
    squashfs = str(tmp_path / "usr.squashfs")
    harness.make_fs_image(squashfs, str(tmp_path / "usr"), "squashfs", 1, "unused")
    usr = formatted(squashfs, str(tmp_path / "usr.hash"))
    result = boot(kernel7, appliance_image(kernel7), [disk.path, usr.squashfs, usr.hash],
                  f"root=/dev/vda usrhash={usr.root_hash} systemd.verity_usr_data=/dev/vdb "
                  "systemd.verity_usr_hash=/dev/vdc init=/sbin/usrcheck", tmp_path)
    assert result.lines("USR marker=") == ["verified-usr"], result.log[-3000:]
    assert result.lines("USR write=") == ["refused"]
    [opened] = result.events("verity_opened")
    assert opened["name"] == "usr" and opened["device"] == "/dev/mapper/usr"
    [mounted] = result.events("usr_mounted")
    assert mounted["type"] == "squashfs" and mounted["mode"] == "ro"
    assert mounted["target"] == "/sysroot/usr"
    assert "TESTINIT pid=1" in result.log and "TESTINIT done" in result.log
