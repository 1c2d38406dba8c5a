"""Builder configuration: /etc/pyinit/mkinitramfs.toml, then mkinitramfs.d/*.toml in name
order, then each --config FILE; the command line overrides them all (lists add up).

    add_drivers = ["virtio_blk", "virtio_pci"]  # modules (names or aliases) to carry, added
                                           # to the mode's set (a virtio disk needs both)
    omit_drivers = ["floppy"]              # modules never to carry
    hostonly = true                        # the modules this host's root needs (false: the
                                           # generic set); as mode = "host-only" / "generic"
    mode = "listed"                        # host-only, generic, or listed: only add_drivers
    compress = "zstd"                      # zstd, gzip, xz, lz4 or none
    compress_level = 9
    include = [["/bin/busybox", "/bin/busybox"]]
    rescue_shell = "/bin/busybox"          # a shell for the rescue console
    fsck = ["ext4"]                        # carry fsck.TYPE
    udev = "auto"                          # auto, systemd or none
    udev_rules = ["/etc/udev/rules.d/70-mine.rules"]  # extra rules (udevd always runs)
    storage = ["luks", "lvm"]              # storage stacks: luks, lvm, mdraid, btrfs
    luks_keys = ["/etc/keys/root.key"]     # LUKS key files to carry (mode 0400), FILE[:PATH]
    crypttab = "/etc/crypttab"             # where the crypttab entries come from
    cmdline = "rd.timeout=30"              # default kernel options (the real line wins)
    early_microcode = true
    appliance = false                      # an image for a verity/squashfs/erofs root with
                                           # an overlay: no udevd, no fsck, reboot on failure
    python = "/usr/bin/python3.11"

An unknown key or a value of the wrong type is an error naming the file and the line.
"""

from __future__ import annotations

import glob
import os
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from pyinit.builder import compress, hostfile
from pyinit.storage import luks

SYSTEM_FILE = "/etc/pyinit/mkinitramfs.toml"
SYSTEM_DIR = "/etc/pyinit/mkinitramfs.d"


class ConfigError(ValueError):
    """A configuration file cannot be used; the message names the file and the line."""


@dataclass
class Settings:
    add_drivers: list[str] = field(default_factory=list)
    omit_drivers: list[str] = field(default_factory=list)
    mode: str | None = None  # MODES; None: the command line or the default decides
    mode_source: str = ""  # where the mode was set: "FILE:LINE: KEY = VALUE"
    compress: str = "zstd"
    compress_level: int | None = None
    include: list[tuple[str, str]] = field(default_factory=list)
    rescue_shell: str | None = None
    fsck: list[str] = field(default_factory=list)
    udev: str = "auto"
    udev_rules: list[str] = field(default_factory=list)
    storage: list[str] = field(default_factory=list)
    luks_keys: list[str] = field(default_factory=list)
    crypttab: str = luks.CRYPTTAB
    cmdline: str = ""
    early_microcode: bool = True
    appliance: bool = False
    python: str | None = None
    sources: list[str] = field(default_factory=list)


UDEV_MODES = ("auto", "systemd", "none")
# What decides the modules (and storage stacks) an image carries: this host's root's,
# the generic set for unknown hardware, or only the drivers named.
MODES = ("host-only", "generic", "listed")
CHOICES = {"compress": compress.FORMATS, "udev": UDEV_MODES, "mode": MODES}
LISTS = ("add_drivers", "omit_drivers", "fsck", "udev_rules", "storage", "luks_keys")


def _line_of(text: str, key: str) -> int:
    for number, line in enumerate(text.splitlines(), 1):
        if re.match(rf"\s*{re.escape(key)}\s*=", line):
            return number
    return 1


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)


def _check(path: str, text: str, key: str, value: Any) -> Any:
    def fail(expected: str) -> ConfigError:
        return ConfigError(f"{path}:{_line_of(text, key)}: {key}: expected {expected}, "
                           f"found {_type_name(value)} {value!r}")

    if key in LISTS:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise fail("a list of strings")
        return list(value)
    if key == "include":
        if not isinstance(value, list) or not all(
                isinstance(v, list) and len(v) == 2 and all(isinstance(x, str) for x in v)
                for v in value):
            raise fail('a list of ["SOURCE", "DESTINATION"] pairs')
        return [(v[0], v[1]) for v in value]
    if key in ("hostonly", "early_microcode", "appliance"):
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if key == "compress_level":
        if not isinstance(value, int) or isinstance(value, bool):
            raise fail("a whole number")
        return value
    if key in CHOICES:
        if value not in CHOICES[key]:
            raise fail("one of " + ", ".join(CHOICES[key]))
        return value
    if key in ("cmdline", "rescue_shell", "python", "crypttab"):
        if not isinstance(value, str):
            raise fail("a string")
        return value
    raise ConfigError(f"{path}:{_line_of(text, key)}: unknown key {key!r}: expected one of "
                      + ", ".join(sorted(KEYS)))


# The keys a file may set: the settings, with hostonly as dracut's spelling of mode.
KEYS = {k for k in Settings.__dataclass_fields__ if k not in ("sources", "mode_source")} \
    | {"hostonly"}


def apply_file(settings: Settings, path: str) -> None:
    try:
        raw = hostfile.read_regular(path)[1]
    except hostfile.HostFileError as err:
        raise ConfigError(f"{path}: expected a TOML file, found {err.found}") from err
    except OSError as err:
        raise ConfigError(f"{path}: expected a readable TOML file, found: {err.strerror}") \
            from err
    text = raw.decode("utf-8", errors="replace")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from err
    for key, value in data.items():
        checked = _check(path, text, key, value)
        if key in LISTS or key == "include":
            getattr(settings, key).extend(checked)
        elif key in ("hostonly", "mode"):  # two spellings of one setting: the last wins
            settings.mode = checked if key == "mode" else MODES[0] if checked else MODES[1]
            shown = str(value).lower() if key == "hostonly" else repr(value)
            settings.mode_source = f"{path}:{_line_of(text, key)}: {key} = {shown}"
        else:
            setattr(settings, key, checked)
    settings.sources.append(path)


def choose_mode(switch: str | None, settings: Settings, default: tuple[str, str] | None,
                kver: str, running_kernel: bool) -> tuple[str, str]:
    """The image's mode (MODES) and why, for the summary: an explicit switch, then the
    configuration's, then the caller's DEFAULT (--update's), then what was asked for."""
    if switch is not None:
        flag = {"host-only": "--hostonly", "generic": "--no-hostonly"}.get(switch, "--listed")
        return switch, f"asked for ({flag})"
    if settings.mode is not None:
        return settings.mode, f"asked for ({settings.mode_source})"
    if default is not None:
        return default
    if settings.add_drivers:
        return "listed", ("drivers named (--add-drivers or add_drivers) without --hostonly or "
                          "--no-hostonly")
    if running_kernel:
        return "host-only", f"{kver} is the running kernel (--no-hostonly for the generic set)"
    return "generic", f"{kver} is not the running kernel"


def load(extra: list[str], system_file: str = SYSTEM_FILE,
         system_dir: str = SYSTEM_DIR) -> Settings:
    settings = Settings()
    files = [system_file] if os.path.isfile(system_file) else []
    files += sorted(glob.glob(os.path.join(system_dir, "*.toml")))
    for path in [*files, *extra]:
        apply_file(settings, path)
    return settings
