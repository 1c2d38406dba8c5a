"""root= values: every form the kernel, dracut and systemd accept, parsed into one spec."""

from __future__ import annotations

import re

from pyinit.errors import BootError

KINDS = ("path", "uuid", "label", "partuuid", "partlabel", "devnum")

_BY_LINK = {
    "/dev/disk/by-uuid/": "uuid",
    "/dev/disk/by-label/": "label",
    "/dev/disk/by-partuuid/": "partuuid",
    "/dev/disk/by-partlabel/": "partlabel",
}
_PREFIX = {"UUID=": "uuid", "LABEL=": "label", "PARTUUID=": "partuuid", "PARTLABEL=": "partlabel"}
_PARTNROFF = re.compile(r"^(?P<uuid>[^/]+)/PARTNROFF=(?P<off>-?\d+)$", re.IGNORECASE)


class RootSpecError(BootError, ValueError):
    """root= has a value no form accepts."""


class RootSpec:
    """What root= asks for. ``value`` is the UUID/label/path; ``devnum`` is (major, minor);
    ``text`` is root= as written, which equality ignores."""

    __slots__ = ("devnum", "kind", "partnroff", "text", "value")

    def __init__(self, kind: str, value: str, partnroff: int = 0,
                 devnum: tuple[int, int] | None = None, text: str = "") -> None:
        self.kind = kind
        self.value = value
        self.partnroff = partnroff
        self.devnum = devnum
        self.text = text

    def _key(self) -> tuple[str, str, int, tuple[int, int] | None]:
        return self.kind, self.value, self.partnroff, self.devnum

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RootSpec) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (f"RootSpec(kind={self.kind!r}, value={self.value!r}, "
                f"partnroff={self.partnroff!r}, devnum={self.devnum!r}, text={self.text!r})")

    def describe(self) -> str:
        if self.kind == "devnum" and self.devnum is not None:
            return f"the device {self.devnum[0]}:{self.devnum[1]}"
        if self.kind == "path":
            return f"the device {self.value}"
        text = f"the device with {self.kind.upper()}={self.value}"
        if self.partnroff:
            text += f" (partition offset {self.partnroff:+d})"
        return text


def unescape_udev(name: str) -> str:
    r"""udev escapes '/', spaces and other bytes in by-label links as \xNN."""
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), name)


def _decode_hex_devt(text: str) -> tuple[int, int]:
    # The kernel's new_decode_dev(): 12 bits of major, 20 bits of minor, interleaved.
    dev = int(text, 16)
    return (dev & 0xFFF00) >> 8, (dev & 0xFF) | ((dev >> 12) & 0xFFF00)


def parse_root(value: str) -> RootSpec:
    """Parse a root= value. Raises RootSpecError naming what was expected."""
    spec = _parse_root(value)
    spec.text = value
    return spec


def _parse_root(value: str) -> RootSpec:
    text = value.strip()
    if not text:
        raise RootSpecError("root= is empty: expected /dev/NAME, UUID=, LABEL=, PARTUUID=, "
                            "PARTLABEL=, MAJ:MIN or /dev/disk/by-*/...")
    for prefix, kind in _BY_LINK.items():
        if text.startswith(prefix):
            name = unescape_udev(text[len(prefix):])
            if not name or "/" in text[len(prefix):]:
                raise RootSpecError(f"root={value}: expected a name after {prefix}")
            return RootSpec(kind, name)
    upper = text.upper()
    for prefix, kind in _PREFIX.items():
        if upper.startswith(prefix):
            rest = text[len(prefix):]
            if len(rest) >= 2 and rest[0] == rest[-1] and rest[0] in "\"'":
                rest = rest[1:-1]
            if not rest:
                raise RootSpecError(f"root={value}: expected a value after {prefix}")
            if kind == "partuuid":
                m = _PARTNROFF.match(rest)
                if m:
                    return RootSpec(kind, m.group("uuid").lower(), int(m.group("off")))
                if "/" in rest:
                    raise RootSpecError(
                        f"root={value}: expected PARTUUID=UUID or PARTUUID=UUID/PARTNROFF=N"
                    )
            if kind in ("uuid", "partuuid"):
                rest = rest.lower()
            return RootSpec(kind, rest)
    if text.startswith("/dev/"):
        if text == "/dev/" or "\0" in text:
            raise RootSpecError(f"root={value}: expected /dev/NAME")
        return RootSpec("path", text)
    m = re.fullmatch(r"(\d+):(\d+)", text)
    if m:
        return RootSpec("devnum", text, devnum=(int(m.group(1)), int(m.group(2))))
    if re.fullmatch(r"[0-9a-fA-F]{1,8}", text):
        devnum = _decode_hex_devt(text)
        return RootSpec("devnum", text, devnum=devnum)
    if re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]*", text):
        # The kernel accepts a bare name (root=vda1) as /dev/vda1.
        return RootSpec("path", "/dev/" + text)
    raise RootSpecError(
        f"root={value}: not a form pyinit knows; expected /dev/NAME, UUID=, LABEL=, "
        "PARTUUID=[/PARTNROFF=N], PARTLABEL=, MAJ:MIN, hex dev_t or /dev/disk/by-*/..."
    )
