"""Module closure, index and alias matching against the 7.x kernel's real modules.dep,
modules.alias and modules.softdep, checked against Debian's kmod (modprobe)."""

from __future__ import annotations

import random
import re
import subprocess
from pathlib import Path

import pytest

from pyinit.builder.kmodules import ModulesError, ModuleTree
from pyinit.modindex import ModuleIndex, ModuleIndexError
from tests.vm.kernels import Kernel


@pytest.fixture(scope="module")
def tree(kernel7: Kernel) -> ModuleTree:
    return ModuleTree.read(kernel7.moddir)


def modprobe(kernel: Kernel, *args: str) -> list[str]:
    out = subprocess.run(["modprobe", "-d", kernel.base, "-S", kernel.kver, *args],
                         capture_output=True, text=True, check=False)
    return out.stdout.splitlines()


@pytest.mark.parametrize("name", ["virtio_blk", "ext4", "xfs", "btrfs", "nvme", "virtio_scsi",
                                  "dm_crypt", "sd_mod"])
def test_closure_matches_modprobe(tree: ModuleTree, kernel7: Kernel, name: str) -> None:
    if name not in tree.paths:
        assert name in tree.builtin
        assert tree.closure([name]) == []
        return
    expected = set()
    for line in modprobe(kernel7, "--show-depends", "--ignore-install", name):
        m = re.match(r"insmod (\S+)", line)
        if m:
            expected.add(re.sub(r"\.ko(\.\w+)?$", "", m.group(1).rsplit("/", 1)[1])
                         .replace("-", "_"))
    closure = set(tree.closure([name]))
    # Our closure also carries soft dependencies (modprobe --show-depends prints only pre:).
    assert expected <= closure
    soft = {m for mod in closure for part in tree.softdeps.get(mod, ([], [])) for m in part}
    assert closure - expected <= soft | {d for s in soft for d in tree.deps.get(s, [])}


def test_dependencies_load_before_their_users(tree: ModuleTree) -> None:
    deps = tree.deps["btrfs"]
    assert deps, "btrfs has dependencies on this kernel"
    for i, dep in enumerate(deps):
        # Everything DEP needs comes earlier in the list.
        assert set(tree.deps[dep]) <= set(deps[:i])


def test_unknown_module_is_a_clear_error(tree: ModuleTree) -> None:
    with pytest.raises(ModulesError, match=r"modules not found .*no_such_module"):
        tree.closure(["virtio_blk", "no_such_module"])


def test_missing_modules_dep(tmp_path: Path) -> None:
    with pytest.raises(ModulesError, match=r"expected depmod's modules\.dep"):
        ModuleTree.read(str(tmp_path))


def test_index_round_trip(tree: ModuleTree, tmp_path: Path) -> None:
    modules = tree.closure(["virtio_blk", "xfs", "virtio_scsi"])
    (tmp_path / "pyinit.index").write_text(tree.index_text("7.0-test", modules))
    index = ModuleIndex.load(str(tmp_path))
    assert set(index.paths) == set(modules)
    for mod in modules:
        assert index.deps[mod] == tree.deps[mod]
    assert index.lookup("virtio:d00000002v00001AF4") == ["virtio_blk"]
    assert index.builtin == tree.builtin


def test_corrupt_index_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "pyinit.index").write_text("module\tx\tx.ko\t\nbogus line\n")
    with pytest.raises(ModuleIndexError, match=r"pyinit.index line 2: expected"):
        ModuleIndex.load(str(tmp_path))


def concrete(pattern: str, rng: random.Random) -> str:
    """A modalias string that PATTERN matches: wildcards filled in."""
    out = re.sub(r"\[([^\]]+)\]", lambda m: m.group(1)[0], pattern)
    out = out.replace("?", "0")
    return "".join(rng.choice(["", "0", "AB"]) if c == "*" else c for c in out)


def test_alias_matcher_agrees_with_modprobe(tree: ModuleTree, kernel7: Kernel,
                                            tmp_path: Path) -> None:
    (tmp_path / "pyinit.index").write_text(tree.index_text("7.0-test", sorted(tree.paths)))
    index = ModuleIndex.load(str(tmp_path))
    rng = random.Random(7)
    patterns = sorted({p for p, _ in tree.aliases})
    sample = rng.sample(patterns, 300)
    modaliases = sorted({concrete(p, rng) for p in sample})
    checked = 0
    for modalias in modaliases:
        expected = sorted(set(m.replace("-", "_") for m in
                              modprobe(kernel7, "--resolve-alias", modalias)))
        assert sorted(index.lookup(modalias)) == expected, modalias
        checked += 1
    assert checked >= 250
