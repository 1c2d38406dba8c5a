"""The Python runtime's closure: what the probe reports is what the init imports."""

from __future__ import annotations

import importlib.util
import marshal
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from pyinit import layout
from pyinit.builder import pyruntime


def test_frozen_modules_are_not_shipped_as_files() -> None:
    info = pyruntime.probe(sys.executable, ["os", "pyinit.lazyimport"], pyruntime.EXCLUDES)
    modules = info["modules"]
    assert isinstance(modules, dict)
    for name in ("os", "codecs", "io", "abc", "posixpath", "_collections_abc"):
        assert modules[name]["file"] is None  # runs from the interpreter's own binary
    runtime = pyruntime.collect(None)
    assert "os.pyc" not in runtime.stdlib_zip
    assert "importlib/__init__.pyc" in runtime.stdlib_zip  # not frozen: must be there


def test_a_venvs_packages_are_found(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3.*")) / "site-packages"
    (site / "only_in_the_venv.py").write_text("VALUE = 1\n")
    python = str(venv / "bin" / "python")
    assert pyruntime.resolve_python(python) == python  # not the base interpreter it links to
    info = pyruntime.probe(python, ["only_in_the_venv"], [])
    assert info["failed"] == {}
    modules = info["modules"]
    assert isinstance(modules, dict)
    assert modules["only_in_the_venv"]["file"] == str(site / "only_in_the_venv.py")
    # The image gets the real binary, not the venv's symlink.
    runtime = pyruntime.Runtime(python, info)
    assert not os.path.islink(runtime.executable)


def test_dataclass_modules_keep_docstrings(tmp_path: Path) -> None:
    plain = tmp_path / "plain.py"
    plain.write_text('"""module doc"""\nX = 1\n')
    holder = tmp_path / "holder.py"
    holder.write_text('"""module doc"""\nfrom dataclasses import dataclass\n\n\n'
                      '@dataclass\nclass A:\n    """class doc"""\n    x: int = 0\n')
    plain_pyc, holder_pyc = pyruntime.pycs(sys.executable, [(str(plain), "plain.py"),
                                                            (str(holder), "holder.py")])
    assert b"module doc" not in plain_pyc
    assert b"class doc" in holder_pyc


def test_pycs_load_and_carry_lines_but_no_columns(tmp_path: Path) -> None:
    source = tmp_path / "mod.py"
    source.write_text("def f(x):\n    return x.attr + 1\n")
    [data] = pyruntime.pycs(sys.executable, [(str(source), "mod.py")])
    assert data[:4] == importlib.util.MAGIC_NUMBER and data[4:8] == (1).to_bytes(4, "little")
    assert data[8:16] == importlib.util.source_hash(source.read_bytes())
    code = marshal.loads(data[16:])
    f = next(c for c in code.co_consts if isinstance(c, types.CodeType))
    positions = list(f.co_positions())
    assert {line for line, _end, _col, _ecol in positions} == {1, 2}  # lines kept
    assert all(col is None and ecol is None for _line, _end, col, ecol in positions)


def test_a_python_that_cannot_compile_is_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("def (:\n")
    with pytest.raises(pyruntime.RuntimeError_, match=r"compiling the init's modules failed: "
                                                      r"SyntaxError"):
        pyruntime.pycs(sys.executable, [(str(broken), "broken.py")])


def test_only_real_dataclass_decorators_count() -> None:
    assert pyruntime.defines_dataclasses(b"import dataclasses\n@dataclasses.dataclass(frozen=True)"
                                         b"\nclass A:\n    x: int = 0\n")
    assert pyruntime.defines_dataclasses(b"from dataclasses import dataclass\n@dataclass\n"
                                         b"class A:\n    x: int = 0\n")
    # typing.py names @dataclass in docstrings and defines none.
    assert not pyruntime.defines_dataclasses(b'def f():\n    """@dataclass\n    class A: ..."""\n')


DEBIAN_PYTHON = "/usr/bin/python3.11"
DEBIAN_SITE = "/usr/lib/python3/dist-packages/"
needs_debian_python = pytest.mark.skipif(not os.path.exists(DEBIAN_PYTHON),
                                         reason=f"no {DEBIAN_PYTHON} (Debian's python3.11)")


@needs_debian_python
def test_debians_interpreter_finds_debians_packages() -> None:
    """python3-pyudev, python3-structlog and python3-cffi-backend live in
    /usr/lib/python3/dist-packages, which Debian's site.py adds and sysconfig never names."""
    runtime = pyruntime.collect(DEBIAN_PYTHON, pyruntime.UDEV_MODULES)
    for package in ("pyudev/", "structlog/", "_cffi_backend."):
        assert any(s.startswith(DEBIAN_SITE + package) for s in runtime.sources), package


@needs_debian_python
def test_a_venv_of_debians_interpreter_sees_system_packages_only_when_asked(
        tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    subprocess.run([DEBIAN_PYTHON, "-m", "venv", "--without-pip", "--system-site-packages",
                    str(shared)], check=True)
    runtime = pyruntime.collect(str(shared / "bin" / "python"), pyruntime.UDEV_MODULES)
    assert any(s.startswith(DEBIAN_SITE + "pyudev/") for s in runtime.sources)
    isolated = tmp_path / "isolated"
    subprocess.run([DEBIAN_PYTHON, "-m", "venv", "--without-pip", str(isolated)], check=True)
    with pytest.raises(pyruntime.RuntimeError_, match="No module named 'pyudev'"):
        pyruntime.collect(str(isolated / "bin" / "python"), pyruntime.UDEV_MODULES)


def test_a_venv_inside_the_checkout_owns_its_packages() -> None:
    """.ci/install makes CHECKOUT/.venv: its site-packages, not the checkout, own
    _cffi_backend, which the image then finds in its own site directory."""
    roots = ["/src/pyinit/", "/src/pyinit/.venv/lib/python3.11/site-packages/"]
    path = "/src/pyinit/.venv/lib/python3.11/site-packages/_cffi_backend.so"
    assert pyruntime.owning_root(path, roots) == roots[1]
    assert pyruntime.owning_root("/src/pyinit/pyinit/init.py", roots) == roots[0]
    assert pyruntime.owning_root("/usr/lib/python3.11/os.py", roots) is None


def test_the_builders_own_cffi_backend_lands_in_the_image_site() -> None:
    runtime = pyruntime.collect(None)
    backend = [dest for dest, src in runtime.files.items() if "_cffi_backend" in src]
    assert backend and all(d.startswith(layout.SITE + "/_cffi_backend") for d in backend)
