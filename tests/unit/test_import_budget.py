"""The regression guard for boot-time imports: a count, never a time."""

from __future__ import annotations

import json
from pathlib import Path

from pyinit.build import pyruntime

BUDGET = json.loads((Path(__file__).parents[1] / "import_budget.json").read_text())


def test_the_init_imports_no_more_modules_than_the_budget() -> None:
    info = pyruntime.probe(pyruntime.resolve_python(None), pyruntime.INIT_MODULES,
                           pyruntime.EXCLUDES)
    assert info["failed"] == {}
    modules = sorted(info["modules"])  # type: ignore[call-overload]
    assert len(modules) <= BUDGET["max_modules"], (
        f"the init now imports {len(modules)} modules, the budget is "
        f"{BUDGET['max_modules']}: {modules}")
    # Nothing the image leaves out may sneak back in through a new import.
    for excluded in pyruntime.EXCLUDES:
        assert excluded not in modules
