"""dm-verity for the root, in systemd's grammar: the root is /dev/mapper/root, a read-only
device whose every block the kernel checks against a hash tree before it is read.

Grammar (systemd-veritysetup-generator's, kernel-command-line(7)):
- ``roothash=HEX``: the root hash; asks for verity. ``systemd.verity=`` and
  ``rd.systemd.verity=`` (the later wins) turn it off with 0.
- ``systemd.verity_root_data=DEV`` and ``systemd.verity_root_hash=DEV``: the data and hash
  devices (a path, UUID=, PARTUUID=, ...). Without them, as systemd's discoverable
  partitions: the data partition's PARTUUID is the root hash's first 128 bits, the hash
  partition's its last 128.
- ``systemd.verity_root_options=A,B=C``: superblock=, format=, data-block-size=,
  hash-block-size=, data-blocks=, hash-offset=, salt=, uuid=, hash=, ignore-corruption,
  restart-on-corruption, panic-on-corruption, ignore-zero-blocks, check-at-most-once,
  root-hash-signature=PATH|base64:DATA. Without a corruption option a corrupt block reads
  as EIO (the kernel's default).
- ``root=`` may be left out or be /dev/mapper/root; naming another device is an error.
- The same for /usr: ``usrhash=`` and ``systemd.verity_usr_data/hash/options=`` make
  /dev/mapper/usr, which is mounted on /sysroot/usr (``mount.usr=`` may be left out or
  name it).

The device is made with the device-mapper ioctls (pyinit.devmapper), not veritysetup: the
superblock is 512 bytes, the table one line, and libcryptsetup with libcrypto would add
about 5 MB to an image whose budget is 4 MB. Before the table is loaded the init reads the
top block of the hash tree and checks it against roothash=, so a wrong hash or the wrong
hash device stops the boot with a line naming both, and nothing unverified is mounted.
"""

from __future__ import annotations

import binascii
import os
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

# The hashes come from the interpreter's own small modules: hashlib would carry OpenSSL
# (libcrypto, 5 MB) into the image. Python 3.12 joined _sha256 and _sha512 as _sha2.
try:
    from _sha1 import sha1  # type: ignore[import-not-found]

    from _sha2 import sha256, sha512  # type: ignore[import-not-found,unused-ignore]
except ImportError:
    from _sha256 import sha256  # type: ignore[import-not-found,no-redef,unused-ignore]
    from _sha512 import sha512  # type: ignore[import-not-found,no-redef,unused-ignore]

from pyinit import devmapper, kernlog, syscalls
from pyinit.cmdline import FALSE, TRUE
from pyinit.errors import BootError
from pyinit.rootspec import RootSpec, RootSpecError, parse_root

NAME = "root"
DM_UUID_PREFIX = "CRYPT-VERITY-"  # libcryptsetup's, so that tools and the builder know it
MODULES = ("dm_mod", "dm_verity")
MAGIC = b"verity\0\0"
# struct verity_sb (cryptsetup's lib/verity/verity.c): signature, version, hash_type, uuid,
# algorithm, data_block_size, hash_block_size, data_blocks, salt_size, pad, salt, pad.
SUPERBLOCK = struct.Struct("<8sII16s32sIIQH6x256s168x")
# Digest sizes of the hashes the init can check the top block with (the kernel may know
# more; those need superblock=no and are refused here by name).
DIGESTS = {"sha1": 20, "sha256": 32, "sha512": 64}
HASHES = {"sha1": sha1, "sha256": sha256, "sha512": sha512}
CORRUPTION = ("ignore-corruption", "restart-on-corruption", "panic-on-corruption")
FLAGS = ("ignore-zero-blocks", "check-at-most-once")
SIZES = ("data-block-size", "hash-block-size", "data-blocks", "hash-offset", "format")
HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")


class VerityError(BootError, RuntimeError):
    """Verity was asked for in a form the init cannot use, or the devices do not verify."""

    hint = ("check roothash= against the image's (veritysetup dump HASHDEV), and the data "
            "and hash devices (systemd.verity_root_data=, systemd.verity_root_hash=)")


class Settings(NamedTuple):
    """systemd.verity_root_options=, read."""

    superblock: bool = True
    format: int | None = None
    data_block_size: int | None = None
    hash_block_size: int | None = None
    data_blocks: int | None = None
    hash_offset: int = 0
    salt: bytes | None = None
    uuid: str | None = None
    hash: str | None = None
    corruption: str | None = None  # one of CORRUPTION, None for EIO
    flags: tuple[str, ...] = ()  # of FLAGS
    signature: str | None = None  # root-hash-signature=, as written


class Request(NamedTuple):
    root_hash: bytes
    data: RootSpec
    hash_device: RootSpec
    settings: Settings
    name: str = NAME  # the dm name, and what it is mounted as: root or usr


class Geometry(NamedTuple):
    """What the verity target needs beside the devices and the root hash."""

    version: int  # hash type: 1 hashes salt + block, 0 (Chrome OS) block + salt
    algorithm: str
    data_block_size: int
    hash_block_size: int
    data_blocks: int
    salt: bytes
    uuid: str  # "" without one
    hash_start: int  # the tree's first block, in hash blocks


def _integer(option: str, text: str) -> int:
    if not text.isdigit():
        raise VerityError(f"{option}={text}: expected a number")
    return int(text)


def settings(text: str, key: str = "systemd.verity_root_options") -> Settings:
    values: dict[str, object] = {}
    flags: list[str] = []
    for option in (o for o in text.split(",") if o):
        name, sep, value = option.partition("=")
        shown = f"{key}: {option}"
        if name == "superblock" and sep and value.lower() in (*TRUE, *FALSE):
            values["superblock"] = value.lower() in TRUE
        elif name in SIZES and sep:
            values[name.replace("-", "_")] = _integer(name, value)
        elif name == "salt" and sep:
            if value != "-" and not HEX.fullmatch(value):
                raise VerityError(f"{shown}: expected the salt in hex, or -")
            values["salt"] = b"" if value == "-" else bytes.fromhex(value)
        elif name == "uuid" and sep:
            values["uuid"] = value
        elif name == "hash" and sep:
            if value not in DIGESTS:
                raise VerityError(f"{shown}: expected one of {', '.join(DIGESTS)}")
            values["hash"] = value
        elif name in CORRUPTION and not sep:
            if values.get("corruption") not in (None, name):
                raise VerityError(f"{shown}: {values['corruption']} is given too; expected "
                                  "one of " + ", ".join(CORRUPTION))
            values["corruption"] = name
        elif name in FLAGS and not sep:
            flags.append(name)
        elif name == "root-hash-signature" and sep and value:
            values["signature"] = value
        elif name.startswith("fec-"):
            raise VerityError(f"{shown}: forward error correction is not supported by this "
                              "pyinit")
        else:
            raise VerityError(f"{shown}: expected superblock=, format=, data-block-size=, "
                              "hash-block-size=, data-blocks=, hash-offset=, salt=, uuid=, "
                              "hash=, root-hash-signature=, " + ", ".join(CORRUPTION + FLAGS))
    found = Settings(**values, flags=tuple(dict.fromkeys(flags)))  # type: ignore[arg-type]
    if found.format not in (None, 0, 1):
        raise VerityError(f"{key}: format={found.format}: expected 0 or 1")
    return found


def wanted(params: Mapping[str, str | None], words: Sequence[str]) -> bool:
    """Whether the line (its WORDS in order) asks for verity: a roothash= or usrhash=, not
    turned off by the later of systemd.verity= and rd.systemd.verity=."""
    on = True
    for word in words:
        key, sep, value = word.partition("=")
        if key in ("systemd.verity", "rd.systemd.verity"):
            if sep and value.lower() not in (*TRUE, *FALSE):
                raise VerityError(f"{key}={value}: expected 0 or 1")
            on = not sep or value.lower() in TRUE
    return on and ("roothash" in params or "usrhash" in params)


def partuuids(root_hash: bytes) -> tuple[str, str]:
    """systemd's discoverable partitions: (data, hash) PARTUUIDs from the root hash."""
    def uuid(raw: bytes) -> str:
        text = raw.hex()
        return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:32]}"

    return uuid(root_hash[:16]), uuid(root_hash[-16:])


def _device(key: str, value: str | None) -> RootSpec:
    try:
        return parse_root(value or "")
    except RootSpecError as err:
        raise VerityError(f"{key}={value or ''}: {str(err).partition(': ')[2] or err}") \
            from err


# What each verified device is mounted as, and the key that names it otherwise.
MOUNTS = {"root": ("roothash", "root"), "usr": ("usrhash", "mount.usr")}


def mapped(name: str) -> str:
    return f"/dev/mapper/{name}"


def requests(params: Mapping[str, str | None], root: RootSpec | None,
             words: Sequence[str]) -> list[Request]:
    """The verified devices the line asks for (root, then usr): PARAMS its keys (the last
    value of each), ROOT root= as parsed (or None), WORDS the line in order."""
    if not wanted(params, words):
        return []
    found = []
    for name, (hash_key, mount_key) in MOUNTS.items():
        if hash_key not in params:
            continue
        named = root.text if name == "root" and root is not None else \
            params.get(mount_key) if name == "usr" else None
        found.append(_request(params, name, hash_key, mount_key, named))
    return found


def _request(params: Mapping[str, str | None], name: str, hash_key: str, mount_key: str,
             named: str | None) -> Request:
    text = params[hash_key] or ""
    if not HEX.fullmatch(text) or len(text) < 40:
        raise VerityError(f"{hash_key}={text}: expected the {name} hash in hex (64 digits for "
                          "sha256)")
    root_hash = bytes.fromhex(text)
    if named is not None and named != mapped(name):
        raise VerityError(f"{mount_key}={named} with {hash_key}=: the verified {name} is "
                          f"{mapped(name)}; expected {mount_key}={mapped(name)} or no "
                          f"{mount_key}=, and the data device in systemd.verity_{name}_data=")
    prefix = f"systemd.verity_{name}_"
    found = settings(params.get(f"{prefix}options") or "", f"{prefix}options")
    data_key, hash_dev_key = f"{prefix}data", f"{prefix}hash"
    if data_key in params and hash_dev_key in params:
        return Request(root_hash, _device(data_key, params[data_key]),
                       _device(hash_dev_key, params[hash_dev_key]), found, name)
    if len(root_hash) < 32:
        raise VerityError(f"{hash_key}={text}: {len(root_hash) * 8} bits are too few to find "
                          f"the partitions by; expected {data_key}= and {hash_dev_key}=")
    data_uuid, hash_uuid = partuuids(root_hash)
    data = _device(data_key, params[data_key]) if data_key in params else \
        parse_root(f"PARTUUID={data_uuid}")
    hashed = _device(hash_dev_key, params[hash_dev_key]) if hash_dev_key in params else \
        parse_root(f"PARTUUID={hash_uuid}")
    return Request(root_hash, data, hashed, found, name)


def _size(fd: int) -> int:
    return os.lseek(fd, 0, os.SEEK_END)


def superblock(raw: bytes, device: str, offset: int) -> Geometry:
    """The verity superblock at OFFSET of DEVICE (its 512 bytes, RAW)."""
    where = f"{device} at byte {offset}"
    if len(raw) < SUPERBLOCK.size:
        raise VerityError(f"{where}: expected a verity superblock of {SUPERBLOCK.size} bytes, "
                          f"found {len(raw)}")
    magic, version, kind, uuid, algorithm, dbs, hbs, blocks, salt_size, salt = \
        SUPERBLOCK.unpack_from(raw)
    if magic != MAGIC:
        raise VerityError(f"{where}: expected a verity superblock (magic 'verity'), found "
                          f"{magic!r} (a hash device without one needs superblock=no)")
    if version != 1:
        raise VerityError(f"{where}: expected verity superblock version 1, found {version}")
    name = algorithm.split(b"\0", 1)[0].decode("ascii", "replace")
    if salt_size > 256:
        raise VerityError(f"{where}: the superblock's salt is {salt_size} bytes; expected "
                          "at most 256")
    text = uuid.hex()
    return Geometry(kind, name, dbs, hbs, blocks, salt[:salt_size],
                    f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}",
                    -(-(offset + SUPERBLOCK.size) // hbs) if hbs else 0)


def geometry(asked: Settings, fd: int, device: str, data_size: int) -> Geometry:
    """From the superblock (checked against the options that also say it), or, with
    superblock=no, from the options alone."""
    if asked.superblock:
        found = superblock(os.pread(fd, SUPERBLOCK.size, asked.hash_offset), device,
                           asked.hash_offset)
        given = {"format": (asked.format, found.version),
                 "data-block-size": (asked.data_block_size, found.data_block_size),
                 "hash-block-size": (asked.hash_block_size, found.hash_block_size),
                 "data-blocks": (asked.data_blocks, found.data_blocks),
                 "hash": (asked.hash, found.algorithm),
                 "salt": (asked.salt.hex() if asked.salt is not None else None,
                          found.salt.hex())}
        for option, (value, there) in given.items():
            if value is not None and value != there:
                raise VerityError(f"{option}={value or '-'} in the verity options, but "
                                  f"the superblock on {device} says {there or '-'}")
    else:
        dbs = asked.data_block_size or 4096
        hbs = asked.hash_block_size or 4096
        found = Geometry(1 if asked.format is None else asked.format, asked.hash or "sha256",
                         dbs, hbs, asked.data_blocks or data_size // dbs,
                         asked.salt or b"", asked.uuid or "", asked.hash_offset // hbs)
    for option, size in (("data-block-size", found.data_block_size),
                         ("hash-block-size", found.hash_block_size)):
        if size < 512 or size > 1 << 20 or size & (size - 1):
            raise VerityError(f"{device}: {option} {size}: expected a power of two from 512")
    if found.algorithm not in DIGESTS:
        raise VerityError(f"{device}: the hash tree uses {found.algorithm}; this pyinit "
                          f"checks {', '.join(DIGESTS)}")
    if found.data_blocks < 1:
        raise VerityError(f"{device}: expected at least one data block, found none")
    return found


def tree_blocks(shape: Geometry) -> tuple[int, int]:
    """(the top level's first block, the block after the tree), in hash blocks, as the
    kernel's verity_ctr lays the levels out."""
    bits = (shape.hash_block_size // DIGESTS[shape.algorithm]).bit_length() - 1
    levels = 0
    while bits * levels < 64 and (shape.data_blocks - 1) >> (bits * levels):
        levels += 1
    position = shape.hash_start
    for level in range(levels - 1, -1, -1):
        shift = (level + 1) * bits
        position += (shape.data_blocks + (1 << shift) - 1) >> shift
    return shape.hash_start, position


def digest(algorithm: str, data: bytes) -> bytes:
    found: bytes = HASHES[algorithm](data).digest()
    return found


def check(request_: Request, shape: Geometry, data_fd: int, hash_fd: int, data: str,
          hashed: str) -> None:
    """The devices are large enough, and the tree's top block (or, for a one-block image,
    the block itself) hashes to the root hash."""
    if len(request_.root_hash) != DIGESTS[shape.algorithm]:
        raise VerityError(f"roothash= has {len(request_.root_hash) * 2} hex digits; the hash "
                          f"tree on {hashed} uses {shape.algorithm}, expected "
                          f"{DIGESTS[shape.algorithm] * 2}")
    need = shape.data_blocks * shape.data_block_size
    if _size(data_fd) < need:
        raise VerityError(f"{data}: holds {_size(data_fd)} bytes; the hash tree covers "
                          f"{shape.data_blocks} blocks of {shape.data_block_size} ({need} bytes)")
    top, end = tree_blocks(shape)
    if _size(hash_fd) < end * shape.hash_block_size:
        raise VerityError(f"{hashed}: holds {_size(hash_fd)} bytes; the hash tree needs "
                          f"{end * shape.hash_block_size} (it ends at block {end})")
    if shape.data_blocks == 1:
        block = os.pread(data_fd, shape.data_block_size, 0)
    else:
        block = os.pread(hash_fd, shape.hash_block_size, top * shape.hash_block_size)
    salted = shape.salt + block if shape.version else block + shape.salt
    found = digest(shape.algorithm, salted)
    if found != request_.root_hash:
        raise VerityError(f"{hashed}: the hash tree's top block hashes to {found.hex()}, "
                          f"roothash= is {request_.root_hash.hex()}: this hash device does "
                          f"not belong to that root hash (data {data})")


def table(request_: Request, shape: Geometry, data: tuple[int, int], hashed: tuple[int, int],
          key_description: str | None) -> devmapper.Target:
    asked = request_.settings
    extra = [o.replace("-", "_") for o in (asked.corruption, *asked.flags) if o]
    if key_description:
        extra += ["root_hash_sig_key_desc", key_description]
    params = [str(shape.version), f"{data[0]}:{data[1]}", f"{hashed[0]}:{hashed[1]}",
              str(shape.data_block_size), str(shape.hash_block_size), str(shape.data_blocks),
              str(shape.hash_start), shape.algorithm, request_.root_hash.hex(),
              shape.salt.hex() or "-"]
    if extra:
        params += [str(len(extra)), *extra]
    sectors = shape.data_blocks * shape.data_block_size // 512
    return devmapper.Target(0, sectors, "verity", " ".join(params))


def signature(text: str, read: Callable[[str], bytes]) -> bytes:
    if text.startswith("base64:"):
        try:
            return binascii.a2b_base64(text[len("base64:"):], strict_mode=True)
        except binascii.Error as err:
            raise VerityError(f"root-hash-signature={text[:20]}...: expected base64 after "
                              f"base64: ({err})") from err
    try:
        return read(text)
    except OSError as err:
        raise VerityError(f"root-hash-signature={text}: cannot read it in the image: "
                          f"{os.strerror(err.errno or 0)} (carry it with --include)") from err


def _take_down(name: str) -> None:
    """Remove a half-made /dev/mapper/NAME; the first error says what went wrong."""
    try:
        devmapper.remove(name)
    except OSError:
        pass
    try:
        os.unlink(mapped(name))
    except OSError:
        pass


def _read_file(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def open_device(request_: Request, data: str, data_devnum: tuple[int, int], hashed: str,
              hash_devnum: tuple[int, int], emit: Callable[..., None]) -> str:
    """Check the devices, map /dev/mapper/NAME (root or usr) and return its path. The
    modules (MODULES) must be loaded."""
    asked = request_.settings
    with open(data, "rb", buffering=0) as data_file, open(hashed, "rb", buffering=0) as hash_file:
        data_fd, hash_fd = data_file.fileno(), hash_file.fileno()
        shape = geometry(asked, hash_fd, hashed, _size(data_fd))
        check(request_, shape, data_fd, hash_fd, data, hashed)
    key = None
    name = request_.name
    description = f"pyinit:verity:{name}:{request_.root_hash.hex()[:16]}"
    if asked.signature is not None:
        blob = signature(asked.signature, _read_file)
        try:
            key = syscalls.add_key("user", description, blob, syscalls.KEY_SPEC_THREAD_KEYRING)
        except OSError as err:
            raise VerityError(f"root-hash-signature: the kernel refused the signature as a "
                              f"key: {os.strerror(err.errno or 0)}") from err
    uuid = f"{DM_UUID_PREFIX}{shape.uuid.replace('-', '')}-{name}" if shape.uuid else \
        f"{DM_UUID_PREFIX}{name}"
    what = (f"verity {name} (data {data}, hash {hashed}, {MOUNTS[name][0]} "
            f"{request_.root_hash.hex()})")
    watch = kernlog.Watch()
    try:
        devnum = devmapper.create(name, uuid)
    except devmapper.DMError as err:
        watch.close()
        raise VerityError(f"{what}: {err.strerror}") from err
    step = "the kernel refused the table" + (
        " with root-hash-signature= (the kernel checks it against its trusted keys)"
        if key is not None else "")
    try:
        devmapper.load(name, (table(request_, shape, data_devnum, hash_devnum,
                                    description if key is not None else None),), True)
        devmapper.resume(name)
        path = devmapper.node(name, devnum)
        # One verified read now: data that does not match its tree stops the boot here,
        # named, rather than as a filesystem that cannot be probed or mounted.
        step = "its first data block does not match the hash tree"
        with open(path, "rb", buffering=0) as mapped:
            os.pread(mapped.fileno(), shape.data_block_size, 0)
    except OSError as err:
        said = kernlog.quoted(watch.lines())
        _take_down(name)
        raise VerityError(f"{what}: {step}: {os.strerror(err.errno or 0)}{said}") from err
    finally:
        watch.close()
        if key is not None:
            try:
                syscalls.invalidate_key(key)
            except OSError:
                pass  # a thread keyring's key goes with the thread anyway
    emit("verity_opened", name=name, device=path, data=data, hash=hashed, algorithm=shape.algorithm,
         blocks=shape.data_blocks, root_hash=request_.root_hash.hex(),
         corruption=asked.corruption or "eio", signed=key is not None)
    return path
