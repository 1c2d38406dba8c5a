"""dm-verity's boot half: the grammar, the superblock, the tree's top block and the table,
against hash devices that cryptsetup's veritysetup writes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import NamedTuple

import pytest

from pyinit import cmdline, devmapper, stages, verity
from pyinit.rootspec import parse_root
from pyinit.verity import Request, Settings, VerityError

pytestmark = pytest.mark.skipif(shutil.which("veritysetup") is None,
                                reason="needs veritysetup (cryptsetup-bin)")

HASH = "ab" * 32


def root_request(options: cmdline.Options) -> Request | None:
    return next((r for r in stages.verity_requests(options) if r.name == "root"), None)


class Formatted(NamedTuple):
    data: str
    hash: str
    root_hash: str
    dump: dict[str, str]


def veritysetup_format(tmp: Path, *extra: str, data_size: int = 1 << 20,
                       hash_device: str | None = None) -> Formatted:
    data = tmp / "data"
    data.write_bytes(os.urandom(data_size))
    hashed = str(data) if hash_device == "data" else str(tmp / "hash")
    out = subprocess.run(["veritysetup", "format", *extra, str(data), hashed],
                         check=True, capture_output=True, text=True).stdout
    dump = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in
                                                  out.splitlines()) if v}
    return Formatted(str(data), hashed, dump["Root hash"], dump)


def opened(found: Formatted, options: str = "") -> tuple[Request, verity.Geometry]:
    request = root_request(cmdline.parse(
        f"roothash={found.root_hash} systemd.verity_root_data=/dev/vda "
        f"systemd.verity_root_hash=/dev/vdb systemd.verity_root_options={options}"))
    assert request is not None
    with open(found.data, "rb") as data, open(found.hash, "rb") as hashed:
        shape = verity.geometry(request.settings, hashed.fileno(), found.hash,
                                os.fstat(data.fileno()).st_size)
        verity.check(request, shape, data.fileno(), hashed.fileno(), found.data, found.hash)
    return request, shape


def test_a_veritysetup_tree_checks_and_its_table(tmp_path: Path) -> None:
    found = veritysetup_format(tmp_path)
    request, shape = opened(found)
    assert shape.algorithm == "sha256" and shape.data_blocks == 256
    assert shape.salt.hex() == found.dump["Salt"]
    assert shape.uuid == found.dump["UUID"]
    assert verity.tree_blocks(shape) == (1, 4)  # superblock, top, two leaves
    target = verity.table(request, shape, (254, 1), (254, 2), None)
    assert target == devmapper.Target(0, 2048, "verity",
                                      f"1 254:1 254:2 4096 4096 256 1 sha256 {found.root_hash} "
                                      f"{found.dump['Salt']}")


def test_the_hash_tree_after_the_data_on_one_device(tmp_path: Path) -> None:
    found = veritysetup_format(tmp_path, "--hash-offset", str(1 << 20), "--data-blocks", "256",
                               data_size=2 << 20, hash_device="data")
    request, shape = opened(found, f"hash-offset={1 << 20}")
    assert shape.hash_start == 257  # the superblock's block is 256
    assert verity.table(request, shape, (8, 1), (8, 1), None).params.split()[6] == "257"


def test_options_reach_the_table(tmp_path: Path) -> None:
    found = veritysetup_format(tmp_path, "--hash", "sha512", "--salt", "-",
                               "--data-block-size", "1024")
    request, shape = opened(found, "restart-on-corruption,check-at-most-once,"
                                   "ignore-zero-blocks,data-block-size=1024")
    params = verity.table(request, shape, (1, 2), (3, 4), "key").params.split()
    assert params[:8] == ["1", "1:2", "3:4", "1024", "4096", "1024", "1", "sha512"]
    assert params[9:] == ["-", "5", "restart_on_corruption", "check_at_most_once",
                          "ignore_zero_blocks", "root_hash_sig_key_desc", "key"]


def test_without_a_superblock_the_options_say_it_all(tmp_path: Path) -> None:
    found = veritysetup_format(tmp_path, "--no-superblock", "--salt", "00ff")
    _request, shape = opened(found, "superblock=no,salt=00ff")
    assert (shape.hash_start, shape.data_blocks, shape.salt) == (0, 256, b"\x00\xff")


def test_a_wrong_root_hash_names_both_hashes(tmp_path: Path) -> None:
    found = veritysetup_format(tmp_path)
    wrong = found._replace(root_hash="00" * 32)
    with pytest.raises(VerityError, match=f"{found.hash}: the hash tree's top block hashes "
                       f"to {found.root_hash}, roothash= is {'00' * 32}: this hash device "
                       "does not belong to that root hash"):
        opened(wrong)


def test_a_flipped_byte_in_the_top_block_is_seen(tmp_path: Path) -> None:
    found = veritysetup_format(tmp_path)
    with open(found.hash, "r+b") as fh:
        fh.seek(4096 + 7)
        byte = fh.read(1)
        fh.seek(4096 + 7)
        fh.write(bytes([byte[0] ^ 1]))
    with pytest.raises(VerityError, match="top block hashes to"):
        opened(found)


@pytest.mark.parametrize(("damage", "message"), [
    (lambda p: p.write_bytes(p.read_bytes()[:100]),
     "at byte 0: expected a verity superblock of 512 bytes, found 100"),
    (lambda p: p.write_bytes(b"VERITY\0\0" + p.read_bytes()[8:]),
     r"at byte 0: expected a verity superblock \(magic 'verity'\), found b'VERITY\\x00\\x00'"),
    (lambda p: p.write_bytes(p.read_bytes()[:8192]),
     "holds 8192 bytes; the hash tree needs 16384"),
])
def test_a_damaged_hash_device_is_one_line(tmp_path: Path, damage: object, message: str
                                           ) -> None:
    found = veritysetup_format(tmp_path)
    damage(Path(found.hash))  # type: ignore[operator]
    with pytest.raises(VerityError, match=message) as caught:
        opened(found)
    assert "\n" not in str(caught.value)


def test_a_short_data_device(tmp_path: Path) -> None:
    found = veritysetup_format(tmp_path)
    os.truncate(found.data, 4096)
    with pytest.raises(VerityError, match=r"holds 4096 bytes; the hash tree covers 256 blocks "
                                          r"of 4096 \(1048576 bytes\)"):
        opened(found)


def test_a_root_hash_of_the_wrong_length(tmp_path: Path) -> None:
    found = veritysetup_format(tmp_path)
    with pytest.raises(VerityError, match=r"roothash= has 128 hex digits; the hash tree on .* "
                                          r"uses sha256, expected 64"):
        opened(found._replace(root_hash=found.root_hash * 2))


def test_options_that_disagree_with_the_superblock(tmp_path: Path) -> None:
    found = veritysetup_format(tmp_path)
    with pytest.raises(VerityError, match=r"data-blocks=9 in the verity options, but the "
                                          r"superblock on .* says 256"):
        opened(found, "data-blocks=9")


# The grammar: what the line asks for.

def test_the_partitions_come_from_the_root_hash() -> None:
    text = "0123456789abcdef" * 4
    request = root_request(cmdline.parse(f"roothash={text}"))
    assert request == Request(bytes.fromhex(text),
                              parse_root("PARTUUID=01234567-89ab-cdef-0123-456789abcdef"),
                              parse_root("PARTUUID=01234567-89ab-cdef-0123-456789abcdef"),
                              Settings())
    other = "00" * 16 + "ff" * 16
    request = root_request(cmdline.parse(f"roothash={other}"))
    assert request is not None
    assert request.data.value == "00000000-0000-0000-0000-000000000000"
    assert request.hash_device.value == "ffffffff-ffff-ffff-ffff-ffffffffffff"


@pytest.mark.parametrize("line", ["root=/dev/sda1", "systemd.verity=0 roothash=" + HASH,
                                  "rd.systemd.verity=no roothash=" + HASH,
                                  "systemd.verity=1 rd.systemd.verity=0 roothash=" + HASH])
def test_no_verity(line: str) -> None:
    options = cmdline.parse(line)
    assert root_request(options) is None


def test_the_later_switch_wins() -> None:
    options = cmdline.parse(f"rd.systemd.verity=0 systemd.verity=1 roothash={HASH}")
    assert root_request(options) is not None


def test_root_may_name_the_mapped_device() -> None:
    options = cmdline.parse(f"root=/dev/mapper/root roothash={HASH}")
    assert root_request(options) is not None
    assert stages.verified_root(options).root == parse_root("/dev/mapper/root")
    assert stages.verified_root(options._replace(read_only=False)).read_only


@pytest.mark.parametrize(("line", "message"), [
    ("roothash=xyz", "roothash=xyz: expected the root hash in hex"),
    ("roothash=abc", "roothash=abc: expected the root hash in hex"),
    ("roothash=", "roothash=: expected the root hash in hex"),
    (f"roothash={HASH} root=/dev/vda2", "root=/dev/vda2 with roothash=: the verified root is "
     "/dev/mapper/root; expected root=/dev/mapper/root or no root="),
    (f"roothash={'ab' * 20}", "160 bits are too few to find the partitions by"),
    (f"roothash={HASH} systemd.verity_root_data=", "systemd.verity_root_data=: expected"),
    (f"roothash={HASH} systemd.verity_root_options=fec-device=/dev/x",
     "fec-device=/dev/x: forward error correction is not supported"),
    (f"roothash={HASH} systemd.verity_root_options=hash=md5", "hash=md5: expected one of"),
    (f"roothash={HASH} systemd.verity_root_options=data-blocks=many",
     "data-blocks=many: expected a number"),
    (f"roothash={HASH} systemd.verity_root_options=salt=xyz", "salt=xyz: expected the salt"),
    (f"roothash={HASH} systemd.verity_root_options=format=2", "format=2: expected 0 or 1"),
    (f"roothash={HASH} systemd.verity_root_options=panic-on-corruption,ignore-corruption",
     "ignore-corruption: panic-on-corruption is given too"),
    (f"roothash={HASH} systemd.verity_root_options=wat",
     "systemd.verity_root_options: wat: expected superblock="),
    (f"roothash={HASH} systemd.verity=maybe", "systemd.verity=maybe: expected 0 or 1"),
    (f"usrhash={HASH} mount.usr=/dev/vdb", "mount.usr=/dev/vdb with usrhash=: the "
     "verified usr is /dev/mapper/usr; expected mount.usr=/dev/mapper/usr or no mount.usr="),
    ("usrhash=00", "usrhash=00: expected the usr hash in hex"),
    (f"usrhash={HASH} systemd.verity_usr_options=wat", "systemd.verity_usr_options: wat: "
     "expected superblock="),
])
def test_bad_lines_are_one_line(line: str, message: str) -> None:
    options = cmdline.parse(line)
    with pytest.raises(VerityError, match=re.escape(message)) as caught:
        root_request(options)
    assert "\n" not in str(caught.value)


def test_a_signature_inline_or_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "sig").write_bytes(b"\x30\x82")
    read = verity._read_file
    assert verity.signature("base64:MII=", read) == b"0\x82"
    assert verity.signature(str(tmp_path / "sig"), read) == b"\x30\x82"
    with pytest.raises(VerityError, match="expected base64 after base64:"):
        verity.signature("base64:%%", read)
    with pytest.raises(VerityError, match="cannot read it in the image: No such file"):
        verity.signature(str(tmp_path / "none"), read)


# The device-mapper calls.

def test_the_ioctl_numbers_are_libdevmappers() -> None:
    assert devmapper.HEADER.size == 312 and devmapper.TARGET.size == 40
    assert devmapper.request_code(devmapper.DEV_CREATE) == 0xC138FD03
    assert devmapper.request_code(devmapper.TABLE_LOAD) == 0xC138FD09


def test_a_target_is_packed_aligned() -> None:
    packed = devmapper._pack_target(devmapper.Target(0, 8, "verity", "abc"))
    assert len(packed) % 8 == 0
    assert devmapper.TARGET.unpack_from(packed)[3] == len(packed)
    assert packed[40:44] == b"abc\0"


def test_a_failed_call_names_the_call_and_the_device(tmp_path: Path) -> None:
    with pytest.raises(devmapper.DMError, match="device-mapper create root: cannot open "
                       rf"{tmp_path}/control: No such file or directory \(is dm_mod loaded"):
        devmapper.create("root", "uuid", control=str(tmp_path / "control"))
    (tmp_path / "control").write_bytes(b"")
    with pytest.raises(devmapper.DMError, match="device-mapper table load root: Inappropriate "
                       "ioctl"):
        devmapper.load("root", (devmapper.Target(0, 8, "zero", ""),), True,
                       control=str(tmp_path / "control"))


def test_the_node_is_made_once(tmp_path: Path) -> None:
    path = devmapper.node("root", (1, 3), str(tmp_path))  # 1:3 is /dev/null's number
    assert os.major(os.stat(path).st_rdev) == 1
    assert devmapper.node("root", (1, 3), str(tmp_path)) == path
    with pytest.raises(devmapper.DMError, match="exists and is not the device 1:5"):
        devmapper.node("root", (1, 5), str(tmp_path))


def test_an_image_without_verity_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    import pyinit

    monkeypatch.setitem(sys.modules, "pyinit.verity", None)  # as in an image without it
    monkeypatch.delattr(pyinit, "verity")
    with pytest.raises(stages.VerityMissing, match=re.escape(
            "roothash: this image carries no dm-verity support (rebuild it with --appliance)")):
        root_request(cmdline.parse(f"roothash={HASH}"))
    assert root_request(cmdline.parse("root=/dev/vda")) is None


def test_a_verified_usr_beside_the_root() -> None:
    other = "cd" * 32
    options = cmdline.parse(f"root=/dev/vda usrhash={other} systemd.verity_usr_data=/dev/vdb "
                            "systemd.verity_usr_hash=/dev/vdc")
    [usr] = stages.verity_requests(options)
    assert usr.name == "usr" and usr.data == parse_root("/dev/vdb")
    assert usr.hash_device == parse_root("/dev/vdc")
    assert stages.usr_spec(options, True) == parse_root("/dev/mapper/usr")
    both = stages.verity_requests(cmdline.parse(f"roothash={HASH} usrhash={other}"))
    assert [r.name for r in both] == ["root", "usr"]
    assert both[1].data.value == verity.partuuids(bytes.fromhex(other))[0]
    assert stages.verity_requests(cmdline.parse(f"systemd.verity=0 usrhash={other}")) == []


def test_mount_usr_without_verity() -> None:
    assert stages.usr_spec(cmdline.parse("root=/dev/vda mount.usr=LABEL=usr"), False) == \
        parse_root("LABEL=usr")
    assert stages.usr_spec(cmdline.parse("root=/dev/vda"), False) is None
    with pytest.raises(cmdline.CmdlineError, match=r"mount.usr= is empty: expected"):
        stages.usr_spec(cmdline.parse("root=/dev/vda mount.usr="), False)
