"""Deferred imports: found at the import statement, run at first use, errors kept."""

from __future__ import annotations

import dataclasses
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import pyinit
from pyinit import lazyimport


@pytest.fixture
def modules(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "lazy_probe_mod.py").write_text(
        "import sys\nsys.lazy_probe_runs = getattr(sys, 'lazy_probe_runs', 0) + 1\nVALUE = 42\n")
    (tmp_path / "lazy_probe_bad.py").write_text("raise OSError('the file is gone')\n")
    finder = lazyimport.install(["lazy_probe_mod", "lazy_probe_bad", "lazy_probe_unused"])
    sys.path.insert(0, str(tmp_path))
    try:
        yield tmp_path
    finally:
        sys.meta_path.remove(finder)
        sys.path.remove(str(tmp_path))
        for name in ("lazy_probe_mod", "lazy_probe_bad", "lazy_probe_unused"):
            sys.modules.pop(name, None)
        if hasattr(sys, "lazy_probe_runs"):
            del sys.lazy_probe_runs


def test_the_body_runs_at_first_use_and_once(modules: Path) -> None:
    module = importlib.import_module("lazy_probe_mod")
    assert not hasattr(sys, "lazy_probe_runs")
    assert "lazy_probe_mod" in lazyimport.pending()
    importlib.import_module("lazy_probe_mod")  # a second import statement does not run it
    assert not hasattr(sys, "lazy_probe_runs")
    assert module.VALUE == 42
    assert sys.lazy_probe_runs == 1  # type: ignore[attr-defined]
    assert module.VALUE == 42
    assert sys.lazy_probe_runs == 1  # type: ignore[attr-defined]
    assert "lazy_probe_mod" not in lazyimport.pending()


def test_from_import_runs_it(modules: Path) -> None:
    from lazy_probe_mod import VALUE  # type: ignore[import-not-found]

    assert VALUE == 42
    assert sys.lazy_probe_runs == 1  # type: ignore[attr-defined]


def test_other_modules_are_imported_as_usual(modules: Path) -> None:
    (modules / "lazy_probe_other.py").write_text("import sys\nsys.lazy_probe_runs = 1\n")
    try:
        importlib.import_module("lazy_probe_other")
        assert sys.lazy_probe_runs == 1  # type: ignore[attr-defined]
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module("lazy_probe_missing")
    finally:
        sys.modules.pop("lazy_probe_other", None)


def test_a_failing_body_fails_at_first_use_and_again_later(modules: Path) -> None:
    module = importlib.import_module("lazy_probe_bad")
    for _ in range(2):
        with pytest.raises(OSError, match="the file is gone"):
            module.anything  # noqa: B018 - the access is the test


def test_an_unused_module_the_image_lacks_is_named_at_first_use(modules: Path) -> None:
    module = importlib.import_module("lazy_probe_unused")  # absent: bound all the same
    assert "lazy_probe_unused" in lazyimport.pending()
    assert not hasattr(module, "__path__")
    with pytest.raises(ImportError, match="lazy_probe_unused is not in this image"):
        module.run  # noqa: B018
    with pytest.raises(ImportError, match="lazy_probe_unused is not in this image"):
        from lazy_probe_unused import run  # type: ignore[import-not-found]  # noqa: F401


def test_an_unused_module_that_exists_is_only_deferred(modules: Path) -> None:
    (modules / "lazy_probe_unused.py").write_text("VALUE = 7\n")
    module = importlib.import_module("lazy_probe_unused")
    assert module.VALUE == 7


def test_a_plain_module_has_no_path(modules: Path) -> None:
    module = importlib.import_module("lazy_probe_mod")
    assert not hasattr(module, "__path__")
    assert not hasattr(sys, "lazy_probe_runs")


def test_the_init_defines_no_dataclasses() -> None:
    # Python 3.11 builds each dataclass method with exec(), costly under TCG, and a
    # dataclass without a docstring makes dataclasses run inspect (deferred at boot): the
    # init's own modules use NamedTuples and plain classes instead.
    root = Path(pyinit.__file__).parent
    found = []
    for path in sorted([*root.glob("*.py"), *root.glob("storage/*.py")]):
        if path.stem.startswith("_") and path.stem != "__init__":
            continue
        name = ".".join(path.relative_to(root.parent).with_suffix("").parts)
        module = importlib.import_module(name.removesuffix(".__init__"))
        found += [f"{module.__name__}.{name}" for name, value in vars(module).items()
                  if isinstance(value, type) and dataclasses.is_dataclass(value)
                  and value.__module__ == module.__name__]
    assert found == []
