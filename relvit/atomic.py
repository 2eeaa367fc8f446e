"""Atomic file writes (standard library only): a file is either its old or its new content.

Bytes go to a temporary file in the target's folder (`.<name>.<random>.tmp`), are fsynced, and
one `os.replace` puts them in place; the folder is fsynced so the rename survives a power cut. A
failed write (full disk, file-size limit, ...) removes its temporary file and leaves the target as
it was; a killed process leaves at most a stale temporary file (`remove_stale_temps`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

log = logging.getLogger("relvit")

TEMP_SUFFIX = ".tmp"
_UMASK = os.umask(0o022)  # read once (os.umask can only be read by setting it) and restored
os.umask(_UMASK)


def previous_path(path: Path) -> Path:
    """Where `atomic_write(..., keep_previous=True)` keeps the replaced file: last.pt -> last.prev.pt."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _keep_previous(path: Path) -> None:
    """Keep the current `path` as previous_path(path), atomically (a hard link, else a copy)."""
    prev = previous_path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(prev), suffix=TEMP_SUFFIX)
    os.close(fd)
    try:
        os.unlink(tmp)
        try:
            os.link(path, tmp)
        except OSError:  # no hard links here (some network / FUSE file systems)
            shutil.copyfile(path, tmp)
        os.replace(tmp, prev)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, write: Callable[[IO[Any]], Any], binary: bool = False,
                 keep_previous: bool = False) -> None:
    """Write `path` through `write(handle)` atomically.

    `keep_previous`: the file being replaced stays as previous_path(path) (a fallback should the
    new one be damaged later). An OSError (ENOSPC, EFBIG, ...) is raised again naming `path`;
    the old `path` and its previous copy are untouched and no temporary file is left. An
    interrupt (Ctrl-C, SIGTERM's `Terminated`) is raised as it is, even one that came while an
    OSError was being handled.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=TEMP_SUFFIX)
    except OSError as err:  # e.g. a read-only folder: named as the write it stops
        raise cannot_write(path, err) from err
    try:
        with os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8") as handle:
            os.fchmod(handle.fileno(), 0o666 & ~_UMASK)  # mkstemp's 0o600 -> the usual mode
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if keep_previous and path.exists():
            _keep_previous(path)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        cause = _os_error(err) if isinstance(err, Exception) else None  # an interrupt stays one
        if cause is None:
            raise
        raise cannot_write(path, cause) from err


def cannot_write(path: Path, cause: OSError, kept: bool = True) -> OSError:
    """The OSError of a failed write of `path` (`kept`: the previous file was left as it was),
    with `cause`'s errno where it has one."""
    message = f"cannot write {path} ({cause.strerror or cause})"
    if kept:
        message += f"; the previous {path.name}, if any, is left as it was"
    return OSError(cause.errno, message) if cause.errno is not None else OSError(message)


def _os_error(err: BaseException | None) -> OSError | None:
    """The OSError behind `err`: itself, or one it was raised from or during (torch.save turns a
    failed write into a RuntimeError raised while handling it)."""
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, OSError):
            return err
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None


def atomic_write_text(text: str, path: str | Path) -> None:
    """Write a text file atomically (UTF-8)."""
    atomic_write(path, lambda handle: handle.write(text))


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete the temporary files a killed atomic write left in `folder`; returns them."""
    stale = sorted(p for p in Path(folder).glob(f".*{TEMP_SUFFIX}") if p.is_file())
    for path in stale:
        log.warning("removing %s, left by an interrupted write", path)
        path.unlink(missing_ok=True)
    return stale
