"""Careful dataset downloads: resumable, retried, checksum-verified, safely extracted.

    fetch(Resource(url, filename, md5=..., extract=True), folder)   # download (or reuse) + unpack

Guarantees:
  * `folder/filename` only ever appears complete and verified: bytes go to `filename.part`,
    which is checked against the expected digest(s) before one `os.replace`.
  * An interrupted download keeps its `.part`; the next call resumes it with `Range: bytes=N-`.
  * `offline=True` never touches the network: the file must already be there and verify.
  * Archives are unpacked into a temporary folder next to the target and moved into place only
    when every member has been checked; a hostile or corrupt archive leaves nothing behind.

Standard library only (tqdm for the progress bar on a terminal); no shell commands.
"""

from __future__ import annotations

import errno
import glob
import gzip
import hashlib
import http.client
import logging
import lzma
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from relvit.atomic import atomic_write_text

log = logging.getLogger("relvit")

BLOCK_SIZE = 1 << 20  # 1 MiB: hashing and network reads
RETRY_BACKOFF_S = 1.0  # sleeps 1 s, 2 s, 4 s, ... between attempts
USER_AGENT = "relvit-repro (urllib)"
_sleep = time.sleep  # tests replace this to keep retries instant

# HTTP errors worth another attempt: a timeout, "too early", rate limiting and the server errors
# but 501 and 505 (not implemented, version not supported), which no retry changes; proxies and
# CDNs use 5xx codes of their own for transient failures (Cloudflare's 520-524, 529)
_RETRYABLE_HTTP = frozenset({408, 425, 429}) | (frozenset(range(500, 600)) - {501, 505})
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tbz", ".tar.xz", ".txz")
_ZIP_SUFFIXES = (".zip",)
_DIGEST_LENGTHS = {"sha256": 64, "md5": 32}  # also the order of preference: strongest first
_FILTER_ERROR = getattr(tarfile, "FilterError", ())  # Python >= 3.10.12 / 3.11.4
# a full disk, a file-size limit, a quota or a read-only disk: the archive may well be fine
_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES})
_CORRUPT_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError,
                   gzip.BadGzipFile, OSError)


class DownloadError(RuntimeError):
    """A file could not be obtained: network/HTTP failure, offline without the file, bad archive."""


class ChecksumError(DownloadError):
    """A file's digest differs from the expected one."""


class UnsafeArchiveError(DownloadError):
    """An archive member would land outside the target, or is a device, fifo or outside link."""


class _TransientError(Exception):
    """A failure worth retrying (network error, 5xx, truncated body); the `.part` file is kept."""


@dataclass(frozen=True)
class Resource:
    """One file to download: where from, its name in the download folder, how to verify it."""

    url: str
    filename: str  # name under the download folder
    md5: str | None = None
    sha256: str | None = None  # at least one of md5/sha256 is required
    extract: bool = False  # tar(.gz/.tgz/.bz2/.xz) or zip to unpack after verifying

    def __post_init__(self) -> None:
        if self.md5 is None and self.sha256 is None:
            raise ValueError(f"{self.filename}: give an md5 or a sha256 checksum")
        for algorithm, length in _DIGEST_LENGTHS.items():
            value = getattr(self, algorithm)
            if value is not None:
                if not re.fullmatch(f"[0-9a-fA-F]{{{length}}}", value):
                    raise ValueError(f"{self.filename}: {algorithm} must be {length} hex digits, "
                                     f"got {value!r}")
                object.__setattr__(self, algorithm, value.lower())
        if self.filename in ("", ".", "..") or re.search(r"[/\\]", self.filename):
            raise ValueError(f"filename must be a plain file name, got {self.filename!r}")
        if self.extract and _archive_kind(self.filename) is None:
            raise ValueError(f"{self.filename}: extract=True needs a name ending in one of "
                             f"{_TAR_SUFFIXES + _ZIP_SUFFIXES}")

    @property
    def checksums(self) -> dict[str, str]:
        """Expected hex digests by algorithm, strongest first."""
        return {alg: digest for alg in _DIGEST_LENGTHS if (digest := getattr(self, alg))}

    @property
    def digest(self) -> str:
        """The strongest expected digest (sha256 if given, else md5)."""
        return next(iter(self.checksums.values()))


# ----------------------------------------------------------------------------- checksums


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of the file at `path` (any hashlib algorithm name), read in 1 MiB blocks."""
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as stream:
        while block := stream.read(BLOCK_SIZE):
            digest.update(block)
    return digest.hexdigest()


def _mismatch(path: Path, resource: Resource) -> tuple[str, str, str] | None:
    """(algorithm, expected, actual) for the first checksum `path` fails, or None if all match."""
    for algorithm, expected in resource.checksums.items():
        actual = file_digest(path, algorithm)
        if actual != expected:
            return algorithm, expected, actual
    return None


def verify_file(path: Path, resource: Resource) -> None:
    """Raise ChecksumError unless `path` matches every checksum `resource` gives."""
    failed = _mismatch(Path(path), resource)
    if failed:
        algorithm, expected, actual = failed
        raise ChecksumError(f"{path}: {algorithm} mismatch: expected {expected}, actual {actual}")


# ----------------------------------------------------------------------------- download


def download(resource: Resource, folder: Path, *, offline: bool = False, retries: int = 3,
             timeout: float = 60.0) -> Path:
    """Return `folder/resource.filename`, downloading it first unless it is there and verifies.

    `retries` is the total number of attempts (at least 1); network errors, HTTP 408/425/429 and
    5xx (but 501 and 505) and truncated bodies are retried with exponential backoff, resuming the
    `.part` file. Other HTTP errors fail at once, and so does a full disk (DownloadError naming
    the `.part` file, which is kept). A resumed download that does not verify is fetched once
    more from byte 0. `offline=True` raises DownloadError instead of downloading.
    """
    final = Path(folder) / resource.filename
    if final.is_file():
        failed = _mismatch(final, resource)
        if failed is None:
            log.debug("%s: present and verified", final)
            return final
        if offline:
            raise DownloadError(_offline_message(final, resource, failed))
        log.warning("%s: %s %s does not match the expected %s; downloading it again",
                    final, failed[0], failed[2], failed[1])
    elif offline:
        raise DownloadError(_offline_message(final, resource, None))
    final.parent.mkdir(parents=True, exist_ok=True)
    part = final.with_name(final.name + ".part")
    resumed = part.is_file() and part.stat().st_size > 0
    _fetch_part(resource, part, attempts=max(1, retries), timeout=timeout)
    try:
        _finalize(part, final, resource)
    except ChecksumError as error:
        if not resumed:
            raise
        # the .part kept may be of another copy of the file: once more, from byte 0
        log.warning("%s; it was resumed from an earlier partial download, downloading it again "
                    "from the start", error)
        _fetch_part(resource, part, attempts=max(1, retries), timeout=timeout)
        _finalize(part, final, resource)
    return final


def _offline_message(final: Path, resource: Resource, failed: tuple[str, str, str] | None) -> str:
    checksums = ", ".join(f"{alg} {digest}" for alg, digest in resource.checksums.items())
    problem = "is missing" if failed is None else \
        f"does not verify ({failed[0]} expected {failed[1]}, actual {failed[2]})"
    return (f"offline mode: {final} {problem}. Download {resource.url} yourself and put it at "
            f"{final} (expected {checksums}).")


def _fetch_part(resource: Resource, part: Path, *, attempts: int, timeout: float) -> None:
    """Bring `part` to the complete remote file, retrying transient failures with backoff."""
    for attempt in range(1, attempts + 1):
        try:
            if not _transfer(resource.url, part, timeout) and _mismatch(part, resource):
                log.warning("%s: server says it is complete but it does not verify; restarting",
                            part)
                part.unlink()
                _transfer(resource.url, part, timeout)
            return
        except _TransientError as error:
            if attempt == attempts:
                kept = f"; {part} kept for resuming" if part.exists() else ""
                raise DownloadError(f"{resource.url}: {error} (gave up after {attempts} "
                                    f"attempt(s){kept})") from error
            delay = RETRY_BACKOFF_S * 2 ** (attempt - 1)
            log.warning("%s: %s; retrying in %.1f s (attempt %d of %d)",
                        resource.url, error, delay, attempt + 1, attempts)
            _sleep(delay)


def _transfer(url: str, part: Path, timeout: float) -> bool:
    """One HTTP GET that resumes (or restarts) `part`.

    Returns False when the server answers 416 to our Range request (the part is already
    complete, or bad); True after a complete body. Raises _TransientError or DownloadError.
    """
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            start, total = _resume_point(response, have, url, part)
            _copy_body(response, part, start, total, label=part.name[: -len(".part")])
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:
            return False
        if error.code in _RETRYABLE_HTTP:
            raise _TransientError(f"HTTP {error.code} {error.reason}") from error
        raise DownloadError(f"{url}: HTTP {error.code} {error.reason}") from error
    except _NETWORK_ERRORS as error:
        raise _TransientError(f"network error: {error}") from error
    return True


def _resume_point(response, have: int, url: str, part: Path) -> tuple[int, int | None]:
    """(offset the body starts at, total file size or None) for a 200 or 206 response."""
    header = response.headers.get("Content-Length", "").strip()
    length = int(header) if header.isdigit() else None
    if response.status == 206:
        content_range = response.headers.get("Content-Range", "")
        match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", content_range.strip())
        if not match or int(match[1]) != have:
            part.unlink(missing_ok=True)
            raise _TransientError(f"unexpected Content-Range {content_range!r} for a request "
                                  f"from byte {have}; restarting from 0")
        total = int(match[3]) if match[3] != "*" else (have + length if length else None)
        log.info("%s: resuming at byte %d", url, have)
        return have, total
    if have:
        log.info("%s: server ignored the Range request; restarting from byte 0", url)
    return 0, length


def _copy_body(response, part: Path, start: int, total: int | None, label: str) -> None:
    """Write the response body to `part` from byte `start`; _TransientError if it ends short."""
    done = start
    progress = _Progress(label, total, done)
    try:
        with open(part, "ab" if start else "wb") as out:
            try:
                while block := response.read(BLOCK_SIZE):
                    out.write(block)
                    done += len(block)
                    progress.update(len(block))
            finally:
                progress.close()
                out.flush()
                os.fsync(out.fileno())
    except OSError as error:
        if error.errno not in _WRITE_ERRNOS:  # the network's (a reset, a timeout): retried
            raise
        kept = f"; the {part.stat().st_size} bytes written are kept there for resuming" \
            if part.is_file() else ""
        raise DownloadError(f"cannot write {part}: {error}{kept}") from error
    if total is not None and done < total:
        raise _TransientError(f"truncated: got {done} of {total} bytes")


def _finalize(part: Path, final: Path, resource: Resource) -> None:
    """Verify `part`, then atomically rename it to `final`; on mismatch delete it."""
    failed = _mismatch(part, resource)
    if failed:
        part.unlink()
        algorithm, expected, actual = failed
        raise ChecksumError(f"{final.name} downloaded from {resource.url}: {algorithm} mismatch: "
                            f"expected {expected}, actual {actual} (download deleted)")
    os.replace(part, final)
    log.info("%s: downloaded and verified", final)


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class _Progress:
    """A tqdm bar on a terminal; otherwise a log line at every 10 % (when the size is known)."""

    def __init__(self, label: str, total: int | None, done: int) -> None:
        self.label, self.total, self.done = label, total, done
        self.bar = None
        if _stderr_is_tty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, desc=label, unit="B", unit_scale=True,
                            unit_divisor=1024, leave=False)
        else:
            size = f"{total} bytes" if total is not None else "unknown size"
            log.info("%s: downloading (%s, from byte %d)", label, size, done)
        self.next_decile = self._decile() + 1

    def _decile(self) -> int:
        return min(10, self.done * 10 // self.total) if self.total else 0

    def update(self, count: int) -> None:
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
        elif self.total and self._decile() >= self.next_decile:
            log.info("%s: %d%% (%d of %d bytes)", self.label, 10 * self._decile(), self.done,
                     self.total)
            self.next_decile = self._decile() + 1

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------- extraction


def _archive_kind(name: str) -> str | None:
    lower = name.lower()
    if lower.endswith(_ZIP_SUFFIXES):
        return "zip"
    if lower.endswith(_TAR_SUFFIXES):
        return "tar"
    return None


def safe_extract(archive: Path, target: Path) -> None:
    """Unpack a tar(.gz/.tgz/.bz2/.xz) or zip `archive` into the folder `target`, safely.

    Everything is unpacked into a fresh `.{target.name}.tmp-XXXX` beside `target` (beside the
    folder it links to, if it is a link) and checked first.
    If `target` does not exist, that folder becomes `target` in one os.replace. If it exists, each
    top-level entry of the archive replaces the same-named entry of `target` (other entries are
    kept); should a move fail, the entries already replaced are put back.
    UnsafeArchiveError for absolute or `..` names, links leaving the target, device/fifo members;
    DownloadError for a truncated or corrupt archive. Either way nothing is left behind; what a
    killed extraction left, the next one removes (`_clear_leftovers`).
    """
    # a target that is a link to another disk: unpack and back up beside the folder it names
    archive, target = Path(archive), Path(target).resolve()
    kind = _archive_kind(archive.name)
    if kind is None:
        raise ValueError(f"{archive}: not a .zip or .tar[.gz/.bz2/.xz] archive")
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{target}: exists and is not a folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    _clear_leftovers(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        _unpack(kind, archive, tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0o700
        _move_into_place(tmp, target)
        log.info("%s: extracted into %s", archive, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a whole-folder os.replace


def _clear_leftovers(target: Path) -> None:
    """Remove the unpacked copies that killed extractions into `target` left beside it (one
    whole archive each; the archive itself is kept, so nothing is lost); warn of their backups
    of replaced entries, which may hold the only copy of an entry and are left to the user.
    Extractions into one target must not run at once."""
    name = glob.escape(target.name)
    for tmp in sorted(target.parent.glob(f".{name}.tmp-*")):
        log.warning("%s: removing what an interrupted extraction left", tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    for backup in sorted(target.parent.glob(f".{name}.old-*")):
        log.warning("%s: entries of %s that an interrupted extraction replaced; delete it once "
                    "%s is complete", backup, target, target)


def _unpack(kind: str, archive: Path, dest: Path) -> None:
    """Unpack into the empty folder `dest`, mapping library errors to our exceptions."""
    try:
        if kind == "zip":
            _unpack_zip(archive, dest)
        else:
            _unpack_tar(archive, dest)
        _check_links_inside(archive, dest)
    except _FILTER_ERROR as error:
        raise UnsafeArchiveError(f"{archive}: refusing member {error.tarinfo.name!r}: {error}") \
            from error
    except _CORRUPT_ERRORS as error:
        if isinstance(error, OSError) and error.errno in _WRITE_ERRNOS:  # the disk, not the file
            raise DownloadError(f"{archive}: cannot write what it holds into {dest.parent}: "
                                f"{error}; the archive is kept") from error
        raise DownloadError(f"{archive}: cannot extract (truncated or corrupt archive?): "
                            f"{error}") from error


def _unpack_tar(archive: Path, dest: Path) -> None:
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        _check_tar_members(archive, members)
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, members=members, filter="data")
        else:  # old Python: our own checks above and below are all there is
            tar.extractall(dest, members=members)


def _unpack_zip(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zipped:
        for info in zipped.infolist():
            _member_parts(archive, info.filename)
        zipped.extractall(dest)


def _member_parts(archive: Path, name: str, *, member: str | None = None) -> tuple[str, ...]:
    """Path components of a member name (or of hard link `member`'s target `name`).

    UnsafeArchiveError if the name is absolute or has a `..` component.
    """
    refusing = f"{archive}: refusing member {name!r}: " if member is None else \
        f"{archive}: refusing member {member!r}: hard link to {name!r}: "
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        raise UnsafeArchiveError(refusing + "absolute path")
    parts = tuple(part for part in re.split(r"[/\\]", name) if part not in ("", "."))
    if ".." in parts:
        raise UnsafeArchiveError(refusing + "'..' in its path")
    return parts


def _check_tar_members(archive: Path, members: list[tarfile.TarInfo]) -> None:
    """Refuse unsafe names, links leaving the root, paths through symlinks, special files."""
    symlinks: set[tuple[str, ...]] = set()
    for member in members:
        parts = _member_parts(archive, member.name)
        _refuse_through_symlink(archive, member.name, parts, symlinks)
        if member.issym():
            _check_symlink_target(archive, member, parts)
            symlinks.add(parts)
        elif member.islnk():
            link = _member_parts(archive, member.linkname, member=member.name)
            _refuse_through_symlink(archive, member.name, link, symlinks)
        elif not (member.isreg() or member.isdir()):
            raise UnsafeArchiveError(f"{archive}: refusing member {member.name!r}: not a regular "
                                     f"file, folder or link (device, fifo or other special file)")


def _refuse_through_symlink(archive: Path, name: str, parts: tuple[str, ...],
                            symlinks: set[tuple[str, ...]]) -> None:
    """A path at or below an earlier symlink member could be written through that link."""
    if any(parts[:depth] in symlinks for depth in range(1, len(parts) + 1)):
        raise UnsafeArchiveError(f"{archive}: refusing member {name!r}: it goes through a "
                                 f"symlink member")


def _check_symlink_target(archive: Path, member: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
    """Resolve the link text against the member's folder, lexically; it must stay inside."""
    if member.linkname.startswith(("/", "\\")) or PureWindowsPath(member.linkname).drive:
        raise UnsafeArchiveError(f"{archive}: refusing member {member.name!r}: symlink to the "
                                 f"absolute path {member.linkname!r}")
    resolved: list[str] = list(parts[:-1])
    for part in PurePosixPath(member.linkname.replace("\\", "/")).parts:
        if part == "..":
            if not resolved:
                raise UnsafeArchiveError(f"{archive}: refusing member {member.name!r}: symlink "
                                         f"to {member.linkname!r} points outside the target")
            resolved.pop()
        elif part != ".":
            resolved.append(part)


def _check_links_inside(archive: Path, root: Path) -> None:
    """After unpacking: every symlink must really resolve inside `root` (catches link chains)."""
    real_root = os.path.realpath(root)
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                real = os.path.realpath(path)
                if os.path.commonpath([real, real_root]) != real_root:
                    member = os.path.relpath(path, root)
                    raise UnsafeArchiveError(f"{archive}: refusing member {member!r}: symlink "
                                             f"resolves outside the target, to {real}")


def _move_into_place(tmp: Path, target: Path) -> None:
    if not target.exists():
        os.replace(tmp, target)
    else:
        _replace_entries(tmp, target)


def _replace_entries(source: Path, target: Path) -> None:
    """Move each entry of `source` into `target`, replacing same-named ones; undo on failure.

    Only what was moved is undone: a new entry is removed once it is in place, and an old one
    put back once it is in the backup. Should putting back fail, the backup folder is kept (and
    named by the next extraction's `_clear_leftovers`)."""
    backup = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    backed_up: list[str] = []
    placed: list[str] = []
    try:
        for entry in sorted(source.iterdir()):
            old = target / entry.name
            if old.exists() or old.is_symlink():
                os.replace(old, backup / entry.name)
                backed_up.append(entry.name)
            os.replace(entry, old)
            placed.append(entry.name)
    except BaseException:
        for name in reversed(placed):
            _remove(target / name)
        for name in reversed(backed_up):
            os.replace(backup / name, target / name)
        backup.rmdir()
        raise
    shutil.rmtree(backup, ignore_errors=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


# ----------------------------------------------------------------------------- fetch


def fetch(resource: Resource, folder: Path, extract_to: Path | None = None, *,
          offline: bool = False, extract_again: bool = False) -> Path:
    """Download (or reuse) `resource` into `folder`; unpack it into `extract_to` if asked to.

    Returns the downloaded file, or the extraction folder (`extract_to`, default `folder`) when
    `resource.extract`. Extraction is skipped when `extract_to/.extracted-<filename>` holds the
    verified digest (sha256 if given, else md5); that marker is written last, so an interrupted
    extraction is redone. `extract_again` (or deleting the marker) forces a fresh extraction.
    """
    path = download(resource, folder, offline=offline)
    if not resource.extract:
        return path
    target = Path(extract_to) if extract_to is not None else Path(folder)
    marker = target / f".extracted-{resource.filename}"
    if not extract_again and marker.is_file() and marker.read_text().strip() == resource.digest:
        log.debug("%s: already extracted into %s", path, target)
        return target
    marker.unlink(missing_ok=True)  # extracted again only once this extraction is whole
    safe_extract(path, target)
    atomic_write_text(resource.digest + "\n", marker)
    return target
