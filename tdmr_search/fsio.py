"""One path for writing files: whole or not at all, and one clear line when the disk says no.

Every file tdmr-search writes for a user (exports, reports, stored weights) is written to a
temporary name in the same folder and renamed over the target with :func:`os.replace`, so a full
disk, a read-only file system or a crash leaves either the old file or the new one, never half
of one. Operating-system errors become a :class:`~tdmr_search.errors.DiskError` naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from tdmr_search.errors import DiskError

__all__ = ["DISK_ERRNOS", "is_disk_error", "disk_error", "atomic_path", "write_text", "write_bytes", "write_with"]

#: The errors that are the environment's, not the trial's: no retry of a trial can fix them.
DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG}


def is_disk_error(err: BaseException) -> bool:
    """Whether ``err`` (or an error it was raised from) is a full disk, a read-only file system or a denial."""
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, OSError) and err.errno in DISK_ERRNOS:
            return True
        text = str(err).lower()
        if "database or disk is full" in text or "disk i/o error" in text or "readonly database" in text:
            return True
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
        seen += 1
    return False


def disk_error(err: BaseException, path: str | Path, what: str = "file", hint: str = "") -> DiskError:
    """A one-line :class:`DiskError` for ``err`` while writing ``path`` (the ``what``)."""
    why = None
    chain, seen = err, 0
    while chain is not None and seen < 10 and why is None:  # the root cause, past Optuna's own assertions
        text = str(chain).lower()
        if isinstance(chain, OSError) and chain.errno is not None:
            why = f"{chain.strerror or os.strerror(chain.errno)} ({errno.errorcode.get(chain.errno, chain.errno)})"
        elif "disk is full" in text:
            why = "No space left on device (ENOSPC)"
        elif "readonly database" in text:
            why = "read-only file system or no write permission (EROFS/EACCES)"
        elif "disk i/o error" in text:
            why = "disk I/O error (EIO)"
        chain, seen = chain.__cause__ or chain.__context__, seen + 1
    if why is None:
        why = (str(err).splitlines()[0] if str(err) else type(err).__name__)[:200]
    return DiskError(f"Cannot write the {what} {str(path)!r}: {why}" + (f"; {hint}" if hint else ""))


@contextlib.contextmanager
def atomic_path(path: str | Path, what: str = "file", hint: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on failure it vanishes.

    Raises:
        DiskError: The folder or the file cannot be written.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as err:
        raise disk_error(err, path, what, hint) from None
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise disk_error(err, path, what, hint) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_with(path: str | Path, write: Callable[[IO[bytes]], object], what: str = "file", hint: str = "") -> Path:
    """Write ``path`` whole with ``write(file)`` (a binary file object), or leave it as it was."""
    with atomic_path(path, what, hint) as tmp, open(tmp, "wb") as fh:
        write(fh)
    return Path(path)


def write_bytes(path: str | Path, data: bytes, what: str = "file", hint: str = "") -> Path:
    """Write ``data`` to ``path`` whole, or leave it as it was."""
    return write_with(path, lambda fh: fh.write(data), what, hint)


def write_text(path: str | Path, text: str, what: str = "file", hint: str = "") -> Path:
    """Write ``text`` (UTF-8) to ``path`` whole, or leave it as it was."""
    return write_bytes(path, text.encode("utf-8"), what, hint)
