"""The storage stacks' boot halves, where no kernel is needed: LUKS headers, crypttab and the
command line, LVM names, mdadm's report, and the passphrase prompt on a pseudo-terminal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pyinit import cmdline, command, prompt, storage
from pyinit.cmdline import parse
from pyinit.rootspec import RootSpec
from pyinit.storage import StorageError, flag, luks, lvm, mdraid


def luks_image(path: Path, version: int, memory_kib: int = 32768) -> Path:
    with open(path, "wb") as fh:
        fh.truncate(20 << 20)
    argv = ["cryptsetup", "luksFormat", "--batch-mode", "--type", f"luks{version}", str(path),
            "-"]
    if version == 2:
        argv[3:3] = ["--pbkdf", "argon2id", "--pbkdf-memory", str(memory_kib),
                     "--pbkdf-force-iterations", "4"]
    else:
        argv[3:3] = ["--pbkdf-force-iterations", "1000"]
    subprocess.run(argv, input=b"secret", check=True, capture_output=True)
    return path


def test_luks2_keyslots_tell_their_argon2_memory(tmp_path: Path) -> None:
    image = luks_image(tmp_path / "l2.img", 2, 65536)
    version, slots = luks.keyslots(luks.read_header(str(image)))
    assert version == 2
    assert slots[0] == luks.Keyslot(0, "argon2id", 65536)


def test_luks1_keyslots_are_pbkdf2(tmp_path: Path) -> None:
    version, slots = luks.keyslots(luks.read_header(str(luks_image(tmp_path / "l1.img", 1))))
    assert (version, slots) == (1, [luks.Keyslot(0, "pbkdf2", 0)])


def test_a_damaged_header_is_named(tmp_path: Path) -> None:
    image = luks_image(tmp_path / "d.img", 2)
    data = bytearray(luks.read_header(str(image)))
    data[4096:4200] = b"\0" * 104  # the JSON metadata
    with pytest.raises(StorageError, match="damaged LUKS2 metadata"):
        luks.keyslots(bytes(data))
    with pytest.raises(StorageError, match=r"no LUKS header"):
        luks.keyslots(b"\0" * 8192)


def test_a_keyslot_too_big_for_memory_says_what_to_do() -> None:
    slots = [luks.Keyslot(0, "argon2id", 1048576), luks.Keyslot(1, "argon2id", 2097152)]
    with pytest.raises(StorageError) as err:
        luks.usable_slots("/dev/vda2", slots, 400000)
    assert str(err.value) == (
        "/dev/vda2: LUKS keyslot 0 needs 1048576 KiB of memory for argon2id, and 400000 KiB "
        "are available (no keyslot fits): boot with more memory, or add a keyslot made for "
        "less (cryptsetup luksAddKey --pbkdf-memory 200000 /dev/vda2)")
    small = luks.Keyslot(2, "argon2id", 32768)
    assert luks.usable_slots("/dev/vda2", [*slots, small], 400000) == [small]


def test_systemd_command_line_grammar() -> None:
    uuid = "0123abcd-0000-4000-8000-000000000001"
    other = "0123abcd-0000-4000-8000-000000000002"
    volumes, errors, settings = luks.from_cmdline([
        f"rd.luks.uuid=luks-{uuid}", f"rd.luks.name={other}=cryptroot",
        f"rd.luks.options={other}=discard,tries=5", "rd.luks.options=timeout=30",
        f"luks.key={other}=/etc/keys/root.key"])
    assert errors == [] and settings == {"enabled": True, "crypttab": True, "auto": False}
    assert [(v.spec, v.name, v.key, v.options, v.named) for v in volumes] == [
        (RootSpec("uuid", uuid), f"luks-{uuid}", None, {"timeout": "30"}, True),
        (RootSpec("uuid", other), "cryptroot", "/etc/keys/root.key",
         {"timeout": "30", "discard": "", "tries": "5"}, True)]
    assert luks.from_cmdline(["rd.luks=0", "luks.crypttab=no"])[2]["enabled"] is False
    bad = luks.check_cmdline(["rd.luks.name=cryptroot", "rd.luks.key=relative/key",
                              f"rd.luks.key={uuid}=/k:UUID=abc",
                              f"rd.luks.options={uuid}=tries=x,bogus"])
    assert bad == [
        "rd.luks.name=cryptroot: expected UUID=NAME",
        "rd.luks.key=relative/key: expected [UUID=]/PATH",
        f"rd.luks.key={uuid}=/k:UUID=abc: a key on another device (UUID=abc) is not "
        "supported: put the key in the image (mkinitramfs.py --luks-key /k)",
        f"rd.luks.options for luks-{uuid}: tries=x: expected a whole number",
        f"rd.luks.options for luks-{uuid}: bogus: expected one of luks, discard, tries, "
        "header, keyfile-offset, keyfile-size, noauto, nofail, initramfs, x-initrd.attach, "
        "timeout, readonly, read-only, keyfile-timeout, x-systemd.device-timeout, _netdev"]


def test_named_volumes_keep_their_crypttab_entries() -> None:
    uuid = "0123abcd-0000-4000-8000-00000000000a"
    listed, _ = luks.parse_crypttab(
        f"vda5_crypt UUID={uuid} /etc/keys/root.key luks,discard\n"
        "other UUID=0123abcd-0000-4000-8000-00000000000b none luks\n")
    named, _, _ = luks.from_cmdline([f"rd.luks.uuid={uuid}", "rd.luks.options=tries=5"])
    [volume] = luks.merge(named, listed, [f"rd.luks.uuid={uuid}"])
    assert (volume.name, volume.key) == ("vda5_crypt", "/etc/keys/root.key")
    assert volume.options == {"luks": "", "discard": "", "tries": "5"}
    params = [f"rd.luks.name={uuid}=cryptroot"]
    [renamed] = luks.merge(luks.from_cmdline(params)[0], listed, params)
    assert renamed.name == "cryptroot" and renamed.key == "/etc/keys/root.key"
    assert luks.merge([], listed, []) == listed


def test_crypttab_as_debian_writes_it() -> None:
    volumes, errors = luks.parse_crypttab(
        "# <target name> <source device> <key file> <options>\n"
        "vda5_crypt UUID=0123abcd-0000-4000-8000-00000000000a none luks,discard\n"
        "data /dev/vdb /etc/keys/data.key luks,noauto,keyfile-size=64\n"
        "broken\n"
        "plainswap /dev/vdc /dev/urandom plain,swap\n")
    assert [(v.spec, v.name, v.key, v.options) for v in volumes] == [
        (RootSpec("uuid", "0123abcd-0000-4000-8000-00000000000a"), "vda5_crypt", None,
         {"luks": "", "discard": ""}),
        (RootSpec("path", "/dev/vdb"), "data", "/etc/keys/data.key",
         {"luks": "", "noauto": "", "keyfile-size": "64"})]
    assert errors == ["/etc/crypttab line 4: expected NAME SOURCE [KEY [OPTIONS]], found "
                      "'broken'",
                      "/etc/crypttab line 5: plainswap: only LUKS volumes are supported"]


@pytest.mark.parametrize(("path", "expected"), [
    ("/dev/mapper/debian--vg-root", ("debian-vg", "root")),
    ("/dev/mapper/vg-swap_1", ("vg", "swap_1")),
    ("/dev/mapper/a--b-c--d", ("a-b", "c-d")),
    ("/dev/debian-vg/root", ("debian-vg", "root")),
    ("/dev/mapper/luks-abc", ("luks", "abc")),
    ("/dev/mapper/cryptroot", None),
    ("/dev/disk/by-uuid/x", None),
    ("/dev/vda1", None),
])
def test_lvm_names_from_root(path: str, expected: tuple[str, str] | None) -> None:
    assert lvm.volume_of(RootSpec("path", path)) == expected


def test_lvm_activates_what_is_named_or_everything() -> None:
    named = lvm.Wanted(["rd.lvm.lv=vg0/data", "rd.lvm.vg=other"],
                       RootSpec("path", "/dev/mapper/debian--vg-root"))
    assert not named.auto and named.errors == []
    assert named.targets("debian-vg", ["root", "swap_1"]) == ["debian-vg/root"]
    assert named.targets("other", ["x"]) == ["other"]
    assert named.targets("vg0", ["data"]) == ["vg0/data"]
    assert named.targets("unrelated", ["x"]) == []
    everything = lvm.Wanted([], RootSpec("uuid", "abc"))
    assert everything.auto and everything.targets("unrelated", ["x"]) == ["unrelated"]
    # A swap LV named by resume= does not turn the root's (root=UUID=) activation off.
    with_resume = lvm.Wanted([], RootSpec("uuid", "abc"),
                             RootSpec("path", "/dev/mapper/vg-swap_1"))
    assert with_resume.auto and with_resume.targets("vg", ["root", "swap_1"]) == ["vg"]
    assert lvm.check_cmdline(["rd.lvm.lv=justvg"]) == ["rd.lvm.lv=justvg: expected VG/LV"]
    assert flag(["rd.lvm=0"], "rd.lvm") is False and flag([], "rd.lvm") is None


def test_lvm_resume_by_uuid_widens_to_the_roots_group() -> None:
    # Debian's encrypted LVM: root named by path, resume= by the swap's UUID (no path).
    root = RootSpec("path", "/dev/mapper/debian--vg-root")
    resume = RootSpec("uuid", "0a1b2c3d-0000-4000-8000-000000000001")
    wanted = lvm.Wanted([], root, resume)
    assert not wanted.auto
    assert wanted.targets("debian-vg", ["root", "swap_1"]) == ["debian-vg"]
    assert wanted.targets("other-vg", ["data"]) == []
    # A resume link that is no VG/LV path names no volume either.
    by_link = lvm.Wanted([], root, RootSpec("path", "/dev/dm-2"))
    assert by_link.targets("debian-vg", ["root", "swap_1"]) == ["debian-vg"]
    # Without resume=, or with resume= naming the swap volume, only what is named.
    assert lvm.Wanted([], root).targets("debian-vg", ["root", "swap_1"]) == ["debian-vg/root"]
    named = lvm.Wanted([], root, RootSpec("path", "/dev/debian-vg/swap_1"))
    assert named.targets("debian-vg", ["root", "swap_1"]) == [
        "debian-vg/root", "debian-vg/swap_1"]
    # rd.lvm.* are explicit choices, kept as they are.
    explicit = lvm.Wanted(["rd.lvm.lv=debian-vg/root"], root, resume)
    assert explicit.targets("debian-vg", ["root", "swap_1"]) == ["debian-vg/root"]
    by_vg = lvm.Wanted(["rd.lvm.vg=other-vg"], root, resume)
    assert by_vg.targets("debian-vg", ["root", "swap_1"]) == ["debian-vg/root"]


def test_lvm_segment_types_name_every_module_they_load() -> None:
    assert lvm.target_modules("linear") == lvm.target_modules("striped") == ()
    assert lvm.target_modules("thin") == lvm.target_modules("thin-pool") == ("dm_thin_pool",)
    # dm_raid asks the kernel for its md personality; dm_cache for its default policy.
    assert lvm.target_modules("raid1") == ("dm_raid", "raid1")
    assert lvm.target_modules("raid5_ls") == lvm.target_modules("raid6_zr") == (
        "dm_raid", "raid456")
    assert lvm.target_modules("raid10_near") == ("dm_raid", "raid10")
    assert lvm.target_modules("raid0_meta") == ("dm_raid", "raid0")
    assert lvm.target_modules("cache") == ("dm_cache", "dm_cache_smq")
    assert lvm.target_modules("vdo-pool") == ("dm_vdo",)
    # The build half carries all of them (where the kernel has them as modules).
    loaded = {m for mods in lvm.TARGETS.values() for m in mods}
    assert loaded <= set(lvm.NEEDS.optional_modules)
    assert {"dm_thin_pool", "dm_raid", "dm_mirror", "dm_snapshot", "dm_cache"} <= loaded


@pytest.mark.parametrize(("params", "expected"), [
    (["rd.luks.uuid=notauuid"], ["rd.luks.uuid=notauuid: expected a UUID (8-4-4-4-12 hex "
                                 "digits, with or without the luks- prefix)"]),
    (["rd.luks.uuid="], ["rd.luks.uuid=: expected a UUID (8-4-4-4-12 hex digits, with or "
                         "without the luks- prefix)"]),
    (["luks.uuid=luks-0123abcd-0000-4000-8000"], [
        "luks.uuid=luks-0123abcd-0000-4000-8000: expected a UUID (8-4-4-4-12 hex digits, "
        "with or without the luks- prefix)"]),
    (["rd.luks.uuid=0123abcd-0000-4000-8000-00000000000g"], [
        "rd.luks.uuid=0123abcd-0000-4000-8000-00000000000g: expected a UUID (8-4-4-4-12 hex "
        "digits, with or without the luks- prefix)"]),
    (["rd.luks=maybe", "luks.crypttab=sometimes"], ["rd.luks=maybe: expected 0 or 1",
                                                    "luks.crypttab=sometimes: expected 0 or 1"]),
    (["rd.luks.uuid=luks-0123ABCD-0000-4000-8000-00000000000A",
      "luks.uuid=0123abcd-0000-4000-8000-00000000000b", "rd.luks=1", "rd.luks.crypttab=no",
      "rd.luks"], []),
])
def test_luks_command_line_values(params: list[str], expected: list[str]) -> None:
    assert luks.check_cmdline(params) == expected


def test_a_bad_luks_uuid_names_no_volume() -> None:
    volumes, errors, _ = luks.from_cmdline(["rd.luks.uuid=notauuid",
                                            "rd.luks.uuid=luks-0123ABCD-0000-4000-8000-"
                                            "00000000000A"])
    assert len(errors) == 1
    assert [v.spec for v in volumes] == [RootSpec("uuid", "0123abcd-0000-4000-8000-00000000000a")]


@pytest.mark.parametrize(("params", "expected"), [
    (["rd.lvm=maybe"], ["rd.lvm=maybe: expected 0 or 1"]),
    (["rd.lvm.vg="], ["rd.lvm.vg=: expected a volume group name (letters, digits and +_.-)"]),
    (["rd.lvm.vg=vg/root"], ["rd.lvm.vg=vg/root: expected a volume group name (letters, "
                             "digits and +_.-)"]),
    (["rd.lvm.lv=vg/"], ["rd.lvm.lv=vg/: expected VG/LV"]),
    (["rd.lvm.lv=-vg/root"], ["rd.lvm.lv=-vg/root: expected VG/LV"]),
    (["rd.lvm=0", "rd.lvm=yes", "rd.lvm.vg=debian-vg", "rd.lvm.lv=vg_1/swap.1+x"], []),
])
def test_lvm_command_line_values(params: list[str], expected: list[str]) -> None:
    assert lvm.check_cmdline(params) == expected


def test_md_command_line_values() -> None:
    assert mdraid.check_cmdline(["rd.md=maybe"]) == ["rd.md=maybe: expected 0 or 1"]
    assert mdraid.check_cmdline(["rd.md.uuid="]) == [
        "rd.md.uuid=: expected the array's UUID (32 hex digits)"]
    assert mdraid.check_cmdline(["rd.md=0", "rd.md=1", "rd.md"]) == []


def test_storage_keys_for_stacks_the_image_lacks_are_named() -> None:
    line = parse("root=UUID=abc rd.luks.uuid=0123abcd-0000-4000-8000-00000000000a "
                 "rd.lvm.vg=vg luks.name=x rd.md.uuid=a1b2 rd.md=0 rd.luks=0 quiet rd.auto "
                 "rd.lvmfoo=1 luksbar=2")
    assert storage.cmdline_errors(line, ["lvm"]) == [
        "rd.luks.uuid=0123abcd-0000-4000-8000-00000000000a: this image carries no LUKS "
        "support (rebuild with --storage luks)",
        "luks.name=x: this image carries no LUKS support (rebuild with --storage luks)",
        "rd.md.uuid=a1b2: this image carries no mdraid support (rebuild with --storage "
        "mdraid)"]
    # The carried stacks' own checks run as well; with every stack, nothing is uncarried.
    assert storage.cmdline_errors(parse("rd.lvm=maybe rd.md=maybe"), ["lvm"]) == [
        "rd.md=maybe: this image carries no mdraid support (rebuild with --storage mdraid)",
        "rd.lvm=maybe: expected 0 or 1"]
    assert storage.cmdline_errors(parse("rd.luks.uuid=bad"), list(storage.STACKS)) == [
        "rd.luks.uuid=bad: expected a UUID (8-4-4-4-12 hex digits, with or without the luks- "
        "prefix)"]
    assert cmdline.storage_stack("rd.lvm.lv") == "lvm" and cmdline.storage_stack("luks") == "luks"
    assert cmdline.storage_stack("rd.lvmx") is None and cmdline.storage_stack("rootflags") is None


def test_checking_keys_of_uncarried_stacks_imports_no_stack() -> None:
    script = ("import sys\n"
              f"sys.path.insert(0, {str(Path(__file__).parents[2])!r})\n"
              "from pyinit import storage\n"
              "from pyinit.cmdline import parse\n"
              "errors = storage.cmdline_errors(parse('rd.luks.uuid=x rd.lvm.vg=y rd.md=1'), [])\n"
              "assert len(errors) == 3, errors\n"
              "print(sorted(m for m in sys.modules if m.startswith('pyinit.storage.')))\n")
    done = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True,
                          text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_mdadm_uuids_and_export() -> None:
    assert mdraid.norm_uuid("a1b2c3d4:e5f60718:293a4b5c:6d7e8f90") == \
        mdraid.norm_uuid("A1B2C3D4-E5F6-0718-293A-4B5C6D7E8F90")
    assert mdraid.export(b"MD_DEVICE=md127\nMD_STARTED=unsafe\nnoise\n") == {
        "MD_DEVICE": "md127", "MD_STARTED": "unsafe"}
    assert mdraid.check_cmdline(["rd.md.uuid=xyz"]) == [
        "rd.md.uuid=xyz: expected the array's UUID (32 hex digits)"]


def test_the_passphrase_prompt_asks_everywhere_without_echo() -> None:
    consoles = [os.openpty(), os.openpty()]
    names = [os.ttyname(slave) for _, slave in consoles]
    answer: list[str] = []
    asker = threading.Thread(target=lambda: answer.append(
        prompt.ask_secret("Passphrase for /dev/vda2", names, timeout=20)))
    asker.start()
    for master, _ in consoles:  # the question shows on both
        seen = b""
        while b"Passphrase for /dev/vda2: " not in seen:
            seen += os.read(master, 100)
    os.write(consoles[1][0], b"hunter2\n")
    asker.join(timeout=20)
    assert answer == ["hunter2"]
    echoed = os.read(consoles[1][0], 100)
    assert b"hunter2" not in echoed  # echo was off while it was typed
    for master, slave in consoles:
        os.close(master)
        os.close(slave)


def test_the_prompt_gives_up_when_nobody_answers() -> None:
    master, slave = os.openpty()
    with pytest.raises(prompt.PromptError, match=r"nobody answered within 0\.3 s"):
        prompt.ask_secret("Passphrase", [os.ttyname(slave)], timeout=0.3)
    with pytest.raises(prompt.PromptError, match="no console to ask on"):
        prompt.ask_secret("Passphrase", ["/nonexistent/tty"], timeout=0.3)
    os.close(master)
    os.close(slave)


def test_lvm_loads_the_targets_its_volumes_use_and_no_others() -> None:
    loaded: list[str] = []

    class Env:
        options = cmdline.parse("root=/dev/mapper/debian--vg-root")
        udev_running = False

        def load_modules(self, needs: storage.Needs, reason: str) -> None:
            loaded.extend([*needs.modules, *needs.optional_modules])

        def run(self, argv: list[str], check: bool = True) -> command.Done:
            if "lvs" in argv:
                return command.Done(0, b"debian-vg|root|linear|0\ndebian-vg|swap_1|linear|0\n"
                                       b"debian-vg|cache0|cache|0\n", b"")
            return command.Done(0, b"", b"")

        def before_activation(self) -> None:
            pass

        def emit(self, event: str, **fields: object) -> None:
            pass

    handler = lvm.Lvm(Env())  # type: ignore[arg-type]
    assert handler.activate(degraded=False)
    assert loaded == ["dm_mod", "dm_cache", "dm_cache_smq"]  # linear: dm_mod's own


def luks2_header(segments: dict[str, object]) -> bytes:
    area = json.dumps({"keyslots": {}, "segments": segments}).encode()
    return (luks.LUKS_MAGIC + (2).to_bytes(2, "big") + (16384).to_bytes(8, "big")
            + b"\0" * (4096 - 16) + area + b"\0" * (12288 - len(area)))


def test_dm_integrity_loads_only_for_a_volume_with_integrity() -> None:
    plain = luks.needs_for(luks2_header({"0": {"type": "crypt", "encryption": "aes-xts"}}))
    assert "dm_integrity" not in plain.optional_modules and "xts" in plain.optional_modules
    assert plain.modules == ("dm_crypt",)
    authenticated = luks.needs_for(luks2_header(
        {"0": {"type": "crypt", "integrity": {"type": "hmac(sha256)"}}}))
    assert "dm_integrity" in authenticated.optional_modules
