"""The runtime segment cache keys on the files that go in, and on the files that would
change what an import resolves to, not on the directories that contain them."""

from __future__ import annotations

from pathlib import Path

from pyinit.builder import cache, pyruntime

SEGMENT = cache.Segment(b"compressed", 10, {"stdlib": 10}, {}, 1, {"/x": ["-", "stdlib"]})


def test_a_file_written_beside_the_inputs_keeps_the_segment(tmp_path: Path) -> None:
    store = tmp_path / "cache"
    src = tmp_path / "src"
    src.mkdir()
    (src / "mod.py").write_text("x = 1\n")
    cache.store({"k": 1}, [str(src / "mod.py")], SEGMENT, str(store),
                absent=[str(src / "json.py")])
    assert cache.load({"k": 1}, str(store)) == SEGMENT
    (src / "x.img").write_bytes(b"an image built with -o ./x.img")  # the directory changes
    assert cache.load({"k": 1}, str(store)) == SEGMENT
    (src / "mod.py").write_text("x = 2\n")  # an input changes
    assert cache.load({"k": 1}, str(store)) is None


def test_a_module_that_would_shadow_an_import_drops_the_segment(tmp_path: Path) -> None:
    store = tmp_path / "cache"
    cache.store({"k": 1}, [], SEGMENT, str(store), absent=[str(tmp_path / "json.py")])
    assert cache.load({"k": 1}, str(store)) == SEGMENT
    (tmp_path / "json.py").write_text("")
    assert cache.load({"k": 1}, str(store)) is None


def test_shadow_candidates_are_the_imported_names_not_yet_there(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (second / "pyudev").mkdir()  # where pyudev resolves
    runtime = pyruntime.Runtime("python3", {"modules": {
        "pyudev": {"file": str(second / "pyudev/__init__.py")},
        "pyudev.device": {"file": str(second / "pyudev/device.py")},
        "sys": {"file": None},  # built in: no file can take its place
    }})
    runtime.search_dirs = [str(first), str(second)]
    candidates = pyruntime.shadow_candidates(runtime)
    assert {str(first / "pyudev.py"), str(first / "pyudev"), str(second / "pyudev.py")} \
        <= set(candidates)
    assert str(second / "pyudev") not in candidates  # there now: its files are inputs
    assert not any("sys" in Path(c).name or "device" in Path(c).name for c in candidates)
