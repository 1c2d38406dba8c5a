"""Run by the target interpreter (``PYTHON -I -S pyprobe.py ARGS``): report its layout and
the import closure of the init as JSON on stdout. Uses only the standard library."""

import json
import modulefinder
import sys
import sysconfig

EXCLUDES = [
    # Never imported on the init's paths, but reachable through optional imports.
    "tkinter", "unittest", "pydoc", "doctest", "test", "idlelib", "lib2to3", "ensurepip",
    "distutils", "setuptools", "pip", "_pytest", "pytest", "cffi", "pycparser", "colorama",
    "rich", "better_exceptions", "IPython", "_frozen_importlib_external", "greenlet",
]


def main() -> None:
    request = json.loads(sys.argv[1])
    site = sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})
    path = request["path"] + sys.path + site
    finder = modulefinder.ModuleFinder(path=path, excludes=EXCLUDES + request["excludes"])
    for name in request["modules"]:
        finder.import_hook(name)
    modules = {}
    for name, module in finder.modules.items():
        modules[name] = {"file": getattr(module, "__file__", None),
                         "package": bool(getattr(module, "__path__", None))}
    missing = {name: sorted(importers) for name, importers in finder.badmodules.items()
               if any(i.startswith("pyinit") for i in importers)}
    print(json.dumps({
        "missing": missing,
        "version": list(sys.version_info[:2]),
        "executable": sys.executable,
        "prefix": sys.base_prefix,
        "exec_prefix": sys.base_exec_prefix,
        "zip_path": sys.path[0],
        "stdlib": sysconfig.get_path("stdlib", vars={"installed_base": sys.base_prefix}),
        "platstdlib": sysconfig.get_path("platstdlib", vars={"platbase": sys.base_exec_prefix}),
        "site": site,
        "builtin": sorted(sys.builtin_module_names),
        "modules": modules,
    }))


main()
