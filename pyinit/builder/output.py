"""Writing the image file: nothing is lost or left half-written.

The data goes to a temporary file beside OUTPUT, named for this process
(``.pyinit-PID-XXXXXXXX.tmp``), is synced, and is then put in place: without --force by a
hard link, which fails if OUTPUT appeared meanwhile (another build), so an image is never
replaced silently; with --force by a rename. The temporary file is removed on every error,
and on SIGTERM, SIGHUP and SIGINT (the command line turns them into exceptions). What a
SIGKILL leaves behind is removed by the next build into that directory once its PID is gone.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile

TEMP_PREFIX = ".pyinit-"
TEMP_SUFFIX = ".tmp"
_TEMP = re.compile(re.escape(TEMP_PREFIX) + r"(\d+)-[A-Za-z0-9_]{8}" + re.escape(TEMP_SUFFIX))
# Filesystems without hard links (vfat, as on an EFI system partition): replaced after a
# last check instead.
_NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.EXDEV}


class OutputError(ValueError):
    """The image cannot be written; the message names OUTPUT."""


def write_atomically(output: str, data: bytes, force: bool) -> None:
    """Write DATA to OUTPUT through a temporary file beside it, put in place at the end."""
    directory = os.path.dirname(os.path.abspath(output)) or "."
    if not os.path.isdir(directory):
        raise OutputError(f"-o {output}: expected an existing directory {directory}, "
                          "found none")
    if os.path.isdir(output):
        raise OutputError(f"-o {output}: expected the image's file name, found a directory")
    if os.path.lexists(output) and not force:
        raise OutputError(f"-o {output}: the file exists; expected --force to replace it")
    remove_stale_temps(directory)
    free = os.statvfs(directory)
    if free.f_bavail * free.f_frsize < len(data) + (1 << 20):
        raise OutputError(f"-o {output}: {len(data)} bytes needed, "
                          f"{free.f_bavail * free.f_frsize} free in {directory}")
    tmp = ""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", suffix=TEMP_SUFFIX,
                                   dir=directory)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        if force:
            os.replace(tmp, output)
        else:
            _link_new(tmp, output)
            os.unlink(tmp)
    except BaseException:
        if tmp:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        raise


def _link_new(tmp: str, output: str) -> None:
    """OUTPUT as a new name of TMP; refused if OUTPUT exists by now."""
    try:
        os.link(tmp, output)
    except FileExistsError as err:
        raise OutputError(f"-o {output}: the file appeared while the image was written "
                          "(another build?); expected --force to replace it") from err
    except OSError as err:
        if err.errno not in _NO_LINKS:
            raise
        if os.path.lexists(output):
            raise OutputError(f"-o {output}: the file appeared while the image was written "
                              "(another build?); expected --force to replace it") from err
        os.replace(tmp, output)


def remove_stale_temps(directory: str) -> list[str]:
    """Remove the temporary files of builds into DIRECTORY whose process is gone (killed by
    SIGKILL, or the machine went down); returns their names."""
    removed: list[str] = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        match = _TEMP.fullmatch(name)
        if match is None or _alive(int(match.group(1))):
            continue
        try:
            os.unlink(os.path.join(directory, name))
            removed.append(name)
        except OSError:
            pass  # another build removed it first, or it is not ours to remove
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True
