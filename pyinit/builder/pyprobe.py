"""Run by the target interpreter (``PYTHON -I -S pyprobe.py REQUEST``): import the init's
modules the way the init does and report, as JSON on stdout, every module that import
loaded (its file) and the interpreter's layout. Uses only the standard library.

The closure is what importing really loads, not every name modulefinder can reach: optional
imports the importers guard with ``try: ... except ImportError`` (ssl for asyncio, colorama for
structlog) are loaded here only when the request does not exclude them.
"""

import sys

STARTUP = set(sys.modules)  # what the interpreter itself loaded: the image needs it too

import importlib  # noqa: E402 - after STARTUP on purpose
import json  # noqa: E402
import os  # noqa: E402
import sysconfig  # noqa: E402


class _Refuse:
    """A meta path finder that makes the excluded modules unimportable, as in the image."""

    def __init__(self, names: list[str]) -> None:
        self.names = set(names)

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"excluded from the image: {name}", name=name)


def site_dirs() -> list[str]:
    """Where third-party packages live, as the interpreter's own site.py would find them.
    Under -S site.py never ran: a venv (recognised only by site.py, from its pyvenv.cfg) has
    its own directory, and the base interpreter's too when include-system-site-packages is
    true; otherwise site.getsitepackages(), which on Debian's interpreter includes
    /usr/lib/python3/dist-packages where Debian's packages are (sysconfig's purelib names
    /usr/local only). The user's ~/.local site is left out: an image is not one user's."""
    import site

    executable = os.path.abspath(sys.executable)
    dirs: list[str] = []
    base = os.path.dirname(os.path.dirname(executable))  # site.py's venv prefix, always
    for directory in (os.path.dirname(executable), base):
        cfg = os.path.join(directory, "pyvenv.cfg")
        if os.path.isfile(cfg):
            paths = {"base": base, "platbase": base}
            dirs = [sysconfig.get_path(p, "venv", vars=paths) for p in ("purelib", "platlib")]
            if not _venv_includes_system(cfg):
                return list(dict.fromkeys(dirs))
            break
    return list(dict.fromkeys([*dirs, *site.getsitepackages()]))


def _venv_includes_system(cfg: str) -> bool:
    """include-system-site-packages in a venv's pyvenv.cfg, read as site.py reads it: true
    unless the key says otherwise."""
    with open(cfg, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            key, sep, value = line.partition("=")
            if sep and key.strip().lower() == "include-system-site-packages":
                return value.strip().lower() == "true"
    return True


def main() -> None:
    request = json.loads(sys.argv[1])
    site = site_dirs()
    sys.path[:0] = request["path"]
    sys.path.extend(site)
    sys.meta_path.insert(0, _Refuse(request["excludes"]))
    for name in set(sys.modules) - STARTUP:
        del sys.modules[name]  # the probe's own imports count only if the init needs them
    if request["unused"]:  # bound but never run at boot, as /init does: not in the closure
        from pyinit import lazyimport

        lazyimport.install(request["unused"])
    failed = {}
    for name in request["modules"]:
        try:
            importlib.import_module(name)
        except Exception as err:  # reported, the builder decides
            failed[name] = f"{type(err).__name__}: {err}"
    modules = {}
    for name, module in sorted(sys.modules.items()):
        if name == "__main__" or module is None:
            continue
        spec = getattr(module, "__spec__", None)
        frozen = getattr(spec, "origin", None) == "frozen"  # in the interpreter's own binary
        modules[name] = {"file": None if frozen else getattr(module, "__file__", None),
                         "package": bool(getattr(module, "__path__", None))}
    print(json.dumps({
        "failed": failed,
        "version": list(sys.version_info[:2]),
        "executable": sys.executable,
        "prefix": sys.base_prefix,
        "zip_path": next((p for p in sys.path if p.endswith(".zip")), None),
        "stdlib": sysconfig.get_path("stdlib", vars={"installed_base": sys.base_prefix}),
        "platstdlib": sysconfig.get_path("platstdlib", vars={"platbase": sys.base_exec_prefix}),
        "site": site,
        "modules": modules,
    }))


main()
