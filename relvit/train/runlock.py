"""One process per run directory: a lock beside it, held while the run trains.

A snakemake killed without its jobs leaves their training running; a restarted snakemake (or a
second command by hand) would start another process on the same folder, and the two would
overwrite each other's checkpoints. The lock (`flock`, released by the kernel when its holder
dies, however it dies) refuses the second one, naming the first.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from relvit.train.errors import TrainingError

log = logging.getLogger("relvit")


class RunLockedError(TrainingError):
    """Another process is training the run directory."""


def lock_path(out_dir: Path) -> Path:
    """`.<name>.lock` beside the run directory (which may be moved aside while locked), its
    links resolved: one lock however the folder is reached."""
    out_dir = out_dir.resolve()
    return out_dir.parent / f".{out_dir.name}.lock"


@contextmanager
def run_lock(out_dir: str | Path) -> Iterator[None]:
    """Hold the run directory's lock for the block; RunLockedError if another process holds it.

    In a folder this process may not write (an archived results tree, read-only), the block runs
    unguarded, with a warning: a finished run is restored there, and a run that would train
    fails at its first write, naming the file."""
    out_dir = Path(out_dir)
    path = lock_path(out_dir)
    handle = _open_lock(path, out_dir)
    if handle is None:
        yield
        return
    with handle:
        if not _locked(handle, path, out_dir):
            yield
            return
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _open_lock(path: Path, out_dir: Path) -> IO[str] | None:
    """The lock file, opened; None (warned) in a folder this process may not write; an OSError
    naming the lock and what is in the way otherwise (a file where a folder should be)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "a+", encoding="utf-8")
    except OSError as err:
        if isinstance(err, PermissionError) or err.errno == errno.EROFS:
            log.warning("%s: cannot lock (%s); a second process on %s would not be stopped",
                        path, err.strerror, out_dir)
            return None
        file = next((p for p in (path.parent, *path.parent.parents)
                     if p.exists() and not p.is_dir()), None)
        reason = (f"{file} is a file, not a folder" if file is not None
                  else f"{err.strerror or err}: {err.filename}")
        raise OSError(err.errno, f"cannot take the run lock {path} of {out_dir} ({reason})"
                      ) from err


def _locked(handle: IO[str], path: Path, out_dir: Path) -> bool:
    """Take the lock: True; RunLockedError if another process holds it; False (warned) where
    the file system has no locks (e.g. ENOLCK on a network file system)."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        raise RunLockedError(
            f"{out_dir} is being trained by {holder} (lock {path}): let it finish or stop "
            f"it; one process at a time trains a run directory") from None
    except OSError as err:
        log.warning("%s: cannot lock (%s); a second process on %s would not be stopped",
                    path, err, out_dir)
        return False
