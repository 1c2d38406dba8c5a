"""Storage stacks between the disks and the root filesystem: LUKS, LVM, mdraid, btrfs.

Each stack is one module with a build half (``NEEDS``, and what it reads from the build
host: what the image must carry) and a boot half (``Handler``: what the init does with each
device of its type). The image lists the stacks it carries in layout.STORAGE_FILE; a plain-root
boot reads that file, finds none, and imports none of them.

At boot the assembly loop (pyinit.assemble) offers every probed block device to the
handler for its type; a handler that unlocks, activates or assembles something creates a
new dm or md device, which comes round the same loop. So any stacking order works.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol

from pyinit import cmdline, command, kernlog, layout, udevd
from pyinit.cmdline import FALSE, TRUE
from pyinit.errors import BootError

if TYPE_CHECKING:
    from pyinit.blockdev import BlockDevice
    from pyinit.cmdline import Options
    from pyinit.kmod import Loader

STACKS = ("luks", "lvm", "mdraid", "btrfs")
# Each stack's command-line keys (KEY itself and KEY.anything) are pyinit.layout.STORAGE_KEYS,
# read by pyinit.cmdline.storage_stack: a key given to an image without its stack is named
# without importing that stack. Their names in messages:
TITLES = {"luks": "LUKS", "lvm": "LVM", "mdraid": "mdraid", "btrfs": "btrfs"}
TOOL_TIMEOUT = 600.0  # an argon2 keyslot under emulation, a large volume group


class StorageError(BootError, RuntimeError):
    """A stack could not be brought up; the message names the device and what to do."""

    hint = ("the message names the device and what it needs; rd.luks=0, rd.lvm=0 or "
            "rd.md=0 leave a stack out, rd.break=discover opens the console first")

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint  # what to try for this failure, instead of the stacks' own


class Needs(NamedTuple):
    """The build half of a stack: what an image that carries it needs from the host."""

    tools: tuple[str, ...] = ()  # programs, with their shared libraries
    libraries: tuple[str, ...] = ()  # sonames a program opens with dlopen (no DT_NEEDED)
    modules: tuple[str, ...] = ()  # kernel modules (names or aliases) it always needs
    optional_modules: tuple[str, ...] = ()  # taken where the kernel has them as modules
    # Whether a host-only image takes the optional modules only when this host has them
    # loaded (LVM's device-mapper targets: those of the segment types its volumes use).
    optional_in_use: bool = False
    udev_rules: tuple[str, ...] = ()  # host rules, carried when the image carries udevd
    python: tuple[str, ...] = ()  # the init's modules it imports (for the image's probe)
    dirs: tuple[str, ...] = ()  # directories its tools expect


def stack_module(name: str) -> StackModule:
    module: StackModule = importlib.import_module(f"pyinit.storage.{name}")
    return module


class Env:
    """What a handler may use at boot: the options, the module loader, the log, and the
    tools, run with udevd when the image starts it for storage (so that a systemd root
    finds the dm and md devices' udev database), and without udev sync otherwise."""

    def __init__(self, options: Options, loader: Loader, emit: Callable[..., None],
                 warn: Callable[..., None]) -> None:
        self.options = options
        self.loader = loader
        self.emit = emit
        self.warn = warn

    @property
    def udev_running(self) -> bool:
        return udevd.Udevd.running() is not None

    def before_activation(self) -> None:
        """Before the first dm or md device: say so for the shutdown (layout.STORAGE_ACTIVE)
        and start udevd (once) where the image asks for it."""
        try:
            os.makedirs(layout.RUN_DIR, exist_ok=True)
            with open(layout.STORAGE_ACTIVE, "w", encoding="ascii") as fh:
                fh.write("dm/md devices made by pyinit: take them down at shutdown\n")
        except OSError as err:
            self.warn("storage_marker_failed", error=err.strerror)
        if self.udev_running or udevd.mode() != "storage":
            return
        import time

        started = time.monotonic()
        udev = udevd.Udevd.start()
        self.emit("udevd_started", pid=udev.process.pid, reason="storage",
                  duration=round(time.monotonic() - started, 3))

    def load_modules(self, needs: Needs, reason: str) -> None:
        """The stack's kernel modules, before its first device: the kernel's own requests
        (crypto algorithms, dm targets) would call a /sbin/modprobe the image lacks."""
        from pyinit.kmod import ModuleError

        for name in needs.modules:
            try:
                self.loader.load(name, reason)
            except ModuleError as err:
                raise StorageError(f"{reason}: {err.strerror}") from err
        for name in needs.optional_modules:
            if self.loader.index.resolve(name) in self.loader.index.paths:
                try:
                    self.loader.load(name, reason)
                except ModuleError as err:
                    self.warn("module_failed", module=name, error=err.strerror)

    def run(self, argv: Sequence[str], *, input: bytes | None = None,
            check: bool = True, timeout: float = TOOL_TIMEOUT,
            extra_env: Mapping[str, str] | None = None) -> command.Done:
        """ARGV with the stacks' environment; a failure carries what the kernel logged
        while it ran (a tool's "Invalid argument" is often explained only there)."""
        env = {"PATH": layout.TOOL_PATH, **(extra_env or {})}
        if not self.udev_running:
            env["DM_DISABLE_UDEV"] = "1"  # libdevmapper makes the /dev/mapper nodes itself
        watch = kernlog.Watch()
        try:
            done = command.run(argv, timeout, input=input, env=env, check=False)
        except command.CommandError as err:
            raise command.CommandError(f"{err}{kernlog.quoted(watch.lines())}") from err
        if done.status == 0:
            watch.close()
            return done
        done = done._replace(kernel=watch.lines())
        if check:
            raise command.failed(argv, done)
        return done


class Handler(Protocol):
    """The boot half of a stack."""

    types: tuple[str, ...]  # the ID_FS_TYPE values it takes

    def offer(self, dev: BlockDevice) -> bool:
        """A new or changed device of one of TYPES; True when something was created."""

    def degrade(self) -> bool:
        """Called once at 2/3 of rd.timeout: start what can run incomplete."""

    def ready(self, dev: BlockDevice) -> bool:
        """Whether DEV (matched by root=) can be used now."""

    def picture(self) -> list[str]:
        """What it is still waiting for, for the message when time is up."""


class StackModule(Protocol):
    NEEDS: Needs

    def check_cmdline(self, params: Sequence[str]) -> list[str]: ...

    def handler(self, env: Env) -> Handler: ...


def uncarried_errors(params: Sequence[str], stacks: Sequence[str]) -> list[str]:
    """Storage keys for stacks the image does not carry: they would be ignored, so the boot
    would not do what they ask. Turning a stack off (rd.luks=0, rd.md=0) asks for nothing
    and is no error."""
    errors = []
    for param in params:
        key, sep, value = param.partition("=")
        name = cmdline.storage_stack(key)
        if name is None or name in stacks or (sep and value.lower() in FALSE):
            continue
        errors.append(f"{param}: this image carries no {TITLES[name]} support (rebuild with "
                      f"--storage {name})")
    return errors


def cmdline_errors(options: Options, stacks: Sequence[str]) -> list[str]:
    """Bad values of the storage command-line keys (they decide what boots): those of the
    carried STACKS as each stack checks them, and any key of a stack the image lacks."""
    errors = uncarried_errors(options.params, stacks)
    for name in stacks:
        errors += stack_module(name).check_cmdline(options.params)
    return errors


def handlers(env: Env, stacks: Sequence[str]) -> list[Handler]:
    return [stack_module(name).handler(env) for name in stacks]


def auto(params: Sequence[str]) -> bool:
    """rd.auto (dracut's name): bring up every stack found, named or not."""
    return any(p in ("rd.auto", "rd.auto=1") for p in params)


def values(params: Sequence[str], *keys: str) -> list[str]:
    """Every value given to one of KEYS, in command-line order."""
    found = []
    for param in params:
        key, sep, value = param.partition("=")
        if sep and key in keys:
            found.append(value)
    return found


def flag(params: Sequence[str], *keys: str) -> bool | None:
    """The last boolean given to one of KEYS (rd.luks=0...), None when not given."""
    result = None
    for param in params:
        key, sep, value = param.partition("=")
        if key in keys:
            result = not sep or value.lower() not in FALSE
    return result


def flag_errors(params: Sequence[str], *keys: str) -> list[str]:
    """Values of the boolean KEYS that are neither on nor off (rd.lvm=maybe)."""
    errors = []
    for param in params:
        key, sep, value = param.partition("=")
        if key in keys and sep and value.lower() not in (*TRUE, *FALSE):
            errors.append(f"{param}: expected 0 or 1")
    return errors


def mem_available_kib(meminfo: str = "/proc/meminfo") -> int:
    with open(meminfo, encoding="ascii") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    raise StorageError(f"{meminfo}: expected a MemAvailable line, found none")


def run_dir(*dirs: str) -> None:
    for directory in dirs:
        os.makedirs(directory, mode=0o700, exist_ok=True)

