"""Writing the image file: nothing is lost or left half-written.

The data goes to a temporary file beside OUTPUT, named for this process
(``.pyinit-PID-XXXXXXXX.tmp``), is synced, and is then put in place: without --force by a
hard link, which fails if OUTPUT appeared meanwhile (another build), so an image is never
replaced silently; with --force by a rename. The temporary file is removed on every error,
and on SIGTERM, SIGHUP and SIGINT (the command line turns them into exceptions). What a
SIGKILL leaves behind is removed by the next build into that directory once its PID is gone.
A directory that cannot be written (read-only, no permission) is refused before the write; an
error during it (no space left) is one line naming OUTPUT, and the previous image stays.
``--update --boot-test`` stages the image the same way and puts it in place only if it boots.
"""

from __future__ import annotations

import errno
import os
import re
import sys
import tempfile

# The command's name in usage, errors and warnings: pyinit-mkinitramfs (or update-initramfs)
# where the package installed it under that name, else the checkout's mkinitramfs.py.
INSTALLED = "pyinit-mkinitramfs"
_RUN_AS = os.path.basename(sys.argv[0] if sys.argv else "")
PROG = _RUN_AS if _RUN_AS in (INSTALLED, "update-initramfs") else "mkinitramfs.py"

TEMP_PREFIX = ".pyinit-"
TEMP_SUFFIX = ".tmp"
_TEMP = re.compile(re.escape(TEMP_PREFIX) + r"(\d+)-[A-Za-z0-9_]{8}" + re.escape(TEMP_SUFFIX))
# Filesystems without hard links (vfat, as on an EFI system partition): replaced after a
# last check instead.
_NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.EXDEV}


class OutputError(ValueError):
    """The image cannot be written; the message names OUTPUT."""


def replace_file(path: str, payload: bytes) -> None:
    """PAYLOAD at PATH (a cache entry: no --force, no checks) through a temporary file
    beside it, removed on any error or signal; readers see the old file or the new."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_atomically(output: str, data: bytes, force: bool) -> None:
    """Write DATA to OUTPUT through a temporary file beside it, put in place at the end."""
    tmp = stage(output, data, force)
    try:
        put_in_place(tmp, output, force)
    except BaseException:
        discard(tmp)
        raise


def stage(output: str, data: bytes, force: bool) -> str:
    """DATA, synced, in a temporary file beside OUTPUT (named as remove_stale_temps finds
    it); returns its path, for put_in_place or discard. Nothing is left on an error."""
    directory = _checked_directory(output, data, force)
    tmp = ""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", suffix=TEMP_SUFFIX,
                                   dir=directory)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o600)
    except BaseException as err:
        if tmp:
            discard(tmp)
        if isinstance(err, OSError):
            raise _write_error(output, err) from err
        raise
    return tmp


def put_in_place(tmp: str, output: str, force: bool) -> None:
    """The staged TMP as OUTPUT: with FORCE by a rename, else as a new name only."""
    try:
        if force:
            os.replace(tmp, output)
        else:
            _link_new(tmp, output)
    except OSError as err:
        raise _write_error(output, err) from err
    if not force:
        try:
            os.unlink(tmp)  # OUTPUT is in place: a name left over is the next build's to remove
        except OSError:
            pass


def discard(tmp: str) -> None:
    """Remove the staged TMP if it is still there (an error that keeps it leaves it to the
    next build's remove_stale_temps, and does not hide the error being reported)."""
    try:
        os.unlink(tmp)
    except OSError:
        pass


def unwritable(directory: str) -> str | None:
    """Why a new file cannot be made in DIRECTORY (a read-only filesystem, no permission),
    or None. (root's access() ignores permissions, not a read-only mount: statvfs first.)"""
    try:
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return "a read-only filesystem"
    except OSError as err:
        return f"an error: {err.strerror}"
    if not os.access(directory, os.W_OK):
        return "a directory without write permission"
    return None


def _checked_directory(output: str, data: bytes, force: bool) -> str:
    """OUTPUT's directory, once it can take DATA as OUTPUT (stale temporary files gone)."""
    directory = os.path.dirname(os.path.abspath(output)) or "."
    if not os.path.isdir(directory):
        raise OutputError(f"-o {output}: expected an existing directory {directory}, "
                          "found none")
    if os.path.isdir(output):
        raise OutputError(f"-o {output}: expected the image's file name, found a directory")
    if os.path.lexists(output) and not force:
        raise OutputError(f"-o {output}: the file exists; expected --force to replace it")
    problem = unwritable(directory)
    if problem is not None:
        raise OutputError(f"-o {output}: expected a writable {directory}, found {problem}")
    remove_stale_temps(directory)
    free = os.statvfs(directory)
    if free.f_bavail * free.f_frsize < len(data) + (1 << 20):
        raise OutputError(f"-o {output}: {len(data)} bytes needed, "
                          f"{free.f_bavail * free.f_frsize} free in {directory}")
    return directory


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _write_error(output: str, err: OSError) -> OutputError:
    """ERR (ENOSPC, EROFS, EACCES, ...) while making OUTPUT, named by OUTPUT, not by the
    temporary file."""
    kept = "; the previous image is unchanged" if os.path.lexists(output) else ""
    return OutputError(f"-o {output}: expected to write the image, found: "
                       f"{err.strerror or err}{kept}")


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
