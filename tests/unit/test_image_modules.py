"""The Python modules an image carries are listed by hand (pyruntime.INIT_MODULES, each
stack's NEEDS.python) while the init imports many of them inside functions. Every pyinit
module that a carried module imports, anywhere but under TYPE_CHECKING, must be carried:
otherwise only a boot down that path would find it missing."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from pyinit.builder import appliance, pyruntime
from pyinit.storage import STACKS, stack_module

REPO = Path(__file__).resolve().parents[2]


def carried(extra: list[str]) -> set[str]:
    info = pyruntime.probe(sys.executable, pyruntime.INIT_MODULES + extra, pyruntime.EXCLUDES)
    assert info["failed"] == {}, info["failed"]
    modules = info["modules"]
    assert isinstance(modules, dict)
    return {name for name in modules if name.startswith("pyinit")}


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imported(module: str) -> set[str]:
    """The pyinit modules MODULE's source imports, at any depth but TYPE_CHECKING blocks."""
    path = REPO / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = REPO / module.replace(".", "/") / "__init__.py"
    if not path.exists():
        return set()  # the compiled cffi module
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def walk(node: ast.AST) -> None:
        if _type_checking(node):
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("pyinit"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            if base.startswith("pyinit"):
                found.add(base)
                for alias in node.names:  # from pyinit import log: a module
                    name = f"{base}.{alias.name}"
                    if (REPO / (name.replace(".", "/") + ".py")).exists() or \
                            (REPO / name.replace(".", "/")).is_dir():
                        found.add(name)
        for child in ast.iter_child_nodes(node):
            walk(child)

    walk(ast.parse(path.read_text(), str(path)))
    return found


def test_every_module_the_init_imports_is_carried() -> None:
    # The storage stacks', the appliance's and udevd's: what only some images carry.
    stacks = [m for s in STACKS for m in stack_module(s).NEEDS.python] + list(
        appliance.PYTHON) + pyruntime.UDEV_MODULES
    plain, full = carried([]), carried(stacks)
    assert plain < full
    missing = {f"{m} imports {t}" for m in full for t in imported(m)
               if t not in full and not t.startswith("pyinit.builder")}
    assert missing == set()
    # A plain image may lack only what a stack carries, never something no list names.
    assert {t for m in plain for t in imported(m)} - full == set()


def test_the_check_sees_function_local_imports() -> None:
    assert "pyinit.overlay" in imported("pyinit.stages")  # inside overlay_request()
    assert "pyinit.uevents" not in imported("pyinit.init")  # under TYPE_CHECKING only
