"""The builder end to end on the 7.x kernel's modules: reproducibility, inspection, bad
input, configuration files, host-only selection and early microcode."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pyinit.builder import (
    appliance,
    archive,
    cache,
    config,
    cpio,
    firmware,
    hostonly,
    image,
    pipeline,
    stacks,
)
from pyinit.builder.kmodules import ModuleTree
from pyinit.modindex import ModuleIndex
from tests.vm.kernels import Kernel

REPO = Path(__file__).resolve().parents[2]


def mkinitramfs(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "mkinitramfs.py"), *args],
                          capture_output=True, text=True, env={**os.environ, **(env or {})},
                          timeout=300)


def build(kernel: Kernel, output: Path, *extra: str,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return mkinitramfs("-o", str(output), "--kver", kernel.kver, "--kmoddir", kernel.moddir,
                       "--add-drivers", "virtio_blk", "--udev", "none", *extra, env=env)


def test_same_inputs_same_bytes(kernel7: Kernel, tmp_path: Path) -> None:
    first = build(kernel7, tmp_path / "a.img", "--no-cache")
    assert first.returncode == 0, first.stderr
    second = build(kernel7, tmp_path / "b.img", "--no-cache")
    cached = build(kernel7, tmp_path / "c.img")  # the runtime part from the cache
    assert second.returncode == 0 and cached.returncode == 0
    a, b, c = ((tmp_path / n).read_bytes() for n in ("a.img", "b.img", "c.img"))
    assert a == b == c


def test_source_date_epoch_sets_every_mtime(kernel7: Kernel, tmp_path: Path) -> None:
    done = build(kernel7, tmp_path / "e.img", env={"SOURCE_DATE_EPOCH": "1700000000"})
    assert done.returncode == 0, done.stderr
    out = subprocess.run(["cpio", "-itv", "--quiet"], input=_main_archive(tmp_path / "e.img"),
                         capture_output=True, check=True).stdout.decode()
    assert out and all("Nov 14  2023" in line for line in out.splitlines())


def _main_archive(path: Path) -> bytes:
    return b"".join(raw for _fmt, raw in archive.segments(path.read_bytes()))


def test_list_and_extract_agree_with_debian_cpio(kernel7: Kernel, tmp_path: Path) -> None:
    image = tmp_path / "l.img"
    assert build(kernel7, image).returncode == 0
    listing = mkinitramfs("--list", str(image))
    assert listing.returncode == 0
    names = {line.split()[2] for line in listing.stdout.splitlines() if not line.startswith("#")}
    for _fmt, raw in archive.segments(image.read_bytes()):
        theirs = subprocess.run(["cpio", "-it", "--quiet"], input=raw, capture_output=True,
                                check=True).stdout.decode().split()
        assert set(theirs) <= names
    assert "init" in names and "dev/console" in names
    assert any(n.endswith("virtio_blk.ko") for n in names)  # stored decompressed
    assert not any(n.endswith((".ko.xz", ".ko.gz", ".ko.zst")) for n in names)
    assert any(n.endswith("lib/modules/" + kernel7.kver + "/pyinit.index") for n in names)
    out = tmp_path / "x"
    extracted = mkinitramfs("--extract", str(image), str(out))
    assert extracted.returncode == 0, extracted.stderr
    assert os.access(out / "init", os.X_OK)
    assert (out / "init").read_text().startswith("#!/usr/bin/python3 -IS")
    assert os.readlink(out / "usr/bin/python3")


@pytest.mark.parametrize("fmt", ["gzip", "xz", "lz4", "none"])
def test_every_compression_lists_back(kernel7: Kernel, tmp_path: Path, fmt: str) -> None:
    image = tmp_path / f"i.{fmt}"
    done = build(kernel7, image, "--compress", fmt)
    assert done.returncode == 0, done.stderr
    listing = mkinitramfs("--list", str(image)).stdout
    assert f"# archive ({fmt}," in listing and "pyinit.index" in listing


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--add-drivers", "no_such_module"], "modules not found"),
        (["--kmoddir", "/nonexistent"], "--kmoddir /nonexistent: expected the modules"),
        (["--python", "/nonexistent/python"], "expected an executable Python"),
        (["--include", "/nonexistent", "/x"], "--include /nonexistent /x: expected an existing"),
        (["--fsck", "nosuchfs"], "--fsck nosuchfs: expected /sbin/fsck.nosuchfs"),
        (["--omit-drivers", "virtio_ring"], None),
    ],
)
def test_bad_input_is_one_line_and_leaves_nothing(kernel7: Kernel, tmp_path: Path,
                                                   args: list[str], message: str | None) -> None:
    output = tmp_path / "bad.img"
    done = mkinitramfs("-o", str(output), "--kver", kernel7.kver, "--kmoddir", kernel7.moddir,
                       "--add-drivers", "virtio_blk", "--udev", "none", *args)
    if message is None:  # virtio_ring is built in on 7.x: omitting it changes nothing
        assert done.returncode == 0, done.stderr
        return
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
    assert os.listdir(tmp_path) == []  # no image, no temporary file


def test_existing_image_needs_force(kernel7: Kernel, tmp_path: Path) -> None:
    output = tmp_path / "i.img"
    output.write_bytes(b"keep me")
    done = build(kernel7, output)
    assert done.returncode == 1 and "the file exists; expected --force" in done.stderr
    assert output.read_bytes() == b"keep me"
    assert build(kernel7, output, "--force").returncode == 0


def test_corrupt_image_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.img"
    bad.write_bytes(b"\x28\xb5\x2f\xfd" + b"garbage" * 10)
    done = mkinitramfs("--list", str(bad))
    assert done.returncode == 1 and f"{bad}: corrupt zstd stream" in done.stderr
    missing = mkinitramfs("--list", str(tmp_path / "none.img"))
    assert missing.returncode == 1 and "expected a readable image" in missing.stderr


def test_compression_the_kernel_cannot_unpack_is_refused(kernel7: Kernel,
                                                          tmp_path: Path) -> None:
    moddir = tmp_path / "lib/modules" / kernel7.kver
    moddir.mkdir(parents=True)
    for name in ("modules.dep", "modules.alias", "modules.builtin"):
        (moddir / name).write_text("")
    (moddir / "config").write_text("CONFIG_RD_GZIP=y\n# CONFIG_RD_ZSTD is not set\n")
    done = mkinitramfs("-o", str(tmp_path / "i.img"), "--kver", kernel7.kver, "--kmoddir",
                       str(moddir), "--udev", "none")
    assert done.returncode == 1
    assert "--compress zstd: the kernel" in done.stderr and "no CONFIG_RD_ZSTD=y" in done.stderr


def test_config_files_and_their_errors(tmp_path: Path) -> None:
    system = tmp_path / "mkinitramfs.toml"
    system.write_text('compress = "xz"\nadd_drivers = ["a"]\n')
    confd = tmp_path / "mkinitramfs.d"
    confd.mkdir()
    (confd / "10-more.toml").write_text('add_drivers = ["b"]\nhostonly = false\n')
    extra = tmp_path / "extra.toml"
    extra.write_text('include = [["/bin/busybox", "/bin/busybox"]]\ncmdline = "rd.timeout=9"\n')
    settings = config.load([str(extra)], str(system), str(confd))
    assert settings.compress == "xz" and settings.add_drivers == ["a", "b"]
    assert settings.mode == "generic" and settings.cmdline == "rd.timeout=9"
    assert settings.include == [("/bin/busybox", "/bin/busybox")]

    bad = tmp_path / "bad.toml"
    bad.write_text('compress = "zstd"\n\ncolour = "blue"\n')
    with pytest.raises(config.ConfigError, match=r"bad.toml:3: unknown key 'colour'"):
        config.load([str(bad)], "/nonexistent", "/nonexistent")
    bad.write_text('compress_level = "high"\n')
    with pytest.raises(config.ConfigError,
                       match=r"bad.toml:1: compress_level: expected a whole number, found a "
                             r"string 'high'"):
        config.load([str(bad)], "/nonexistent", "/nonexistent")
    bad.write_text('compress = "zstd"\nthis is not toml\n')
    with pytest.raises(config.ConfigError, match=r"bad.toml: not valid TOML: .*line 2"):
        config.load([str(bad)], "/nonexistent", "/nonexistent")


def test_config_errors_reach_the_command_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('udev = "sometimes"\n')
    done = mkinitramfs("-o", str(tmp_path / "i.img"), "--config", str(bad))
    assert done.returncode == 1
    assert f"{bad}:1: udev: expected one of auto, systemd, none" in done.stderr


def fake_sysfs(root: Path) -> Path:
    sys_dir = root / "sys"
    pci = sys_dir / "devices/pci0000:00/0000:00:02.0"
    block = pci / "virtio1/block/vda"
    block.mkdir(parents=True)
    (pci / "modalias").write_text("pci:v00001AF4d00001042sv00001AF4sd00001042bc01sc80i00\n")
    (pci / "virtio1/modalias").write_text("virtio:d00000002v00001AF4\n")
    (sys_dir / "dev/block").mkdir(parents=True)
    os.symlink(block, sys_dir / "dev/block/254:0")
    (root / "mountinfo").write_text("22 1 254:0 / / rw,relatime - xfs /dev/vda rw\n")
    return sys_dir


def test_hostonly_walks_sysfs_from_the_root_device(kernel7: Kernel, tmp_path: Path) -> None:
    tree = ModuleTree.read(kernel7.moddir)
    sys_dir = fake_sysfs(tmp_path)
    modules = hostonly.hostonly_modules(tree, str(sys_dir), str(tmp_path / "mountinfo"))
    # The walk goes from the disk up: the virtio device, its PCI function, then the root's
    # filesystem; what the kernel has built in is left out (facts of the kernel at hand).
    chain = ["virtio:d00000002v00001AF4",
             "pci:v00001AF4d00001042sv00001AF4sd00001042bc01sc80i00", "fs-xfs"]
    expected = [m for alias in chain for m in tree.resolve(alias) if m in tree.paths]
    assert modules == list(dict.fromkeys(expected)) and "virtio_blk" in modules
    closure = tree.closure(modules)  # and everything they need comes along
    assert set(modules) <= set(closure)
    assert all(set(tree.deps[m]) <= set(closure) for m in closure)


def test_hostonly_without_a_block_device_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "mountinfo").write_text("22 1 0:30 / / rw - overlay overlay rw\n")
    with pytest.raises(hostonly.HostOnlyError, match="root device 0:30: expected"):
        hostonly.hostonly_modules(ModuleTree(str(tmp_path)), str(tmp_path / "sys"),
                                  str(tmp_path / "mountinfo"))


def test_generic_set_takes_what_the_kernel_has(kernel7: Kernel) -> None:
    tree = ModuleTree.read(kernel7.moddir)
    generic = hostonly.generic_modules(tree)
    assert {"virtio_blk", "nvme", "xfs", "btrfs", "dm_crypt"} <= set(generic)
    for name in ("usb_storage", "mmc_block", "hv_storvsc"):  # whatever this kernel has
        assert (name in generic) == bool(tree.resolve(name)), name


def test_early_microcode_archive(tmp_path: Path) -> None:
    intel = tmp_path / "intel-ucode"
    intel.mkdir()
    (intel / "06-55-04").write_bytes(b"A" * 10)
    (intel / "06-8f-08").write_bytes(b"B" * 5)
    data = firmware.microcode_archive(str(intel), str(tmp_path / "none"))
    entries = {e.name: e for e, _ in cpio.read(data)}
    assert entries["kernel/x86/microcode/GenuineIntel.bin"].data == b"A" * 10 + b"B" * 5
    assert stat.S_ISDIR(entries["kernel/x86/microcode"].mode)
    assert firmware.microcode_archive(str(tmp_path / "x"), str(tmp_path / "y")) == b""


def test_firmware_named_by_a_module(kernel7: Kernel, tmp_path: Path) -> None:
    tree = ModuleTree.read(kernel7.moddir)
    name = next(n for n in ("me4000", "jr3_pci", "daqboard2000") if n in tree.paths)
    info = firmware.modinfo(os.path.join(kernel7.moddir, tree.paths[name]))
    assert info["firmware"]
    (tmp_path / info["firmware"][0]).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / info["firmware"][0]).write_bytes(b"fw")
    found, missing = firmware.firmware_files(info["firmware"] + ["absent.bin"], str(tmp_path))
    assert found == [str(tmp_path / info["firmware"][0])] and missing == ["absent.bin"]


def test_aliases_of_builtin_modules_resolve_to_them(kernel7: Kernel, tmp_path: Path) -> None:
    tree = ModuleTree.read(kernel7.moddir)
    # A filesystem this kernel has built in (ext4 on today's cloud kernels).
    fs = next(n for n in sorted(tree.builtin) if tree.resolve(f"fs-{n}") == [n])
    assert fs not in tree.paths
    assert tree.closure([f"fs-{fs}", "virtio_blk"]) == tree.closure(["virtio_blk"])
    # The image's index names them too, so the init resolves fs-TYPE to a builtin.
    (tmp_path / "pyinit.index").write_text(tree.index_text(kernel7.kver, ["virtio_blk"]))
    index = ModuleIndex.load(str(tmp_path))
    assert index.resolve(f"fs-{fs}") == fs and fs in index.builtin
    # Device patterns of built-in drivers are left out: nothing to load for them.
    assert index.lookup("pci:v00001AF4d00001042sv00001AF4sd00001042bc01sc80i00") == []


def other_kernels_tree(kernel: Kernel, root: Path, kver: str, builtin: str = "") -> Path:
    """A modules directory named KVER holding KERNEL's virtio_blk module."""
    moddir = root / "lib/modules" / kver
    (moddir / "kernel").mkdir(parents=True)
    tree = ModuleTree.read(kernel.moddir)
    (moddir / "kernel/virtio_blk.ko.xz").symlink_to(
        os.path.join(kernel.moddir, tree.paths["virtio_blk"]))
    (moddir / "modules.dep").write_text("kernel/virtio_blk.ko.xz:\n")
    (moddir / "modules.builtin").write_text(builtin)
    return moddir


@pytest.mark.parametrize("drivers", ["virtio_blk", "ext4"])  # ext4: built in, none carried
def test_modules_of_another_kernel_are_refused(kernel7: Kernel, tmp_path: Path,
                                               drivers: str) -> None:
    moddir = other_kernels_tree(kernel7, tmp_path, "9.9.9-other", "kernel/fs/ext4/ext4.ko\n")
    output = tmp_path / "i.img"
    done = mkinitramfs("-o", str(output), "--kver", "9.9.9-other", "--kmoddir", str(moddir),
                       "--add-drivers", drivers, "--udev", "none")
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert (f"--kmoddir {moddir}: expected the modules of kernel 9.9.9-other (--kver), found "
            f"kernel {kernel7.kver} in kernel/virtio_blk.ko.xz") in done.stderr
    assert not output.exists()


@pytest.mark.parametrize(("dest", "found"), [
    ("/init", "found /init, a file of its skeleton part"),
    ("/usr/bin/python3", "found /usr/bin/python3, a symlink of its python runtime part"),
    ("/lib", "found /lib, a symlink of its python runtime part"),
    ("/usr/lib/pyinit", "found /usr/lib/pyinit, a directory of its"),
    ("/init/x", "found /init (a parent), a file of its skeleton part"),
    ("/lib/modules/{kver}/pyinit.index",
     "found /usr/lib/modules/{kver}/pyinit.index, a file of its modules part"),
    ("/etc/pyinit/cmdline", "found /etc/pyinit/cmdline, a file of its skeleton part"),
    ("/sbin/fsck.ext4", "fsck.ext4, a symlink of its fsck part"),  # -> e2fsck on Debian
    ("/bin/x", "found /bin/x, a file of its included part"),  # the first --include
])
def test_include_over_the_images_own_files_is_refused(kernel7: Kernel, tmp_path: Path,
                                                      dest: str, found: str) -> None:
    extra = []
    if "fsck" in dest:
        if pipeline.host_fsck("ext4") is None:
            pytest.skip("this host has no fsck.ext4")
        extra = ["--fsck", "ext4"]
    conf = tmp_path / "c.toml"
    conf.write_text('cmdline = "quiet"\n')
    dest = dest.format(kver=kernel7.kver)
    output = tmp_path / "i.img"
    done = build(kernel7, output, "--config", str(conf), "--include", "/bin/busybox", "/bin/x",
                 "--include", "/bin/busybox", dest, *extra)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert (f"--include /bin/busybox {dest}: expected a path the image does not have, "
            in done.stderr and found.format(kver=kernel7.kver) in done.stderr), done.stderr
    assert not output.exists()


def test_include_into_a_directory_the_image_has(kernel7: Kernel, tmp_path: Path) -> None:
    image = tmp_path / "i.img"
    done = build(kernel7, image, "--include", "/bin/busybox", "/usr/lib/pyinit/busybox")
    assert done.returncode == 0, done.stderr
    listing = mkinitramfs("--list", str(image)).stdout
    assert "usr/lib/pyinit/busybox\n" in listing


def test_include_over_early_microcode_is_refused(tmp_path: Path) -> None:
    intel = tmp_path / "intel-ucode"
    intel.mkdir()
    (intel / "06-55-04").write_bytes(b"A" * 10)
    early = pipeline.archive_paths(firmware.microcode_archive(str(intel), str(tmp_path / "x")))
    settings = config.Settings(include=[("/bin/busybox", "/kernel/x86/microcode/x"),
                                        ("/bin/busybox", "/kernel/x86/microcode/GenuineIntel.bin")])
    cfg = pipeline.Config("i.img", "7.0", str(tmp_path), settings, False, False, 0)
    img = image.Image()
    with pytest.raises(pipeline.BuildError,
                       match=r"microcode/GenuineIntel.bin: expected a path the image does not "
                             r"have, found /kernel/x86/microcode/GenuineIntel.bin, a file of "
                             r"its microcode part"):
        pipeline.add_includes(img, cfg, pipeline.Tools(), early)
    assert "/kernel/x86/microcode/x" in img.entries  # a directory shared as a parent


def test_the_skeleton_gets_fixed_modes_not_the_checkouts(tmp_path: Path) -> None:
    """A clone made under umask 002 has group-writable files and directories: the image's
    skeleton is 0755 for directories and programs and 0644 for the rest all the same."""
    skel = tmp_path / "skel"
    (skel / "etc").mkdir(parents=True)
    (skel / "init").write_text("#!/bin/sh\n")
    (skel / "etc/initrd-release").write_text("NAME=x\n")
    (skel / "init").chmod(0o775)
    (skel / "etc/initrd-release").chmod(0o664)
    (skel / "etc").chmod(0o775)
    skel.chmod(0o2775)
    img = image.Image()
    img.add_tree(str(skel), "/")
    modes = {path: stat.S_IMODE(entry.mode) for path, entry in img.entries.items()}
    assert modes == {"/etc": 0o755, "/init": 0o755, "/etc/initrd-release": 0o644}


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupt_compressed_module_is_one_line(kernel7: Kernel, tmp_path: Path,
                                                 damage: str) -> None:
    moddir = other_kernels_tree(kernel7, tmp_path, kernel7.kver)
    good = (moddir / "kernel/virtio_blk.ko.xz").read_bytes()
    bad = b"not xz at all" if damage == "garbage" else good[: len(good) // 2]
    (moddir / "kernel/zz_bad.ko.xz").write_bytes(bad)
    (moddir / "modules.dep").write_text("kernel/virtio_blk.ko.xz:\nkernel/zz_bad.ko.xz:\n")
    done = mkinitramfs("-o", str(tmp_path / "i.img"), "--kver", kernel7.kver, "--kmoddir",
                       str(moddir), "--add-drivers", "virtio_blk zz_bad", "--udev", "none")
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert (f"{moddir}/kernel/zz_bad.ko.xz: expected a xz-compressed kernel module, found: "
            in done.stderr)


def test_an_image_written_beside_the_sources_keeps_the_runtime_cache(kernel7: Kernel,
                                                                     tmp_path: Path) -> None:
    assert build(kernel7, tmp_path / "a.img").returncode == 0  # fills the cache if cold
    beside = REPO / f".test-cache-{os.getpid()}.img"  # -o ./x.img in a clone
    try:
        done = build(kernel7, beside)
        assert done.returncode == 0, done.stderr
        assert "(python runtime from cache)" in done.stdout
        again = build(kernel7, tmp_path / "b.img")
    finally:
        beside.unlink(missing_ok=True)
    assert again.returncode == 0, again.stderr
    assert "(python runtime from cache)" in again.stdout, again.stdout


def test_pyudev_and_libudev_come_only_with_udevd(kernel7: Kernel, tmp_path: Path) -> None:
    # Without udevd the init reads the kernel's uevents itself (pyinit.kernelevents).
    listings = {}
    for udev in ("none", "systemd"):
        done = mkinitramfs("-o", str(tmp_path / f"{udev}.img"), "--kver", kernel7.kver,
                           "--kmoddir", kernel7.moddir, "--add-drivers", "virtio_blk",
                           "--udev", udev)
        assert done.returncode == 0, done.stderr
        listings[udev] = mkinitramfs("--list", str(tmp_path / f"{udev}.img")).stdout
    for wanted in ("/pyudev/", "libudev.so", "/pyinit/libfind.pyc", "_ctypes."):
        assert wanted not in listings["none"], wanted
        assert wanted in listings["systemd"], wanted
    assert "/pyinit/kernelevents.pyc" in listings["none"]


def test_a_changed_skeleton_file_is_a_new_runtime_key(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # The runtime part (with the skeleton's /init) is cached: editing /init must miss it.
    skel = tmp_path / "skel"
    skel.mkdir()
    (skel / "init").write_text("#!/usr/bin/python3 -IS\n")
    monkeypatch.setattr(pipeline, "SKELETON", str(skel))
    keys: list[str] = []

    class Hit(Exception):
        pass

    def load(params: dict[str, object]) -> None:
        keys.append(repr(params["skeleton"]))
        raise Hit  # stop before anything is built

    monkeypatch.setattr(cache, "load", load)
    cfg = pipeline.Config("i.img", "7.0", str(tmp_path), config.Settings(), False, False, 0)
    for text in ("#!/usr/bin/python3 -IS\n", "#!/usr/bin/python3 -IS\n# changed\n"):
        (skel / "init").write_text(text)
        with pytest.raises(Hit):
            pipeline.runtime_segment(cfg, pipeline.Tools(), stacks.Plan([], []),
                                     appliance.Appliance(False, ""),
                                     pipeline.Udev(None, "test"))
    assert len(keys) == 2 and keys[0] != keys[1]


def test_a_generic_image_keeps_modules_as_the_kernel_ships_them(kernel7: Kernel,
                                                                tmp_path: Path) -> None:
    # It carries every driver and loads few; the 7.x kernel decompresses .ko.xz itself.
    done = mkinitramfs("-o", str(tmp_path / "g.img"), "--kver", kernel7.kver, "--kmoddir",
                       kernel7.moddir, "--no-hostonly", "--udev", "none")
    assert done.returncode == 0, done.stderr
    names = mkinitramfs("--list", str(tmp_path / "g.img")).stdout
    assert "/virtio_blk.ko.xz" in names and "/virtio_blk.ko\n" not in names
