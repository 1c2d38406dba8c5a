"""The runtime segment cache: the Python runtime, pyinit and the skeleton are the same for
every kernel, so their compressed archive is kept and reused while none of the files it
was made from has changed (size, mtime and inode of each) and none of the files that would
change what an import resolves to has appeared. Directories are not stamped: an image
written beside the sources must not make the next build cold. Kernel-specific parts are
packed fresh every build."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

from pyinit.builder import output

CACHE = os.path.join(os.environ.get("PYINIT_CACHE", os.path.expanduser("~/.cache/pyinit")),
                     "runtime")


def stamp(path: str) -> list[object]:
    try:
        st = os.stat(path)
    except OSError:
        return [path, None]
    return [path, st.st_size, st.st_mtime_ns, st.st_ino]


@dataclass
class Segment:
    data: bytes  # compressed newc archive
    unpacked: int
    parts: dict[str, int]
    symlinks: dict[str, str]  # image path -> target, to resolve later paths through
    entries: int
    paths: dict[str, list[str]]  # image path -> [type letter, part]: what later parts avoid


def _key(params: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:32]


def load(params: dict[str, object], cache: str = CACHE) -> Segment | None:
    """The cached segment for PARAMS when every input file is unchanged."""
    base = os.path.join(cache, _key(params))
    try:
        with open(base + ".json", encoding="utf-8") as fh:
            meta = json.load(fh)
        if any(stamp(str(p[0])) != p for p in meta["inputs"]):
            return None
        if any(os.path.lexists(p) for p in meta["absent"]):
            return None
        with open(base + ".cpio", "rb") as fh:
            data = fh.read()
        if hashlib.sha256(data).hexdigest() != meta["sha256"]:
            return None
        return Segment(data, meta["unpacked"], meta["parts"], meta["symlinks"],
                       meta["entries"], meta["paths"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing, unreadable or from an older builder: rebuilt


def store(params: dict[str, object], inputs: list[str], segment: Segment,
          cache: str = CACHE, absent: list[str] | None = None) -> None:
    """Keep SEGMENT for PARAMS while the INPUTS files stay as they are and none of the
    ABSENT paths appears."""
    os.makedirs(cache, exist_ok=True)
    base = os.path.join(cache, _key(params))
    meta = {"params": params, "inputs": [stamp(p) for p in sorted(set(inputs))],
            "absent": sorted(set(absent or [])),
            "sha256": hashlib.sha256(segment.data).hexdigest(), "unpacked": segment.unpacked,
            "parts": segment.parts, "symlinks": segment.symlinks, "entries": segment.entries,
            "paths": segment.paths}
    for suffix, payload in ((".cpio", segment.data), (".json", json.dumps(meta).encode())):
        output.replace_file(base + suffix, payload)
