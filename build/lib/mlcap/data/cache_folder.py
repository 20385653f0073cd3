"""The one error for a cache folder (`paths.cache_dir`: features, demo data) that cannot take a file.

A full disk (numpy's short write even says only "N requested and M written", with no errno) and a read-only
or unwritable folder are the user's to fix: one line naming the file or folder, the cause and what to do.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock


class CacheFolderError(OSError):
    """A cache folder cannot take a new file (disk full, read-only, not writable): an expected error, said in
    one line that names the file and what to do."""


def unwritable(
    where: Path,
    err: OSError,
    what: tuple[str, str],
    kind: type[CacheFolderError] = CacheFolderError,
    needed: int = 0,
) -> CacheFolderError:
    """One line: which file or folder of `what` (its name, and the key that moves only it) could not be
    written, why, and what to do."""
    name, moves = what
    try:
        free: int | None = shutil.disk_usage(where if where.is_dir() else where.parent).free
    except OSError:
        free = None
    if err.errno in (errno.ENOSPC, errno.EDQUOT) or (free is not None and free < needed):
        space = f" ({free / 1e6:.1f} MB free, {needed / 1e6:.1f} MB needed)" if free is not None else ""
        cause, advice = f"the disk is full{space}", "free space there or"
    elif err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        cause, advice = f"the folder is not writable ({err.strerror})", "make it writable or"
    else:
        cause, advice = " ".join(str(err.strerror or err).split()), "fix that or"
    error = kind(
        f"{name}: cannot write {where}: {cause}. Nothing was kept; {advice} put the cache elsewhere with "
        f"paths.cache_dir=<folder> (or MLCAP_CACHE_DIR=<folder>); {moves}"
    )
    error.errno = err.errno  # str(error) stays the one line above
    return error


@contextmanager
def locked(
    lock_path: Path, folder: Path, what: tuple[str, str], kind: type[CacheFolderError] = CacheFolderError
) -> Iterator[None]:
    """Hold the lock beside a cache entry (its folder made first); a folder that cannot take them is the
    one-line error of `unwritable`."""
    lock = FileLock(str(lock_path))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except OSError as err:
        raise unwritable(folder, err, what, kind) from None
    try:
        yield
    finally:
        lock.release()
