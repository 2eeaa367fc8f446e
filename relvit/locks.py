"""One process at a time on a folder: a lock file beside it (`flock`, released by the kernel when
its holder dies, however it dies), holding the holder's pid and host for the message of the next
process. Training runs refuse a held lock (`relvit.train.runlock`); preparing a dataset or
resizing its images waits for it.

A process forked while the lock is held shares it: it stays held until the fork exits too. A
pool that could outlive a killed holder (`ProcessPoolExecutor`'s workers wait on their queue
forever) starts its workers from a fresh process instead (`relvit.data.resize`).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Callable, Iterator

log = logging.getLogger("relvit")


def lock_beside(folder: Path, purpose: str = "") -> Path:
    """The lock file of `folder`: `.<name>[.<purpose>].lock` beside it, its links resolved (one
    lock however the folder is reached)."""
    folder = folder.resolve()
    return folder.parent / f".{folder.name}{'.' + purpose if purpose else ''}.lock"


@contextmanager
def folder_lock(path: Path, subject: Path, doing: str,
                busy: Callable[[str], Exception] | None = None) -> Iterator[bool]:
    """Hold lock file `path`, which guards folder `subject`, for the block; the block is given
    whether it waited for another process (which may have done its work).

    Held by another process: `busy(holder)` is raised, or without `busy` the block waits for it,
    said once ("waiting for pid N on HOST, which is `doing` ..."). A lock file this process may
    not write (a read-only folder) is locked read-only, its holder unrecorded; where there is
    none, or the file system has no locks, the block runs unguarded, with a warning. A file
    where a folder of `path` should be is an OSError naming both.
    """
    handle = _open(path, subject)
    if handle is None:
        yield False
        return
    with handle:
        waited = _take(handle, path, subject, doing, busy)
        if waited is None:
            yield False
            return
        try:
            _record_holder(handle)
            yield waited
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _unguarded(path: Path, subject: Path, why: object) -> None:
    log.warning("%s: cannot lock (%s); a second process on %s would not be stopped", path, why,
                subject)


def _open(path: Path, subject: Path) -> IO[str] | None:
    """The lock file, opened (read-only where it cannot be written); None (warned) where it
    cannot be made."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "a+", encoding="utf-8")
    except OSError as err:
        if isinstance(err, PermissionError) or err.errno == errno.EROFS:
            try:
                return open(path, encoding="utf-8")  # flock needs no write access
            except OSError:
                _unguarded(path, subject, err.strerror)
                return None
        file = next((p for p in (path.parent, *path.parent.parents)
                     if p.exists() and not p.is_dir()), None)
        reason = (f"{file} is a file, not a folder" if file is not None
                  else f"{err.strerror or err}: {err.filename}")
        raise OSError(err.errno, f"cannot take the lock {path} of {subject} ({reason})") from err


def _take(handle: IO[str], path: Path, subject: Path, doing: str,
          busy: Callable[[str], Exception] | None) -> bool | None:
    """Take the lock: whether it had to wait for another process; None (warned) where the file
    system has no locks (e.g. ENOLCK on a network file system)."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        if busy is not None:
            raise busy(holder) from None
        log.warning("waiting for %s, which is %s %s (lock %s)", holder, doing, subject, path)
        fcntl.flock(handle, fcntl.LOCK_EX)
        return True
    except OSError as err:
        _unguarded(path, subject, err)
        return None


def _record_holder(handle: IO[str]) -> None:
    """Write this process into the lock file, for the next one's message; a lock file that
    cannot be written (read-only, a full disk) keeps what it held. Written past the handle's
    buffer: a line that a full disk refused had been tried again, and raised, on closing."""
    line = f"pid {os.getpid()} on {socket.gethostname()}\n".encode()
    try:
        os.ftruncate(handle.fileno(), 0)
        os.pwrite(handle.fileno(), line, 0)
    except OSError:  # EINVAL on a read-only handle, ENOSPC
        pass
