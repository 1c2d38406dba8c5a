"""LUKS1 and LUKS2: unlock the encrypted devices the boot needs.

Which devices: those named on the command line in systemd's grammar (``rd.luks.uuid=``,
``rd.luks.name=UUID=NAME``, ``rd.luks.options=[UUID=]OPTS``, ``rd.luks.key=[UUID=]PATH``,
``rd.luks=0``, ``rd.luks.crypttab=0`` and the ``luks.*`` forms), else the image's
/etc/crypttab (a host-only image carries the entries its root and resume devices need, and
those marked ``initramfs`` or ``x-initrd.attach``; any other image every entry that is not
``noauto`` and that it can unlock), else, with ``rd.auto``, every one found.

How: the cryptsetup program, not libcryptsetup through cffi. Both need the same libraries
(libcryptsetup with OpenSSL, argon2 and json-c), but a child process keeps a key
derivation that runs out of memory, or crashes, out of PID 1, and its exit status already
tells a wrong passphrase (2) from the rest. Before a keyslot is tried its argon2 memory is
compared with MemAvailable: an initramfs has no swap, and a keyslot made on a bigger
machine would otherwise end in the OOM killer.

The passphrase is asked on every active console without echo (pyinit.prompt), ``tries=``
times (default 3, 0: no limit), and a passphrase that opened one volume is tried on the
next before asking again.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from pyinit import command
from pyinit.rootspec import RootSpec, RootSpecError, parse_root
from pyinit.storage import (
    Env,
    Needs,
    StorageError,
    auto,
    flag,
    flag_errors,
    mem_available_kib,
    run_dir,
)
from pyinit.storage import values as cmdline_values

if TYPE_CHECKING:
    from pyinit.blockdev import BlockDevice

CRYPTSETUP = "/sbin/cryptsetup"
CRYPTTAB = "/etc/crypttab"
RUN = "/run/cryptsetup"
NEEDS = Needs(
    tools=(CRYPTSETUP,),
    # cryptsetup's pthread_cancel dlopens libgcc_s; no DT_NEEDED names it.
    libraries=("libgcc_s.so.1",),
    modules=("dm_crypt",),
    optional_modules=("aesni_intel", "aes_generic", "xts", "cbc", "essiv", "sha256_generic",
                      "sha512_generic", "algif_skcipher", "algif_hash", "dm_integrity",
                      "crc32c_intel", "crc32c_generic"),
    udev_rules=("55-dm.rules", "60-persistent-storage-dm.rules", "95-dm-notify.rules"),
    python=("pyinit.storage.luks", "pyinit.prompt", "pyinit.shutdown"),
    dirs=(RUN,),
)
WRONG_PASSPHRASE = 2  # cryptsetup's exit status for "no key available with this passphrase"
MEMORY_MARGIN_KIB = 16384  # what cryptsetup itself needs beside the key derivation
KNOWN_OPTIONS = ("luks", "discard", "tries", "header", "keyfile-offset", "keyfile-size",
                 "noauto", "nofail", "initramfs", "x-initrd.attach", "timeout", "readonly",
                 "read-only", "keyfile-timeout", "x-systemd.device-timeout", "_netdev")


class Volume(NamedTuple):
    """One device to unlock: which (SPEC), as what (NAME), with what key and options."""

    spec: RootSpec
    name: str
    key: str | None
    options: dict[str, str]
    named: bool  # on the command line (a noauto crypttab entry counts only then)


# ---- what the device says: the header's keyslots ----

LUKS_MAGIC = b"LUKS\xba\xbe"


class Keyslot(NamedTuple):
    number: int
    kdf: str
    memory_kib: int  # 0 for pbkdf2


def keyslots(header: bytes) -> tuple[int, list[Keyslot]]:
    """(LUKS version, keyslots) from the start of a LUKS device. Raises StorageError for
    anything that is not a readable LUKS1/LUKS2 header."""
    if len(header) < 4096 or header[:6] != LUKS_MAGIC:
        raise StorageError("no LUKS header (expected the magic LUKS\\xba\\xbe at offset 0)")
    version = struct.unpack(">H", header[6:8])[0]
    if version == 1:
        slots = []
        for number in range(8):  # LUKS1: 8 keyslots of 48 bytes from offset 208
            active = struct.unpack(">I", header[208 + 48 * number: 212 + 48 * number])[0]
            if active == 0x00AC71F3:
                slots.append(Keyslot(number, "pbkdf2", 0))
        return 1, slots
    if version != 2:
        raise StorageError(f"LUKS version {version}: expected 1 or 2")
    try:
        found = []
        for number, slot in sorted(luks2_metadata(header)["keyslots"].items(),
                                   key=lambda kv: int(kv[0])):
            kdf = slot.get("kdf", {})
            found.append(Keyslot(int(number), str(kdf.get("type", "?")),
                                 int(kdf.get("memory", 0))))
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise StorageError(f"damaged LUKS2 metadata: {err}") from err
    return 2, found


def luks2_metadata(header: bytes) -> Any:
    """The JSON metadata of a LUKS2 HEADER. Raises StorageError for a bad header size and
    ValueError for JSON that does not parse."""
    size = struct.unpack(">Q", header[8:16])[0]
    if not 4096 < size <= len(header):
        raise StorageError(f"LUKS2 header size {size}: expected more than 4096 bytes")
    return json.loads(header[4096:size].split(b"\0", 1)[0])


INTEGRITY_MODULES = ("dm_integrity",)  # only for a LUKS2 volume with authenticated encryption


def uses_integrity(header: bytes) -> bool:
    """Whether a LUKS2 header (checked by keyslots) has a segment with integrity."""
    if struct.unpack(">H", header[6:8])[0] != 2:
        return False
    try:
        segments = luks2_metadata(header)["segments"]
        return any(isinstance(s, dict) and "integrity" in s for s in segments.values())
    except (StorageError, ValueError, KeyError, TypeError, AttributeError):
        return False


def needs_for(header: bytes) -> Needs:
    """The modules to load for the volume with HEADER: dm_integrity (0.25 s under TCG with
    its dependencies) only when a segment has integrity."""
    skip = () if uses_integrity(header) else INTEGRITY_MODULES
    return Needs(modules=NEEDS.modules,
                 optional_modules=tuple(m for m in NEEDS.optional_modules if m not in skip))


def read_header(node: str) -> bytes:
    """The first 16 KiB, and the whole LUKS2 binary+JSON header when it is larger."""
    with open(node, "rb") as fh:
        data = fh.read(16384)
        if data[:6] == LUKS_MAGIC and struct.unpack(">H", data[6:8])[0] == 2:
            size = struct.unpack(">Q", data[8:16])[0]
            if 16384 < size <= 4 << 20:
                data += fh.read(size - len(data))
    return data


def usable_slots(node: str, slots: list[Keyslot], available_kib: int) -> list[Keyslot]:
    """The keyslots whose key derivation fits in memory; StorageError when none does."""
    fits = [s for s in slots if s.memory_kib + MEMORY_MARGIN_KIB <= available_kib]
    if fits or not slots:
        return fits
    smallest = min(slots, key=lambda s: s.memory_kib)
    raise StorageError(
        f"{node}: LUKS keyslot {smallest.number} needs {smallest.memory_kib} KiB of memory "
        f"for {smallest.kdf}, and {available_kib} KiB are available (no keyslot fits): boot "
        f"with more memory, or add a keyslot made for less (cryptsetup luksAddKey "
        f"--pbkdf-memory {max(available_kib // 2, 32768)} {node})")


# ---- what to unlock: command line and crypttab ----

def _uuid(value: str) -> str:
    value = value.strip()
    if value.upper().startswith("UUID="):
        value = value[5:]
    return value.removeprefix("luks-").lower()


def is_uuid(value: str) -> bool:
    """8-4-4-4-12 hex digits, the form blkid gives a LUKS header's UUID."""
    parts = value.split("-")
    return [len(p) for p in parts] == [8, 4, 4, 4, 12] and \
        all(c in "0123456789abcdef" for c in "".join(parts).lower())


def _split_options(text: str) -> dict[str, str]:
    options = {}
    for item in text.split(","):
        if item.strip():
            key, _, value = item.strip().partition("=")
            options[key] = value
    return options


def _uuid_prefixed(value: str) -> tuple[str | None, str]:
    """[UUID=]REST -> (uuid or None, REST)."""
    head, sep, rest = value.partition("=")
    if sep and len(head) >= 8 and all(c in "0123456789abcdefABCDEF-" for c in head):
        return head.lower(), rest
    return None, value


def from_cmdline(params: Sequence[str]) -> tuple[list[Volume], list[str], dict[str, bool]]:
    """Volumes named on the command line, errors, and the settings (enabled, crypttab)."""
    errors = flag_errors(params, "rd.luks", "luks", "rd.luks.crypttab", "luks.crypttab")
    uuids = []
    for param in params:
        key, sep, value = param.partition("=")
        if not sep or key not in ("rd.luks.uuid", "luks.uuid"):
            continue
        if is_uuid(given := _uuid(value)):
            uuids.append(given)
        else:
            errors.append(f"{param}: expected a UUID (8-4-4-4-12 hex digits, with or without "
                          "the luks- prefix)")
    names: dict[str, str] = {}
    for value in cmdline_values(params, "rd.luks.name", "luks.name"):
        uuid, name = _uuid_prefixed(value)
        if uuid is None or not name or "/" in name:
            errors.append(f"rd.luks.name={value}: expected UUID=NAME")
            continue
        names[uuid] = name
    options: dict[str | None, dict[str, str]] = {}
    for value in cmdline_values(params, "rd.luks.options", "luks.options"):
        uuid, text = _uuid_prefixed(value)
        options.setdefault(uuid, {}).update(_split_options(text))
    keys: dict[str | None, str] = {}
    for value in cmdline_values(params, "rd.luks.key", "luks.key"):
        uuid, text = _uuid_prefixed(value)
        path, sep, device = text.partition(":")
        if not path.startswith("/"):
            errors.append(f"rd.luks.key={value}: expected [UUID=]/PATH")
            continue
        if sep:
            errors.append(f"rd.luks.key={value}: a key on another device ({device}) is not "
                          "supported: put the key in the image (mkinitramfs.py --luks-key "
                          f"{path})")
            continue
        keys[uuid] = path
    for uuid in (k for k in [*names, *options, *keys] if k is not None):
        if uuid not in uuids:
            uuids.append(uuid)
    volumes = []
    for uuid in dict.fromkeys(uuids):
        opts = {**options.get(None, {}), **options.get(uuid, {})}
        volumes.append(Volume(RootSpec("uuid", uuid, text=f"UUID={uuid}"),
                              names.get(uuid, f"luks-{uuid}"), keys.get(uuid, keys.get(None)),
                              opts, True))
    settings = {"enabled": flag(params, "rd.luks", "luks") is not False,
                "crypttab": flag(params, "rd.luks.crypttab", "luks.crypttab") is not False,
                "auto": auto(params)}
    for volume in volumes:
        errors += option_errors(f"rd.luks.options for {volume.name}", volume.options)
    return volumes, errors, settings


def option_errors(where: str, options: dict[str, str]) -> list[str]:
    errors = []
    for key, value in options.items():
        if key not in KNOWN_OPTIONS:
            errors.append(f"{where}: {key}: expected one of {', '.join(KNOWN_OPTIONS)}")
        elif key in ("tries", "keyfile-offset", "keyfile-size", "timeout") and \
                not value.isdigit():
            errors.append(f"{where}: {key}={value}: expected a whole number")
    return errors


def parse_crypttab(text: str, path: str = CRYPTTAB) -> tuple[list[Volume], list[str]]:
    """crypttab(5) lines: NAME SOURCE [KEY [OPTIONS]]."""
    volumes, errors = [], []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        where = f"{path} line {number}"
        if len(fields) < 2:
            errors.append(f"{where}: expected NAME SOURCE [KEY [OPTIONS]], found {line!r}")
            continue
        name, source = fields[0], fields[1]
        key = fields[2] if len(fields) > 2 and fields[2] not in ("none", "-") else None
        options = _split_options(fields[3]) if len(fields) > 3 else {}
        if "plain" in options or "tcrypt" in options or "bitlk" in options:
            errors.append(f"{where}: {name}: only LUKS volumes are supported")
            continue
        try:
            spec = parse_root(source)
        except RootSpecError as err:
            errors.append(f"{where}: {err}".replace("root=", "source "))
            continue
        errors += option_errors(f"{where}: {name}", options)
        volumes.append(Volume(spec, name, key, options, False))
    return volumes, errors


def merge(named: list[Volume], listed: list[Volume], params: Sequence[str]) -> list[Volume]:
    """As systemd: with volumes named on the command line only those are unlocked, but a
    crypttab entry for the same UUID still gives its name, key and options (the command
    line's win); with none named, the crypttab's entries."""
    if not named:
        return listed
    explicit = {uuid for uuid, _ in (_uuid_prefixed(v) for v in
                                     cmdline_values(params, "rd.luks.name", "luks.name"))}
    merged = []
    for volume in named:
        entry = next((e for e in listed if e.spec.kind == "uuid" and
                      e.spec.value == volume.spec.value), None)
        if entry is None:
            merged.append(volume)
            continue
        merged.append(Volume(volume.spec,
                             volume.name if volume.spec.value in explicit else entry.name,
                             volume.key or entry.key, {**entry.options, **volume.options},
                             True))
    return merged


def check_cmdline(params: Sequence[str]) -> list[str]:
    return from_cmdline(params)[1]


# ---- the boot half ----

class Luks:
    """Unlocks what is wanted, as the devices appear."""

    types = ("crypto_LUKS",)

    def __init__(self, env: Env, crypttab: str = CRYPTTAB) -> None:
        self.env = env
        named, errors, settings = from_cmdline(env.options.params)
        if errors:
            raise StorageError("; ".join(errors))
        self.enabled = bool(settings["enabled"])
        self.auto = bool(settings["auto"])
        listed: list[Volume] = []
        if settings["crypttab"]:
            try:
                with open(crypttab, encoding="utf-8") as fh:
                    listed, errors = parse_crypttab(fh.read(), crypttab)
            except FileNotFoundError:
                pass
            if errors:
                raise StorageError("; ".join(errors))
        self.volumes = merge(named, listed, env.options.params)
        self.locked: dict[str, BlockDevice] = {}  # LUKS devices seen and not unlocked
        self.passphrases: list[str] = []  # those that worked, tried first on the next one

    def wanted(self, dev: BlockDevice) -> Volume | None:
        from pyinit.match import matches

        for volume in self.volumes:
            if matches(volume.spec, dev, containers=True) and \
                    ("noauto" not in volume.options or volume.named):
                return volume
        if self.auto:
            uuid = dev.props.get("ID_FS_UUID", "").lower()
            return Volume(RootSpec("uuid", uuid), f"luks-{uuid}", None, {}, False)
        return None

    def offer(self, dev: BlockDevice) -> bool:
        if not self.enabled or dev.holders():
            return False  # disabled, or unlocked already (a retried stage)
        volume = self.wanted(dev)
        if volume is None:
            self.locked.setdefault(dev.node, dev)
            return False
        self.locked[dev.node] = dev
        self.unlock(dev, volume)
        del self.locked[dev.node]
        return True

    def unlock(self, dev: BlockDevice, volume: Volume) -> None:
        run_dir(RUN)
        try:
            header = read_header(volume.options.get("header") or dev.node)
            version, slots = keyslots(header)
        except OSError as err:
            raise StorageError(f"{dev.node}: cannot read its LUKS header: {err.strerror}") \
                from err
        except StorageError as err:
            raise StorageError(f"{dev.node} ({volume.name}): {err}") from err
        self.env.load_modules(needs_for(header), f"LUKS {dev.node}")
        fits = usable_slots(dev.node, slots, mem_available_kib())
        argv = [CRYPTSETUP, "open", "--type", f"luks{version}", dev.node, volume.name]
        if "discard" in volume.options:
            argv.append("--allow-discards")
        if volume.options.get("header"):
            argv += ["--header", volume.options["header"]]
        if "readonly" in volume.options or "read-only" in volume.options:
            argv.append("--readonly")
        # Keyslots that do not fit are skipped (tried one by one) rather than handed to the
        # key derivation; with every keyslot fitting, cryptsetup tries them all itself.
        slot_args = [[]] if len(fits) == len(slots) else [["--key-slot", str(s.number)]
                                                           for s in fits]
        self.env.before_activation()
        self.env.emit("luks_unlock", device=dev.node, name=volume.name, luks=version,
                      key="file" if volume.key else "passphrase")
        if volume.key:
            self._with_key(dev, volume, argv, slot_args)
        else:
            self._with_passphrase(dev, volume, argv, slot_args)
        self.env.emit("luks_unlocked", device=dev.node, name=volume.name)

    def _open(self, argv: list[str], slot_args: list[list[str]], secret: bytes) -> int:
        """Try each keyslot choice; 0 when one opened, else the last exit status."""
        status = WRONG_PASSPHRASE
        for extra in slot_args:
            done = self.env.run([*argv, *extra], input=secret, check=False)
            if done.status == 0:
                return 0
            status = done.status
            if status != WRONG_PASSPHRASE:
                raise StorageError(f"{command.shown(argv)} {command.describe_status(status)}: "
                                   f"{done.explain()}")
        return status

    def _with_key(self, dev: BlockDevice, volume: Volume, argv: list[str],
                  slot_args: list[list[str]]) -> None:
        key = volume.key or ""
        if not os.path.isfile(key):
            raise StorageError(f"{dev.node} ({volume.name}): key file {key} is not in this "
                               f"image: carry it with mkinitramfs.py --luks-key {key}, or drop "
                               "it to be asked for the passphrase")
        argv = [*argv, "--key-file", key]
        for option, flag_name in (("keyfile-offset", "--keyfile-offset"),
                                  ("keyfile-size", "--keyfile-size")):
            if volume.options.get(option):
                argv += [flag_name, volume.options[option]]
        if self._open(argv, slot_args, b"") != 0:
            raise StorageError(f"{dev.node} ({volume.name}): the key file {key} opens no "
                               "keyslot")

    def _with_passphrase(self, dev: BlockDevice, volume: Volume, argv: list[str],
                         slot_args: list[list[str]]) -> None:
        from pyinit import prompt

        for known in self.passphrases:
            if self._open(argv, slot_args, known.encode() + b"\n") == 0:
                return
        tries = int(volume.options.get("tries", "3") or 3)
        attempt = 0
        label = dev.props.get("ID_FS_UUID", dev.node)
        while tries == 0 or attempt < tries:
            attempt += 1
            try:
                secret = prompt.ask_secret(
                    f"Please enter the passphrase for {dev.node} ({volume.name}, {label})",
                    timeout=float(volume.options.get("timeout", "0") or 0))
            except prompt.PromptError as err:
                raise StorageError(f"{dev.node} ({volume.name}): cannot ask for the "
                                   f"passphrase: {err}") from err
            if self._open(argv, slot_args, secret.encode() + b"\n") == 0:
                self.passphrases.append(secret)
                return
            left = "no limit" if tries == 0 else f"{tries - attempt} left"
            prompt.tell(f"pyinit: wrong passphrase for {dev.node} ({left})")
            self.env.warn("luks_wrong_passphrase", device=dev.node, attempt=attempt)
        raise StorageError(f"{dev.node} ({volume.name}): no keyslot opened with the "
                           f"passphrase, {tries} tries")

    def degrade(self) -> bool:
        return False

    def ready(self, dev: BlockDevice) -> bool:
        return True

    def picture(self) -> list[str]:
        if not self.locked:
            return []
        return ["LUKS devices still locked: " + ", ".join(
            f"{d.node} (UUID={d.props.get('ID_FS_UUID', '?')})" for d in self.locked.values())
            + ("" if self.volumes or self.auto else
               " (none is named: add rd.luks.uuid=, or rd.auto)")]


def handler(env: Env) -> Luks:
    return Luks(env)
