"""The regression guard for boot-time imports: a count, never a time."""

from __future__ import annotations

import json
import subprocess
import sysconfig
from pathlib import Path

from pyinit import lazyimport
from pyinit.builder import pyruntime

BUDGET = json.loads((Path(__file__).parents[1] / "import_budget.json").read_text())
REPO = str(Path(__file__).parents[2])

# Imports what the init imports, as /init does (-I -S, deferral installed first, and the
# optional modules the image leaves out refused, as in the image), and reports the modules
# whose code ran and those still deferred.
COUNT = """
import json, sys
sys.path[:0] = {path!r}
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {excludes!r}:
            raise ModuleNotFoundError(name, name=name)
sys.meta_path.insert(0, Refuse())
from pyinit import lazyimport
lazyimport.install()
for name in {modules!r}:
    __import__(name)
deferred = lazyimport.pending()
{touch}
print(json.dumps({{"ran": sorted(set(sys.modules) - set(deferred)), "deferred": deferred}}))
"""

# Each DEFERRED module, touched after the init's imports as the failure path, the rescue
# console, fsck, udevd or pyinit.early=1 touch it: it must load for real and work.
TOUCH = {
    "copy": "copy.deepcopy({'a': [1]}) == {'a': [1]}",
    "datetime": "datetime.date(2026, 1, 2).isoformat() == '2026-01-02'",
    "linecache": "linecache.getline(lazyimport.__file__, 1).startswith('\"\"\"')",
    "logging": "logging.getLogger('pyinit-test').name == 'pyinit-test'",
    "pyinit.console": "callable(pyinit.console.interact) and pyinit.console.code.compile_command",
    "structlog.stdlib": "structlog.stdlib.get_logger() is not None",
    "structlog.threadlocal": "callable(structlog.threadlocal.wrap_dict)",
    "subprocess": "subprocess.run(['true']).returncode == 0",
    "textwrap": "textwrap.dedent('  a') == 'a'",
    "threading": "threading.Thread(target=int).start() is None",
}
TOUCHED = """
import importlib, traceback
for name, check in {checks!r}.items():
    assert name in deferred, name
    globals()[name.split(".")[0]] = importlib.import_module(name.split(".")[0])
    assert eval(check), (name, check)
    assert name not in lazyimport.pending(), name
try:
    lazyimport._Unused("absent").attribute
except ImportError as err:  # raised in lazyimport.py: linecache reads its source line
    text = "".join(traceback.format_exception(err))
    assert 'raise ImportError(f"{{self.__name__}}.{{attr}}' in text, text
deferred = lazyimport.pending()
"""


def imports_at_boot(touch: str = "") -> dict[str, list[str]]:
    """What a plain root's boot runs: the init's modules, without the features only a
    command line that asks for them imports (then TOUCH's code, if given)."""
    site = sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})
    plain = [m for m in pyruntime.INIT_MODULES if m not in pyruntime.ON_DEMAND]
    script = COUNT.format(path=[REPO, *site], modules=plain,
                          excludes=pyruntime.EXCLUDES, touch=touch)
    done = subprocess.run([pyruntime.resolve_python(None), "-I", "-S", "-c", script],
                          capture_output=True, text=True, check=True)
    result: dict[str, list[str]] = json.loads(done.stdout)
    return result


def test_the_init_runs_no_more_modules_than_the_budget() -> None:
    ran = imports_at_boot()["ran"]
    # A plain root's boot never imports a storage stack (nor the storage package).
    assert [m for m in ran if m.startswith("pyinit.storage") or m == "pyinit.prompt"] == []
    assert [m for m in ran if m in pyruntime.ON_DEMAND or m.startswith(
        ("pyinit.verity", "pyinit.devmapper"))] == []
    assert len(ran) <= BUDGET["max_modules"], (
        f"the init now runs {len(ran)} modules, the budget is {BUDGET['max_modules']}: {ran}")


def test_deferred_modules_never_run_on_the_boot_path() -> None:
    # A new import that touches one of them (or a dataclass without a docstring, which makes
    # dataclasses call inspect) shows up here, not as a slower boot.
    found = imports_at_boot()
    assert set(found["ran"]) & set(lazyimport.UNUSED + lazyimport.DEFERRED) == set()
    # Each DEFERRED name is still imported somewhere (else its entry is stale).
    assert set(lazyimport.DEFERRED) <= set(found["deferred"])


def test_each_deferred_module_loads_and_works_when_touched() -> None:
    assert sorted(TOUCH) == sorted(lazyimport.DEFERRED)
    after = imports_at_boot(TOUCHED.format(checks=TOUCH))
    assert set(after["deferred"]) <= set(lazyimport.UNUSED)
    assert set(lazyimport.DEFERRED) <= set(after["ran"])


def test_the_image_leaves_unused_modules_out() -> None:
    info = pyruntime.probe(pyruntime.resolve_python(None), pyruntime.INIT_MODULES,
                           pyruntime.EXCLUDES)
    assert info["failed"] == {}
    modules = info["modules"]
    assert isinstance(modules, dict)
    runtime = pyruntime.collect(None)
    shipped = set(runtime.stdlib_zip)
    for name in lazyimport.UNUSED:  # neither they nor what only they import
        assert f"{name}.pyc" not in shipped and f"{name}/__init__.pyc" not in shipped
    assert not any(arc.startswith(("asyncio/", "concurrent/")) for arc in shipped)
    assert "random.pyc" not in shipped  # tempfile's, and only tempfile's
    # Nothing the image leaves out may sneak back in through a new import.
    for excluded in pyruntime.EXCLUDES:
        assert excluded not in modules
