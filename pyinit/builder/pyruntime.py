"""The Python runtime for the image: the interpreter, the standard-library modules the init
imports (byte-compiled, in the interpreter's own pythonXY.zip), the extension modules they
load, and the third-party packages with pyinit itself under /usr/lib/pyinit."""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.util
import io
import json
import marshal
import os
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pyinit import layout, lazyimport

PYINIT_SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# What only a command line that asks for it imports (pyinit.stages imports them inside
# functions): the overlay and image-file features. Carried in every image, never run on a
# plain root's boot.
ON_DEMAND = ["pyinit.overlay", "pyinit.liveimg"]
# What only a boot that listens through udevd imports (pyinit.uevents, for udevd's events
# and database): carried only by images that start udevd first (udev mode "always").
# Without it the init reads the kernel's uevents itself (pyinit.kernelevents), and pyudev,
# ctypes and libudev stay out of the image.
UDEV_MODULES = ["pyinit.libfind", "pyudev"]
# What the init imports, including the imports it makes inside functions, and the codecs
# the interpreter itself loads at start-up.
INIT_MODULES = ["pyinit.lazyimport", "pyinit.init", "pyinit.stages", "pyinit.rescue",
                "pyinit.uevents", "pyinit.resume", *ON_DEMAND,
                "encodings.utf_8", "encodings.latin_1", "encodings.ascii", "encodings.aliases"]
# Optional imports whose importers fall back cleanly (try/except ImportError) and which the
# init never needs: asyncio's ssl support (and OpenSSL with it), shutil's bz2, structlog's
# colorama, readline for the rescue console's line editing, shutil's lzma (the builder
# stores modules decompressed for kernels that cannot decompress them), shutil's zlib (the
# stdlib zip is stored, so zipimport never inflates); and C accelerators whose
# modules carry a pure-Python implementation the init's few calls do not notice.
EXCLUDES = ["ssl", "_ssl", "bz2", "_bz2", "colorama", "readline",
            "_pickle", "_datetime", "_json", "_asyncio", "_heapq", "_bisect", "lzma", "_lzma",
            "_uuid", "_opcode", "_typing", "zlib"]
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
# As python -OO: docstrings (never read on the boot path) and asserts are compiled out,
# except in modules that define dataclasses: a dataclass without a docstring gets one made
# by inspect.signature at class creation, which needs inspect (0.08 s under TCG, and left
# out of the image: pyinit.lazyimport.UNUSED) and a signature per class.
OPTIMIZE = 2
OPTIMIZE_DATACLASSES = 1
# C libraries that third-party modules open with ctypes at run time (no DT_NEEDED names them).
CTYPES_LIBRARIES = {"pyudev": ["udev"]}


PROBE_TIMEOUT = 120  # seconds for the target interpreter to import the init's modules


class RuntimeError_(RuntimeError):
    """The interpreter cannot be used, or a module the init needs is missing."""


@dataclass
class Runtime:
    python: str
    info: dict[str, object]
    stdlib_zip: dict[str, bytes] = field(default_factory=dict)  # arcname -> pyc
    files: dict[str, str] = field(default_factory=dict)  # image path -> host path (ext, .so)
    libraries: list[str] = field(default_factory=list)  # sonames opened through ctypes
    sources: list[str] = field(default_factory=list)  # every host file the runtime was made of
    search_dirs: list[str] = field(default_factory=list)  # where imports were resolved
    site: dict[str, bytes] = field(default_factory=dict)  # image path -> pyc bytes

    @property
    def executable(self) -> str:
        return os.path.realpath(str(self.info["executable"]))


def resolve_python(python: str | None) -> str:
    """The interpreter to probe: --python, else the one running the builder. A venv's
    interpreter stays as named, so the probe sees the venv's packages; the image gets the
    binary it links to (Runtime.executable)."""
    if python is None:
        return sys.executable
    if not os.path.isfile(python) or not os.access(python, os.X_OK):
        raise RuntimeError_(f"--python {python}: expected an executable Python, found none")
    return os.path.abspath(python)


def probe(python: str, modules: list[str], excludes: list[str],
          unused: Sequence[str] = lazyimport.UNUSED) -> dict[str, object]:
    request = json.dumps({"path": [PYINIT_SRC], "modules": modules, "excludes": excludes,
                          "unused": list(unused)})
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pyprobe.py")
    try:
        out = subprocess.run([python, "-I", "-S", script, request], check=True,
                             capture_output=True, text=True, errors="replace",
                             timeout=PROBE_TIMEOUT)
    except subprocess.CalledProcessError as err:
        last = (err.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError_(f"{python}: probing its modules failed: {last}") from err
    except subprocess.TimeoutExpired as err:
        raise RuntimeError_(f"{python}: expected pyprobe.py to report within {PROBE_TIMEOUT} s, "
                            "found it still running (stopped)") from err
    except OSError as err:
        raise RuntimeError_(f"--python {python}: expected an executable Python, found: "
                            f"{err.strerror}") from err
    return checked_report(python, out.stdout)


# What pyprobe.py prints, key by key: a Python that prints something else is refused here,
# not deep in the build.
REPORT: dict[str, type] = {"failed": dict, "version": list, "executable": str, "prefix": str,
                           "zip_path": str, "stdlib": str, "platstdlib": str, "site": list,
                           "modules": dict}


def checked_report(python: str, text: str) -> dict[str, object]:
    try:
        report = json.loads(text)
    except ValueError:
        report = None
    if not (isinstance(report, dict) and _well_formed(report)):
        raise RuntimeError_(f"{python}: expected pyprobe.py's JSON report on stdout, found "
                            f"{text.strip()[:60]!r}")
    return report


def _well_formed(report: dict[str, Any]) -> bool:
    if not all(isinstance(report.get(key), kind) for key, kind in REPORT.items()):
        return False
    return (all(isinstance(v, str) for v in report["failed"].values())
            and len(report["version"]) == 2
            and all(isinstance(v, int) for v in report["version"])
            and all(isinstance(v, str) for v in report["site"])
            and all(isinstance(m, dict) and isinstance(m.get("file"), str | None)
                    for m in report["modules"].values()))


def defines_dataclasses(source: bytes) -> bool:
    """Whether a class in the module is decorated with dataclass (any spelling)."""
    if b"dataclass" not in source:
        return False
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            for decorator in node.decorator_list:
                target = decorator.func if isinstance(decorator, ast.Call) else decorator
                name = (target.attr if isinstance(target, ast.Attribute)
                        else getattr(target, "id", ""))
                if name == "dataclass":
                    return True
    return False


# The compiler runs in the target interpreter started with -X no_debug_ranges: code objects
# without column positions (PEP 657), 9% less marshal data to pack and to load at boot;
# tracebacks keep their line numbers and lose only the ^^^ markers under the expression.
COMPILER = """
import marshal, sys
out = [marshal.dumps(compile(source, name, "exec", dont_inherit=True, optimize=optimize))
       for source, name, optimize in marshal.load(sys.stdin.buffer)]
sys.stdout.buffer.write(marshal.dumps(out))
"""
COMPILE_TIMEOUT = 120  # seconds for the target interpreter to compile the init's modules


def pycs(python: str, sources: Sequence[tuple[str, str]]) -> list[bytes]:
    """Unchecked hash-based pycs (PEP 552: no mtime, no stat of a source at import) of
    SOURCES, (path, name shown in tracebacks) pairs, compiled by PYTHON in one child."""
    datas = []
    for path, _name in sources:
        with open(path, "rb") as fh:
            datas.append(fh.read())
    jobs = [(data, name, OPTIMIZE_DATACLASSES if defines_dataclasses(data) else OPTIMIZE)
            for (_path, name), data in zip(sources, datas, strict=True)]
    try:
        done = subprocess.run([python, "-X", "no_debug_ranges", "-I", "-S", "-c", COMPILER],
                              input=marshal.dumps(jobs), capture_output=True,
                              check=True, timeout=COMPILE_TIMEOUT)
        codes = marshal.loads(done.stdout)
    except subprocess.CalledProcessError as err:
        last = (err.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        raise RuntimeError_(f"{python}: compiling the init's modules failed: {last}") from err
    except subprocess.TimeoutExpired as err:
        raise RuntimeError_(f"{python}: expected the init's modules compiled within "
                            f"{COMPILE_TIMEOUT} s, found it still running (stopped)") from err
    except (EOFError, ValueError, TypeError) as err:
        raise RuntimeError_(f"{python}: expected marshalled code for {len(jobs)} modules, "
                            f"found {len(done.stdout)} unreadable bytes") from err
    if not (isinstance(codes, list) and len(codes) == len(jobs)
            and all(isinstance(c, bytes) for c in codes)):
        raise RuntimeError_(f"{python}: expected marshalled code for {len(jobs)} modules, "
                            "found something else")
    header = importlib.util.MAGIC_NUMBER + (1).to_bytes(4, "little")
    return [header + importlib.util.source_hash(data) + code
            for data, code in zip(datas, codes, strict=True)]


def owning_root(path: str, roots: Sequence[str]) -> str | None:
    """The deepest of ROOTS (each ending in "/") that holds PATH: a venv inside the checkout
    (CHECKOUT/.venv/lib/...) holds its packages, not the checkout."""
    return max((r for r in roots if path.startswith(r)), key=len, default=None)


def collect(python: str | None, extra_modules: list[str] | None = None) -> Runtime:
    exe = resolve_python(python)
    info = probe(exe, INIT_MODULES + (extra_modules or []), EXCLUDES)
    if info["failed"]:
        failed: dict[str, str] = info["failed"]  # type: ignore[assignment]
        failures = "; ".join(f"{k}: {v}" for k, v in failed.items())
        hint = ""
        if any("No module named 'pyinit._syscalls'" in v for v in failed.values()):
            hint = f" (pyinit's cffi module is not built: run `pip install -e .` in {PYINIT_SRC})"
        elif any(v.startswith("ModuleNotFoundError") for v in failed.values()):
            hint = f" (install the missing packages for {exe}: `pip install -e .` does it for " \
                   "the interpreter running the builder; on Debian, apt's python3-pyudev, " \
                   "python3-structlog and python3-cffi-backend do it for /usr/bin/python3)"
        raise RuntimeError_(f"{exe} cannot import what the init needs: {failures}{hint}")
    version = info["version"]
    if version != list(sys.version_info[:2]):
        found = ".".join(str(v) for v in version)  # type: ignore[attr-defined]
        raise RuntimeError_(f"--python {exe} is Python {found} but the "
                            f"builder runs on {sys.version_info[0]}.{sys.version_info[1]}: run "
                            f"the builder with that interpreter")
    runtime = Runtime(exe, info)
    stdlib = str(info["stdlib"]).rstrip("/") + "/"
    sites = [str(s).rstrip("/") + "/" for s in info["site"]]  # type: ignore[attr-defined]
    src_root = PYINIT_SRC.rstrip("/") + "/"
    modules: dict[str, dict[str, object]] = info["modules"]  # type: ignore[assignment]
    missing = []
    compiled: list[tuple[dict[str, bytes], str, str, str]] = []  # (where, key, path, name)
    for name, module in sorted(modules.items()):
        path = module["file"]
        if path is None:
            continue  # built into the interpreter
        if name in lazyimport.UNUSED:
            continue  # /init binds a stand-in that names it if it is ever used
        path = str(path)
        runtime.sources.append(path)
        if not os.path.exists(path):
            missing.append(f"{name} ({path})")
            continue
        owner = owning_root(path, [src_root, *sites])
        if owner is None and path.startswith(stdlib):
            rel = path[len(stdlib):]
            if path.endswith(".py"):
                compiled.append((runtime.stdlib_zip, rel[:-3] + ".pyc", path, rel))
            else:
                runtime.files[path] = path  # lib-dynload extension module
        elif owner is not None:
            rel = path[len(owner):]
            dest = f"{layout.SITE}/{rel}"
            if path.endswith(".py"):
                compiled.append((runtime.site, dest[:-3] + ".pyc", path, rel))
            else:
                runtime.files[dest] = path
        else:
            missing.append(f"{name} ({path}: outside the stdlib and site-packages)")
    runtime.search_dirs = [stdlib, *sites, src_root,
                           os.path.join(str(info["platstdlib"]), "lib-dynload")]
    for package, names in CTYPES_LIBRARIES.items():
        if package in modules:
            runtime.libraries.extend(names)
    if missing:
        raise RuntimeError_("modules the init imports cannot be shipped: " + ", ".join(missing))
    codes = pycs(exe, [(path, name) for _where, _key, path, name in compiled])
    for (where, key, _path, _name), data in zip(compiled, codes, strict=True):
        where[key] = data
    return runtime


def shadow_candidates(runtime: Runtime) -> list[str]:
    """Paths that do not exist now and would change what an import resolves to if they
    appeared: NAME.py, NAME/, NAME.pyc and NAME + each extension suffix, for each top-level
    module the init imports, in each directory imports search. (The directories' mtimes
    would also see these, and every unrelated file written beside the sources.)"""
    names = sorted({name.split(".")[0] for name, module in
                    runtime.info["modules"].items()  # type: ignore[attr-defined]
                    if module["file"] is not None})
    suffixes = [".py", "", ".pyc", *importlib.machinery.EXTENSION_SUFFIXES]
    return [path for directory in runtime.search_dirs for name in names for suffix in suffixes
            if not os.path.lexists(path := os.path.join(directory, name + suffix))]


def stdlib_zip_bytes(runtime: Runtime) -> bytes:
    """One zip of the stdlib pycs, entries sorted with a fixed date: reproducible."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for arc in sorted(runtime.stdlib_zip):
            zinfo = zipfile.ZipInfo(arc, ZIP_DATE)
            zinfo.external_attr = 0o644 << 16
            archive.writestr(zinfo, runtime.stdlib_zip[arc])
    return buffer.getvalue()
