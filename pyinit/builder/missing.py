"""The one line for a Python module the builder needs and cannot import: a clone where
`pip install -e .` never ran. Imports nothing, so it works when the rest cannot load."""

import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def message(err: ImportError) -> str:
    name = err.name or str(err)
    if not name.startswith("pyinit."):
        name = name.split(".")[0]  # the package to install, not its submodule
    return (f"expected the Python module {name}, found none: run `pip install -e .` in {REPO}, "
            "which installs pyinit's dependencies")
