"""The builder's storage plan: the stack under a root read from a fake sysfs, the crypttab
entries an image needs, and the files and defaults each stack brings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyinit import layout
from pyinit.builder import appliance, config, kmodules, pipeline, stacks
from pyinit.storage import STACKS, lvm

NO_APPLIANCE = appliance.Appliance(False, "")
LUKS_HEX = "0123abcd00004000800000000000000a"
LUKS_UUID = "0123abcd-0000-4000-8000-00000000000a"


def block(sys_dir: Path, name: str, devnum: str, slaves: tuple[str, ...] = (),
          dm: tuple[str, str] | None = None, md: bool = False) -> Path:
    path = sys_dir / "devices/virtual/block" / name
    path.mkdir(parents=True)
    (path / "dev").write_text(devnum + "\n")
    (path / "slaves").mkdir()
    for slave in slaves:
        os.symlink(sys_dir / "devices/virtual/block" / slave, path / "slaves" / slave)
    if dm:
        (path / "dm").mkdir()
        (path / "dm/name").write_text(dm[0] + "\n")
        (path / "dm/uuid").write_text(dm[1] + "\n")
    if md:
        (path / "md").mkdir()
    (sys_dir / "dev/block").mkdir(parents=True, exist_ok=True)
    os.symlink(path, sys_dir / "dev/block" / devnum)
    return path


def debian_layout(sys_dir: Path) -> None:
    """Debian's encrypted LVM (LUKS2, VG debian-vg with root and swap_1), here on an md
    array, so that one walk meets all three stacks."""
    block(sys_dir, "vda1", "254:1")
    block(sys_dir, "vdb1", "254:17")
    block(sys_dir, "md0", "9:0", ("vda1", "vdb1"), md=True)
    block(sys_dir, "dm-0", "253:0", ("md0",),
          dm=("vda1_crypt", f"CRYPT-LUKS2-{LUKS_HEX}-vda1_crypt"))
    block(sys_dir, "dm-1", "253:1", ("dm-0",), dm=("debian--vg-root", "LVM-abcdefxyz"))
    block(sys_dir, "dm-2", "253:2", ("dm-0",), dm=("debian--vg-swap_1", "LVM-abcdefxyw"))


def test_the_stack_under_the_root_is_read_from_sysfs(tmp_path: Path) -> None:
    debian_layout(tmp_path)
    found = stacks.walk((253, 1), str(tmp_path))
    assert found.stacks == {"luks", "lvm", "mdraid"}
    assert found.luks == [(LUKS_UUID, "vda1_crypt")]
    assert found.lvs == [("debian-vg", "root")]
    stacks.walk((253, 2), str(tmp_path), found)  # the resume device adds its volume
    assert found.lvs == [("debian-vg", "root"), ("debian-vg", "swap_1")]
    assert stacks.walk((254, 1), str(tmp_path)).stacks == set()  # a plain partition


CRYPTTAB = f"""# <target> <source> <key> <options>
vda1_crypt UUID={LUKS_UUID} none luks,discard
home UUID=11111111-2222-4333-8444-555555555555 none luks
usb /dev/disk/by-label/usb none luks,initramfs
"""


def test_hidden_lvm_layers_are_not_named_and_other_dm_devices_refused(tmp_path: Path) -> None:
    block(tmp_path, "vda", "254:0")
    block(tmp_path, "dm-0", "253:0", ("vda",), dm=("vg-pool_tdata", "LVM-aaaaxyz-tdata"))
    block(tmp_path, "dm-1", "253:1", ("dm-0",), dm=("vg-root", "LVM-aaaaxyw"))
    os.makedirs(tmp_path / "devices/virtual/block/dm-0/holders")
    os.symlink(tmp_path / "devices/virtual/block/dm-1",
               tmp_path / "devices/virtual/block/dm-0/holders/dm-1")
    assert stacks.walk((253, 1), str(tmp_path)).lvs == [("vg", "root")]
    block(tmp_path, "dm-2", "253:2", ("vda",), dm=("plain", "CRYPT-PLAIN-plain"))
    with pytest.raises(stacks.StackError, match=r"/dev/dm-2 \(plain, dm uuid CRYPT-PLAIN-"
                                                r"plain\) is under the root: expected LUKS"):
        stacks.walk((253, 2), str(tmp_path))


def test_host_only_carries_the_crypttab_entries_its_stack_needs(tmp_path: Path) -> None:
    crypttab = tmp_path / "crypttab"
    crypttab.write_text(CRYPTTAB)
    host = stacks.HostStack({"luks", "lvm"}, [(LUKS_UUID, "vda1_crypt")],
                            [("debian-vg", "root")])
    plan = stacks.plan([], hostonly=True, generic=[], luks_keys=[],
                       crypttab=str(crypttab), mdadm_conf=str(tmp_path / "none"), host=host)
    assert plan.stacks == ["luks", "lvm"]
    assert plan.files["/etc/crypttab"] == (
        (f"vda1_crypt UUID={LUKS_UUID} none luks,discard\n"
         "usb /dev/disk/by-label/usb none luks,initramfs\n").encode(), 0o600)
    assert plan.files[layout.STORAGE_FILE][0] == b"luks\nlvm\n"
    assert plan.files[lvm.LVM_CONF][0] == lvm.LVM_CONF_TEXT.encode()
    assert plan.cmdline == ["rd.lvm.lv=debian-vg/root"]
    assert plan.dm_or_md and "/sbin/cryptsetup" in plan.tools
    # A LUKS volume under the root that crypttab does not name gets an entry of its own.
    host.luks.append(("22222222-2222-4333-8444-555555555555", "other_crypt"))
    plan = stacks.plan([], hostonly=True, generic=[], luks_keys=[],
                       crypttab=str(crypttab), mdadm_conf=str(tmp_path / "none"), host=host)
    assert plan.files["/etc/crypttab"][0].decode().endswith(
        "other_crypt UUID=22222222-2222-4333-8444-555555555555 none luks\n")


def test_a_key_file_crypttab_names_must_be_carried(tmp_path: Path) -> None:
    crypttab = tmp_path / "crypttab"
    crypttab.write_text("data UUID=11111111-2222-4333-8444-555555555555 /etc/keys/d.key "
                        "luks,initramfs\n")
    with pytest.raises(stacks.StackError, match=r"data needs the key file /etc/keys/d.key, "
                                                r"which the image does not carry"):
        stacks.plan(["luks"], hostonly=False, generic=[], luks_keys=[], crypttab=str(crypttab))
    key = tmp_path / "d.key"
    key.write_bytes(b"k")
    plan = stacks.plan(["luks"], hostonly=False, generic=[],
                       luks_keys=[f"{key}:/etc/keys/d.key"], crypttab=str(crypttab))
    assert "/etc/keys/d.key" in plan.files


def test_a_generic_image_carries_every_stack_and_a_plain_one_none(tmp_path: Path) -> None:
    generic = stacks.plan([], hostonly=False, generic=list(STACKS), luks_keys=[],
                          crypttab=str(tmp_path / "none"), mdadm_conf=str(tmp_path / "none"))
    assert generic.stacks == list(STACKS) and generic.cmdline == []
    plain = stacks.plan([], hostonly=True, generic=[], luks_keys=[],
                        crypttab=str(tmp_path / "none"), host=stacks.HostStack())
    assert plain.stacks == [] and plain.files == {} and not plain.dm_or_md


def test_key_files_and_bad_names(tmp_path: Path) -> None:
    key = tmp_path / "root.key"
    key.write_bytes(b"k" * 32)
    plan = stacks.plan([], hostonly=False, generic=[], luks_keys=[str(key)],
                       crypttab=str(tmp_path / "none"))
    assert plan.stacks == ["luks"] and plan.files[str(key)] == (b"k" * 32, 0o400)
    with pytest.raises(stacks.StackError, match=r"--luks-key /nonexistent: expected a "
                                                r"regular file, found nothing"):
        stacks.plan([], hostonly=False, generic=[], luks_keys=["/nonexistent"])
    with pytest.raises(stacks.StackError, match=r"--storage zfs: expected some of luks, lvm"):
        stacks.plan(["zfs"], hostonly=False, generic=[], luks_keys=[])


def test_mdadm_conf_only_with_arrays_and_resume_from_initramfs_tools(tmp_path: Path) -> None:
    conf = tmp_path / "mdadm.conf"
    conf.write_text("HOMEHOST <system>\n")
    plan = stacks.plan(["mdraid"], hostonly=False, generic=[], luks_keys=[],
                       mdadm_conf=str(conf))
    assert "/etc/mdadm/mdadm.conf" not in plan.files
    conf.write_text("ARRAY /dev/md/0 metadata=1.2 UUID=a1b2c3d4:e5f60718:293a4b5c:6d7e8f90\n")
    plan = stacks.plan(["mdraid"], hostonly=False, generic=[], luks_keys=[],
                       mdadm_conf=str(conf))
    assert plan.files["/etc/mdadm/mdadm.conf"][0].startswith(b"ARRAY /dev/md/0")
    resume = tmp_path / "resume"
    resume.write_text("RESUME=UUID=0a1b-2c3d\n")
    assert stacks.resume_setting(str(resume)) == "UUID=0a1b-2c3d"
    resume.write_text("RESUME=none\n")
    assert stacks.resume_setting(str(resume)) is None


DEBIAN_UUID = "5b6f3c2a-9d1e-4f7a-b0c8-2e4d6a8f1b3c"


def test_a_generic_image_carries_debians_crypttab_entry(tmp_path: Path) -> None:
    crypttab = tmp_path / "crypttab"
    crypttab.write_text(f"sda5_crypt UUID={DEBIAN_UUID} none luks,discard\n")  # the installer's
    for generic in ([*STACKS], []):  # a generic image, and --storage luks without host-only
        plan = stacks.plan(["luks"], hostonly=False, generic=generic, luks_keys=[],
                           crypttab=str(crypttab), mdadm_conf=str(tmp_path / "none"))
        assert plan.files["/etc/crypttab"] == (
            f"sda5_crypt UUID={DEBIAN_UUID} none luks,discard\n".encode(), 0o600)


def test_a_generic_image_leaves_out_what_it_cannot_unlock(tmp_path: Path) -> None:
    crypttab = tmp_path / "crypttab"
    crypttab.write_text(
        "# <target name> <source device> <key file> <options>\n"
        f"sda5_crypt UUID={DEBIAN_UUID} none luks,discard\n"
        "backup /dev/sdc1 none luks,noauto\n"
        "home UUID=11111111-2222-4333-8444-555555555555 /etc/keys/home.key luks\n"
        "cryptswap /dev/sdb2 /dev/urandom swap,plain\n"
        "data UUID=22222222-2222-4333-8444-555555555555 /etc/keys/data.key luks\n")
    key = tmp_path / "data.key"
    key.write_bytes(b"k")
    plan = stacks.plan([], hostonly=False, generic=list(STACKS),
                       luks_keys=[f"{key}:/etc/keys/data.key"], crypttab=str(crypttab),
                       mdadm_conf=str(tmp_path / "none"))
    assert plan.files["/etc/crypttab"][0].decode() == (
        f"sda5_crypt UUID={DEBIAN_UUID} none luks,discard\n"
        "data UUID=22222222-2222-4333-8444-555555555555 /etc/keys/data.key luks\n")
    assert plan.reasons[1:] == [
        "crypttab entry home left out: its key file /etc/keys/home.key is not in the image "
        "(add --luks-key /etc/keys/home.key to unlock it in the initramfs)",
        f"crypttab entry cryptswap left out: {crypttab} line 5: cryptswap: only LUKS "
        "volumes are supported"]
    # A host-only image still carries only what its stack needs.
    host = stacks.HostStack({"luks"}, [(DEBIAN_UUID, "sda5_crypt")])
    hostonly = stacks.plan([], hostonly=True, generic=[], luks_keys=[], crypttab=str(crypttab),
                           mdadm_conf=str(tmp_path / "none"), host=host)
    assert hostonly.files["/etc/crypttab"][0].decode() == (
        f"sda5_crypt UUID={DEBIAN_UUID} none luks,discard\n")


def test_the_lvm_stack_carries_the_targets_its_volumes_load(tmp_path: Path) -> None:
    """At the plan level, as the builder selects modules: every device-mapper target (and
    md personality, cache policy) an LV's segment type loads at boot is carried where the
    kernel has it as a module; what the kernel lacks is no error."""
    plan = stacks.plan(["lvm"], hostonly=False, generic=[], luks_keys=[],
                       crypttab=str(tmp_path / "none"), mdadm_conf=str(tmp_path / "none"))
    has = ["dm_mod", "dm_thin_pool", "dm_persistent_data", "dm_raid", "raid456", "raid1",
           "raid10", "raid0", "md_mod", "dm_mirror", "dm_log", "dm_snapshot", "dm_cache",
           "dm_cache_smq", "dm_writecache", "dm_integrity", "virtio_blk"]
    tree = kmodules.ModuleTree(str(tmp_path), paths={m: f"kernel/{m}.ko" for m in has},
                               deps={"dm_thin_pool": ["dm_persistent_data", "dm_mod"],
                                     "dm_raid": ["md_mod", "raid456", "dm_mod"],
                                     "dm_mirror": ["dm_log", "dm_mod"]})
    cfg = pipeline.Config("out", "6.1.0", str(tmp_path),
                          config.Settings(add_drivers=["virtio_blk"]), hostonly=False,
                          force=False, mtime=0)
    selected = set(pipeline.select_modules(cfg, tree, plan, NO_APPLIANCE))
    assert selected == set(has)  # dm_vdo: not in this kernel, left out


def test_a_host_only_lvm_image_carries_only_the_targets_in_use(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Host-only: of the segment types' targets, those this host has loaded (its volumes
    use them); dm_mod itself always."""
    from pyinit import modindex
    from pyinit.builder import hostonly

    plan = stacks.plan(["lvm"], hostonly=False, generic=[], luks_keys=[],
                       crypttab=str(tmp_path / "none"), mdadm_conf=str(tmp_path / "none"))
    has = ["dm_mod", "dm_thin_pool", "dm_raid", "raid1", "dm_snapshot", "virtio_blk"]
    tree = kmodules.ModuleTree(str(tmp_path), paths={m: f"kernel/{m}.ko" for m in has},
                               deps={})
    proc = tmp_path / "modules"
    proc.write_text("dm_thin_pool 86016 1 - Live 0x0\ndm_mod 184320 3 dm_thin_pool, Live 0x0\n")
    real = modindex.loaded_modules
    monkeypatch.setattr(modindex, "loaded_modules", lambda: real(str(proc)))
    monkeypatch.setattr(hostonly, "hostonly_modules", lambda tree: ["virtio_blk"])
    cfg = pipeline.Config("out", "6.1.0", str(tmp_path), config.Settings(), hostonly=True,
                          force=False, mtime=0)
    assert set(pipeline.select_modules(cfg, tree, plan, NO_APPLIANCE)) == {"dm_mod", "dm_thin_pool",
                                                            "virtio_blk"}


@pytest.mark.parametrize("dest", ["/etc/pyinit/storage", "/etc/crypttab", "/etc/lvm/lvm.conf",
                                  "/init", "/etc/pyinit/cmdline"])
def test_a_key_file_may_not_replace_the_images_own_files(tmp_path: Path, dest: str) -> None:
    key = tmp_path / "root.key"
    key.write_bytes(b"k")
    crypttab = tmp_path / "crypttab"
    crypttab.write_text("root UUID=11111111-2222-4333-8444-555555555555 none luks\n")
    with pytest.raises(stacks.StackError, match=f"^--luks-key {key}:{dest}: expected a path of "
                                                f"its own in the image, found {dest}, which "
                                                "the image's own "):
        stacks.plan(["luks", "lvm"], hostonly=False, generic=[],
                    luks_keys=[f"{key}:{dest}"], crypttab=str(crypttab),
                    mdadm_conf=str(tmp_path / "none"))
