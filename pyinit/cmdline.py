"""The kernel command line (/proc/cmdline) parsed into one frozen options object.

Splitting follows the kernel's own rules (lib/cmdline.c next_arg): words are separated by
white space, double quotes group, a quote is dropped where it opens or closes a group, and
everything after a lone ``--`` belongs to init. Repeated keys: the last one wins, except
for the list-valued keys (rd.break, blacklists, rd.driver.pre), which accumulate.

A bad value of a key that decides *what* boots (root=, init=, resume= and the storage keys)
is an error that stops the boot; a bad value of any other key is a warning, and the key
keeps its previous value or its default: a typo in a timeout must not make a machine
unbootable. Keys pyinit does not know are ignored, as the kernel ignores them.
"""

from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple

from pyinit import layout
from pyinit.errors import BootError
from pyinit.rootspec import RootSpec, RootSpecError, parse_root

# Every boolean key's words, as systemd's parse_boolean() (any case); the bare key is on.
TRUE = ("1", "yes", "y", "true", "t", "on")
FALSE = ("0", "no", "n", "false", "f", "off")
LIVE = "live:"  # root=live:DEVSPEC (pyinit.liveimg)
WHITESPACE = frozenset(" \t\n\v\f\r")  # the kernel's isspace(), not Unicode's
STAGES = ("cmdline", "modules", "discover", "mount", "switch_root")
EMERGENCY_ACTIONS = ("shell", "reboot", "poweroff", "halt")
LOG_FORMATS = ("pretty", "json")
# Keys whose bad values stop the boot: they decide what boots. (The storage keys do too;
# the storage modules read them, pyinit.storage.cmdline_errors.)
DECIDING = ("root", "init", "resume", "resume_offset")
# The Options field each lenient key sets, to name the value it keeps after a bad one.
FIELDS = {"rootfstype": "rootfstype", "rootflags": "rootflags", "rootdelay": "rootdelay",
          "rd.timeout": "timeout", "rd.break": "breaks", "rd.shell": "shell",
          "rd.emergency": "emergency", "panic": "panic", "pyinit.log": "log_format",
          "fsck.mode": "fsck_mode", "fsck.repair": "fsck_repair"}


class CmdlineError(BootError, ValueError):
    """A known key has a value pyinit cannot use."""


class Options(NamedTuple):
    """What the kernel command line asked of the init; values it could not read are
    described in errors (they stop the boot) or warnings (they do not), never raised.
    (A NamedTuple: under TCG a frozen dataclass of this size costs 0.03 s to create at
    import. Its module has no ``from __future__ import annotations``: NamedTuple would
    compile each string annotation, 0.02 s more.)"""

    root: RootSpec | None = None
    rootfstype: str | None = None
    rootflags: str | None = None
    read_only: bool = True
    init: str | None = None
    init_args: tuple[str, ...] = ()
    rootwait: bool = False
    rootdelay: float = 0.0
    timeout: float = 60.0
    breaks: frozenset[str] = frozenset()
    shell: bool = True
    emergency: str = "shell"
    panic: int | None = None
    quiet: bool = False
    blacklist: frozenset[str] = frozenset()
    driver_pre: tuple[str, ...] = ()
    log_format: str = "pretty"
    fsck_mode: str = "auto"
    fsck_repair: str = "preen"
    resume: RootSpec | None = None
    resume_offset: int | None = None
    noresume: bool = False
    raw: Mapping[str, str | None] = MappingProxyType({})
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    params: tuple[str, ...] = ()

    def to_cmdline(self) -> str:
        """A canonical command line that parses back to these options."""
        words = []
        if self.root is not None:
            words.append(f"root={self.root.text}")
        for key, value in (("rootfstype", self.rootfstype), ("rootflags", self.rootflags),
                           ("init", self.init)):
            if value is not None:
                words.append(f"{key}={value}")
        words.append("ro" if self.read_only else "rw")
        if self.rootwait:
            words.append("rootwait")
        words.append(f"rootdelay={self.rootdelay!r}")
        words.append(f"rd.timeout={self.timeout!r}")
        words.extend(f"rd.break={b}" for b in sorted(self.breaks))
        words.append(f"rd.shell={int(self.shell)}")
        words.append(f"rd.emergency={self.emergency}")
        if self.panic is not None:
            words.append(f"panic={self.panic}")
        if self.quiet:
            words.append("quiet")
        if self.blacklist:
            words.append("module_blacklist=" + ",".join(sorted(self.blacklist)))
        if self.driver_pre:
            words.append("rd.driver.pre=" + ",".join(self.driver_pre))
        words.append(f"pyinit.log={self.log_format}")
        words.append(f"fsck.mode={self.fsck_mode}")
        words.append(f"fsck.repair={self.fsck_repair}")
        if self.resume is not None:
            words.append(f"resume={self.resume.text}")
        if self.resume_offset is not None:
            words.append(f"resume_offset={self.resume_offset}")
        if self.noresume:
            words.append("noresume")
        return join(words, list(self.init_args))


def split(text: str) -> tuple[list[str], list[str]]:
    """Split a command line into (parameters, init arguments after ``--``)."""
    words: list[str] = []
    word: list[str] = []
    in_quote = False
    started = False
    for ch in text:
        if ch == '"':
            in_quote = not in_quote
            started = True
            continue
        if ch in WHITESPACE and not in_quote:
            if started:
                words.append("".join(word))
                word, started = [], False
            continue
        word.append(ch)
        started = True
    if started:
        words.append("".join(word))
    if "--" in words:
        i = words.index("--")
        return words[:i], words[i + 1 :]
    return words, []


def _quote(word: str) -> str:
    return f'"{word}"' if any(c in WHITESPACE for c in word) or not word else word


def join(params: list[str], init_args: list[str]) -> str:
    """The inverse of split(): words with white space are quoted whole."""
    text = " ".join(_quote(p) for p in params)
    if init_args:
        text += " -- " + " ".join(_quote(a) for a in init_args)
    return text


def amend(options: Options, extra: str, init_args: tuple[str, ...] | None = None) -> Options:
    """OPTIONS with more parameters appended (later keys win); init arguments kept unless
    INIT_ARGS replaces them."""
    params, _ = split(extra)
    args = options.init_args if init_args is None else init_args
    return parse(join([*options.params, *params], list(args)))


def _number(key: str, value: str | None, minimum: float = 0) -> float:
    try:
        number = float(value or "")
    except ValueError:
        raise CmdlineError(f"{key}={value or ''}: expected a number of seconds") from None
    if number != number or number < minimum or number == float("inf"):
        raise CmdlineError(f"{key}={value}: expected a number >= {minimum:g}")
    return number


def _integer(key: str, value: str | None) -> int:
    try:
        if len(value or "") > 18:
            raise ValueError(value)
        return int(value or "")
    except ValueError:
        raise CmdlineError(f"{key}={value or ''}: expected a whole number") from None


def _choice(key: str, value: str | None, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise CmdlineError(f"{key}={value or ''}: expected one of {', '.join(choices)}")
    return value


def _names(value: str | None) -> list[str]:
    return [n.strip().replace("-", "_") for n in (value or "").split(",") if n.strip()]


def boolean(key: str, value: str | None) -> bool:
    """A boolean key's value, as systemd's parse_boolean() reads it; the bare key is on."""
    if value is None or value.lower() in TRUE:
        return True
    if value.lower() in FALSE:
        return False
    raise CmdlineError(f"{key}={value}: expected 0 or 1")


def _kept(key: str, options: Options) -> str:
    field = FIELDS.get(key)
    if field is None:
        return "ignored"
    value = getattr(options, field)
    if isinstance(value, frozenset):
        value = ",".join(sorted(value)) or "none"
    elif isinstance(value, bool):
        value = int(value)
    elif isinstance(value, float):
        value = f"{value:g}"
    return f"ignored, {key} stays {'unset' if value is None else value}"


def parse(text: str) -> Options:
    """Parse the command line. Never raises: each known key with a bad value leaves an
    entry in ``errors`` (keys that decide what boots) or ``warnings`` (the others), naming
    the key, what was expected and what was found; the key keeps its previous value or its
    default. The boot decides what to do about them."""
    params, init_args = split(text)
    raw: dict[str, str | None] = {}
    values: dict[str, object] = {}
    breaks: set[str] = set()
    blacklist: set[str] = set()
    driver_pre: list[str] = []
    errors: list[str] = []
    warnings: list[tuple[str, str]] = []
    for param in params:
        key, sep, val = param.partition("=")
        value: str | None = val if sep else None
        raw[key] = value
        try:
            _apply(key, value, values, breaks, blacklist, driver_pre)
        except CmdlineError as err:
            if key in DECIDING:
                errors.append(str(err))
            else:
                warnings.append((key, str(err)))
    options = Options(
        breaks=frozenset(breaks),
        blacklist=frozenset(blacklist),
        driver_pre=tuple(driver_pre),
        init_args=tuple(init_args),
        raw=MappingProxyType(raw),
        errors=tuple(errors),
        params=tuple(params),
        **values,  # type: ignore[arg-type]
    )
    if not warnings:
        return options
    return options._replace(warnings=tuple(f"{text}; {_kept(key, options)}"
                                           for key, text in warnings))


def parse_bytes(data: bytes) -> Options:
    """/proc/cmdline as read: bytes that are not UTF-8 become U+FFFD, NULs separate words."""
    return parse(data.replace(b"\0", b" ").decode("utf-8", errors="replace"))


def _apply(key: str, value: str | None, values: dict[str, object], breaks: set[str],
           blacklist: set[str], driver_pre: list[str]) -> None:
    if key in ("root", "resume"):
        try:
            if key == "root" and value is not None and value.startswith(LIVE):
                # dracut's image file on a partition: root= names the partition
                spec = parse_root(value[len(LIVE):])
                spec.text = value
                values[key] = spec
            else:
                values[key] = parse_root(value or "")
        except RootSpecError as err:
            raise CmdlineError(str(err).replace("root=", f"{key}=")) from None
    elif key == "resume_offset":
        values["resume_offset"] = _integer(key, value)
    elif key == "noresume" and value is None:
        values["noresume"] = True
    elif key in ("rootfstype", "rootflags", "init"):
        if not value:
            raise CmdlineError(f"{key}= is empty: expected a value")
        if key == "init" and not value.startswith("/"):
            raise CmdlineError(f"init={value}: expected an absolute path")
        values[key] = value
    elif key == "ro" and value is None:
        values["read_only"] = True
    elif key == "rw" and value is None:
        values["read_only"] = False
    elif key == "rootwait" and value is None:
        values["rootwait"] = True
    elif key == "rootdelay":
        values["rootdelay"] = _number(key, value)
    elif key == "rd.timeout":
        values["timeout"] = _number(key, value)
    elif key == "rd.break":
        for stage in (value or "switch_root").split(","):
            breaks.add(_choice(key, stage, STAGES))
    elif key == "rd.shell":
        values["shell"] = boolean(key, value)
    elif key == "rd.emergency":
        values["emergency"] = _choice(key, value, EMERGENCY_ACTIONS)
    elif key == "panic":
        values["panic"] = _integer(key, value)
    elif key == "quiet" and value is None:
        values["quiet"] = True
    elif key in ("module_blacklist", "modprobe.blacklist"):
        blacklist.update(_names(value))
    elif key == "rd.driver.pre":
        driver_pre.extend(n for n in _names(value) if n not in driver_pre)
    elif key == "pyinit.log":
        values["log_format"] = _choice(key, value, LOG_FORMATS)
    elif key == "fsck.mode":
        values["fsck_mode"] = _choice(key, value, ("auto", "skip", "force"))
    elif key == "fsck.repair":
        values["fsck_repair"] = _choice(key, value, ("preen", "yes", "no"))


def read(init_args: tuple[str, ...]) -> Options:
    """/proc/cmdline over the image's defaults. INIT_ARGS are the arguments the kernel
    passed to /init (what it did not know, and everything after "--"): the real init's."""
    with open("/proc/cmdline", "rb") as fh:
        options = parse_bytes(fh.read())
    try:
        with open(layout.DEFAULT_CMDLINE, "rb") as fh:
            defaults = parse_bytes(fh.read())
    except FileNotFoundError:
        defaults = Options()
    return amend(defaults, join(list(options.params), []), init_args)


def storage_stack(key: str) -> str | None:
    """The storage stack whose command-line key KEY is (rd.lvm.vg -> lvm), None for other
    keys (pyinit.layout.STORAGE_KEYS: checked even where no stack is carried)."""
    for name, prefixes in layout.STORAGE_KEYS.items():
        if any(key == p or key.startswith(p + ".") for p in prefixes):
            return name
    return None
