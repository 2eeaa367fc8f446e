"""relvit.data.download against a local HTTP server (127.0.0.1) with switchable misbehaviours."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import logging
import os
import re
import stat
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest
from fixtures.http_server import serving

from relvit.data import download as dl
from relvit.data.download import (ChecksumError, DownloadError, Resource, UnsafeArchiveError,
                                  download, fetch, file_digest, safe_extract, verify_file)

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB: several reads, and progress at every 10 %


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with serving(tmp_path / "www") as srv:
        yield srv


@pytest.fixture(autouse=True)
def sleeps(monkeypatch):
    """Retries back off without sleeping; the list records the delays asked for."""
    asked: list[float] = []
    monkeypatch.setattr(dl, "_sleep", asked.append)
    return asked


@pytest.fixture
def dest(tmp_path) -> Path:
    return tmp_path / "downloads"


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ----------------------------------------------------------------------------- Resource, digests


def test_resource_needs_a_valid_checksum_and_plain_name():
    with pytest.raises(ValueError, match="md5 or a sha256"):
        Resource("http://x/a", "a")
    with pytest.raises(ValueError, match="32 hex"):
        Resource("http://x/a", "a", md5="abc")
    for name in ("../a", ".."):
        with pytest.raises(ValueError, match="plain file name"):
            Resource("http://x/a", name, md5="0" * 32)
    with pytest.raises(ValueError, match="extract=True"):
        Resource("http://x/a.mat", "a.mat", md5="0" * 32, extract=True)
    assert Resource("http://x/a", "a", sha256="AB" * 32).sha256 == "ab" * 32


def test_file_digest_and_verify_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(PAYLOAD)
    md5 = hashlib.md5(PAYLOAD).hexdigest()
    assert file_digest(path, "md5") == md5
    assert file_digest(path, "sha256") == hashlib.sha256(PAYLOAD).hexdigest()
    verify_file(path, Resource("http://x/f", "f.bin", md5=md5))
    wrong = Resource("http://x/f", "f.bin", md5="0" * 32)
    expected = f"f.bin: md5 mismatch: expected {'0' * 32}, actual {md5}"
    with pytest.raises(ChecksumError, match=expected):
        verify_file(path, wrong)


def test_verify_file_checks_every_checksum_not_only_the_strongest(tmp_path):
    """Checking only the sha256 would accept a file whose (also given) md5 is wrong."""
    path = tmp_path / "f.bin"
    path.write_bytes(PAYLOAD)
    sha256 = hashlib.sha256(PAYLOAD).hexdigest()
    verify_file(path, Resource("http://x/f", "f.bin", sha256=sha256))
    both = Resource("http://x/f", "f.bin", sha256=sha256, md5="0" * 32)
    with pytest.raises(ChecksumError, match=f"md5 mismatch: expected {'0' * 32}"):
        verify_file(path, both)


# ----------------------------------------------------------------------------- download


@pytest.mark.parametrize("algorithm", ["md5", "sha256"])
def test_download_happy_path(server, dest, algorithm):
    resource = server.publish("data.bin", PAYLOAD, algorithm=algorithm)
    path = download(resource, dest)
    assert path == dest / "data.bin"
    assert path.read_bytes() == PAYLOAD
    assert _listing(dest) == ["data.bin"]
    assert server.hits("data.bin") == [{"path": "data.bin", "range": None}]


def test_downloaded_bytes_reach_the_disk_before_the_file_takes_its_name(server, dest,
                                                                        monkeypatch):
    """The `.part` is fsynced before its rename, so that a power cut cannot leave a file
    under the verified name whose bytes never reached the disk."""
    resource = server.publish("data.bin", PAYLOAD)
    events: list[str] = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(dl.os, "fsync", lambda fd: (events.append("fsync"), fsync(fd))[1])
    monkeypatch.setattr(dl.os, "replace", lambda a, b: (events.append("replace"),
                                                        replace(a, b))[1])
    download(resource, dest)
    assert "fsync" in events and events.index("fsync") < events.index("replace")


def test_verified_file_is_reused_without_a_request(server, dest):
    resource = server.publish("data.bin", PAYLOAD)
    download(resource, dest)
    mtime = (dest / "data.bin").stat().st_mtime_ns
    assert download(resource, dest) == dest / "data.bin"
    assert len(server.requests) == 1
    assert (dest / "data.bin").stat().st_mtime_ns == mtime


def test_existing_file_that_does_not_verify_is_downloaded_again(server, dest):
    resource = server.publish("data.bin", PAYLOAD)
    dest.mkdir()
    (dest / "data.bin").write_bytes(b"stale")
    assert download(resource, dest).read_bytes() == PAYLOAD
    assert len(server.requests) == 1


def test_offline_mode_uses_a_present_file_and_names_a_missing_one(server, dest):
    resource = server.publish("data.bin", PAYLOAD)
    with pytest.raises(DownloadError) as missing:
        download(resource, dest, offline=True)
    message = str(missing.value)
    assert str(dest / "data.bin") in message and resource.md5 in message and resource.url in message
    assert "missing" in message
    dest.mkdir()
    (dest / "data.bin").write_bytes(b"wrong")
    with pytest.raises(DownloadError, match="does not verify"):
        download(resource, dest, offline=True)
    assert server.requests == []
    (dest / "data.bin").write_bytes(PAYLOAD)
    assert download(resource, dest, offline=True) == dest / "data.bin"
    assert server.requests == []


def test_truncated_download_keeps_part_and_next_call_resumes(server, dest):
    resource = server.publish("data.bin", PAYLOAD)
    cut = 300_000
    server.drop_after, server.drops_left = cut, 1
    with pytest.raises(DownloadError, match=f"truncated: got {cut} of {len(PAYLOAD)} bytes"):
        download(resource, dest, retries=1)
    assert _listing(dest) == ["data.bin.part"]
    assert (dest / "data.bin.part").stat().st_size == cut

    assert download(resource, dest).read_bytes() == PAYLOAD
    assert server.hits("data.bin")[-1]["range"] == f"bytes={cut}-"
    assert _listing(dest) == ["data.bin"]


def test_retries_resume_within_one_call(server, dest, sleeps):
    resource = server.publish("data.bin", PAYLOAD)
    server.drop_after, server.drops_left = 100_000, 2
    assert download(resource, dest, retries=3).read_bytes() == PAYLOAD
    assert [r["range"] for r in server.hits("data.bin")] == [None, "bytes=100000-",
                                                              "bytes=200000-"]
    assert sleeps == [dl.RETRY_BACKOFF_S, 2 * dl.RETRY_BACKOFF_S]


def test_a_stalled_body_times_out_and_is_resumed(server, dest, sleeps, monkeypatch):
    """A connection that stops sending mid-body (a read timeout) is retried from the `.part`."""
    monkeypatch.setattr(dl, "BLOCK_SIZE", 65536)  # a whole first block arrives before the stall
    resource = server.publish("data.bin", PAYLOAD)
    release = threading.Event()

    class StallOnce(server.RequestHandlerClass):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.server.requests:
                return super().do_GET()
            self.server.requests.append({"path": "data.bin", "range": None})
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[:100_000])
            self.wfile.flush()
            release.wait(20)
            self.close_connection = True

    server.RequestHandlerClass = StallOnce
    try:
        assert download(resource, dest, retries=2, timeout=1.0).read_bytes() == PAYLOAD
    finally:
        release.set()
    assert [hit["range"] for hit in server.hits("data.bin")] == [None, "bytes=65536-"]


def test_server_ignoring_range_restarts_from_zero(server, dest, sleeps):
    """A 200 to a Range request is the whole file: written over the `.part` from byte 0 in that
    one request (appended, or taken as a resume, the `.part` would fail its checksum and the
    whole file be fetched again)."""
    resource = server.publish("data.bin", PAYLOAD)
    dest.mkdir()
    (dest / "data.bin.part").write_bytes(b"garbage that must not survive")
    server.ignore_range = True
    assert download(resource, dest).read_bytes() == PAYLOAD
    assert [hit["range"] for hit in server.hits("data.bin")] == ["bytes=29-"]
    assert sleeps == [] and _listing(dest) == ["data.bin"]


def test_resumed_part_of_another_copy_is_fetched_again_from_zero(server, dest):
    """A `.part` left by an older copy of the file resumes into one that cannot verify; the
    same call fetches it once more from byte 0 rather than failing after the whole transfer."""
    resource = server.publish("data.bin", PAYLOAD)
    dest.mkdir()
    (dest / "data.bin.part").write_bytes(b"y" * 500_000)
    assert download(resource, dest).read_bytes() == PAYLOAD
    assert [r["range"] for r in server.hits("data.bin")] == ["bytes=500000-", None]
    assert _listing(dest) == ["data.bin"]


def test_fresh_download_that_does_not_verify_is_not_fetched_twice(server, dest):
    resource = server.publish("data.bin", PAYLOAD)
    server.replacements["data.bin"] = b"z" * len(PAYLOAD)
    with pytest.raises(ChecksumError):
        download(resource, dest)
    assert len(server.hits("data.bin")) == 1


def test_416_with_complete_part_verifies_it(server, dest):
    resource = server.publish("data.bin", PAYLOAD)
    dest.mkdir()
    (dest / "data.bin.part").write_bytes(PAYLOAD)
    assert download(resource, dest).read_bytes() == PAYLOAD
    assert len(server.requests) == 1  # the 416; no body fetched
    assert _listing(dest) == ["data.bin"]


def test_416_with_bad_part_restarts_from_zero(server, dest):
    resource = server.publish("data.bin", PAYLOAD)
    dest.mkdir()
    (dest / "data.bin.part").write_bytes(b"x" * (len(PAYLOAD) + 5))
    assert download(resource, dest).read_bytes() == PAYLOAD
    assert [r["range"] for r in server.hits("data.bin")] == [f"bytes={len(PAYLOAD) + 5}-", None]


def test_body_one_byte_short_is_resumed_not_taken_as_complete(server, dest, sleeps):
    """A body one byte short of Content-Length taken as complete would fail its checksum."""
    resource = server.publish("data.bin", PAYLOAD)
    server.drop_after, server.drops_left = len(PAYLOAD) - 1, 1
    assert download(resource, dest, retries=2).read_bytes() == PAYLOAD
    assert [r["range"] for r in server.hits("data.bin")] == [None, f"bytes={len(PAYLOAD) - 1}-"]
    assert sleeps == [dl.RETRY_BACKOFF_S]
    assert _listing(dest) == ["data.bin"]


def test_206_at_the_wrong_offset_restarts_from_zero(server, dest, sleeps):
    """A 206 starting at byte 5 for a request from byte 10, if appended, would repeat bytes 5-9
    (and fail the checksum); the `.part` must be dropped and the file fetched from byte 0."""
    resource = server.publish("data.bin", PAYLOAD)
    dest.mkdir()
    (dest / "data.bin.part").write_bytes(PAYLOAD[:10])

    class WrongOffset(server.RequestHandlerClass):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.server.requests:  # only the first request misbehaves
                return super().do_GET()
            self.server.requests.append({"path": "data.bin", "range": self.headers.get("Range")})
            body = PAYLOAD[5:]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes 5-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server.RequestHandlerClass = WrongOffset
    assert download(resource, dest, retries=2).read_bytes() == PAYLOAD
    assert [r["range"] for r in server.hits("data.bin")] == ["bytes=10-", None]
    assert sleeps == [dl.RETRY_BACKOFF_S]
    assert _listing(dest) == ["data.bin"]


def test_checksum_mismatch_leaves_nothing(server, dest):
    resource = server.publish("data.bin", PAYLOAD)
    served = b"not what the checksum promised" * 100
    server.replacements["data.bin"] = served
    with pytest.raises(ChecksumError) as error:
        download(resource, dest)
    message = str(error.value)
    assert "data.bin" in message and "md5" in message
    assert resource.md5 in message and hashlib.md5(served).hexdigest() in message
    assert _listing(dest) == []


def test_a_checksum_error_names_the_file_under_its_own_name(server, dest):
    """The message names the file as it is kept here, which the URL may name otherwise."""
    url = server.publish("remote-name.bin", PAYLOAD).url
    with pytest.raises(ChecksumError, match="local-name.bin downloaded from .*remote-name.bin"):
        download(Resource(url, "local-name.bin", md5="0" * 32), dest)


def test_http_404_fails_without_retrying(server, dest, sleeps):
    resource = Resource(f"http://127.0.0.1:{server.server_port}/absent.bin", "absent.bin",
                        md5="0" * 32)
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(resource, dest)
    assert len(server.requests) == 1 and sleeps == []


@pytest.mark.parametrize("code, retried", [(503, True), (522, True), (501, False)])
def test_server_errors_are_retried_but_those_no_retry_changes(server, dest, sleeps, code,
                                                               retried):
    """5xx answers are transient (a busy server, a CDN's 522), but 501 and 505 are not: a 522
    had failed at once (only 500 and 502-504 were retried)."""
    resource = server.publish("data.bin", PAYLOAD)
    server.fail_with.append(code)
    if retried:
        assert download(resource, dest, retries=2).read_bytes() == PAYLOAD
        assert len(server.hits("data.bin")) == 2 and sleeps == [dl.RETRY_BACKOFF_S]
    else:
        with pytest.raises(DownloadError, match=f"HTTP {code}"):
            download(resource, dest, retries=2)
        assert len(server.hits("data.bin")) == 1 and sleeps == []


class _FullDisk:
    """A file that takes `room` bytes, then fails as a full disk does."""

    def __init__(self, file, room: int) -> None:
        self.file, self.room = file, room

    def write(self, data: bytes) -> int:
        if self.file.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.file.write(data)

    def __getattr__(self, name: str):
        return getattr(self.file, name)

    def __enter__(self) -> "_FullDisk":
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()


def test_a_full_disk_during_a_download_names_the_part_and_keeps_it(server, dest, sleeps,
                                                                   monkeypatch):
    """A full disk while writing the `.part` file came out as a bare OSError, naming no file;
    it is not retried, and what was written is resumed by the next call."""
    resource = server.publish("data.bin", PAYLOAD)
    monkeypatch.setattr(dl, "BLOCK_SIZE", 65536)
    monkeypatch.setattr(dl, "open", lambda path, mode: _FullDisk(open(path, mode), 300_000),
                        raising=False)
    with pytest.raises(DownloadError, match=r"cannot write .*data\.bin\.part: .*No space left"
                       r".*262144 bytes written are kept"):
        download(resource, dest)
    assert len(server.hits("data.bin")) == 1 and sleeps == []
    assert _listing(dest) == ["data.bin.part"]
    monkeypatch.delattr(dl, "open")  # room again
    assert download(resource, dest).read_bytes() == PAYLOAD
    assert server.hits("data.bin")[-1]["range"] == "bytes=262144-"


def test_connection_refused_is_retried_then_reported(server, dest, sleeps):
    port = server.server_port
    server.shutdown()
    server.server_close()
    resource = Resource(f"http://127.0.0.1:{port}/x.bin", "x.bin", md5="0" * 32)
    with pytest.raises(DownloadError, match="gave up after 3 attempt"):
        download(resource, dest, retries=3, timeout=5)
    assert len(sleeps) == 2
    assert _listing(dest) == []


def test_progress_is_logged_every_tenth_when_not_a_tty(server, dest, caplog, monkeypatch):
    monkeypatch.setattr(dl, "BLOCK_SIZE", 64 * 1024)
    resource = server.publish("data.bin", PAYLOAD)
    with caplog.at_level(logging.INFO, logger="relvit"):
        download(resource, dest)
    percents = [m for m in caplog.messages if re.search(r"\d+% \(", m)]
    assert len(percents) == 10 and percents[-1].startswith("data.bin: 100%")


def test_progress_bar_on_a_terminal(server, dest, caplog, monkeypatch):
    monkeypatch.setattr(dl, "_stderr_is_tty", lambda: True)
    resource = server.publish("data.bin", PAYLOAD)
    with caplog.at_level(logging.INFO, logger="relvit"):
        assert download(resource, dest).read_bytes() == PAYLOAD
    assert not [m for m in caplog.messages if "%" in m]  # the bar replaces the log lines


# ----------------------------------------------------------------------------- archives


def _tar_bytes(entries: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _zip_bytes(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zipped:
        for name, data in entries.items():
            zipped.writestr(zipfile.ZipInfo(name), data)
    return buffer.getvalue()


ENTRIES = {"set/a.txt": b"alpha\n", "set/sub/b.txt": b"beta\n" * 1000, "top.txt": b"top\n"}


@pytest.mark.parametrize("name,build", [("set.tar.gz", _tar_bytes), ("set.zip", _zip_bytes)])
def test_fetch_extracts_once_and_writes_marker(server, tmp_path, dest, monkeypatch, name, build):
    resource = server.publish(name, build(ENTRIES), algorithm="sha256", extract=True)
    out = tmp_path / "extracted"
    assert fetch(resource, dest, out) == out
    for member, data in ENTRIES.items():
        assert (out / member).read_bytes() == data
    assert (out / f".extracted-{name}").read_text().strip() == resource.sha256
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".extracted.")]  # no temp left

    calls = []
    monkeypatch.setattr(dl, "safe_extract", lambda *a: calls.append(a))
    mtime = (out / "top.txt").stat().st_mtime_ns
    assert fetch(resource, dest, out) == out
    assert calls == [] and len(server.requests) == 1
    assert (out / "top.txt").stat().st_mtime_ns == mtime


def test_fetch_extracts_into_the_download_folder_by_default(server, dest):
    resource = server.publish("set.tgz", _tar_bytes(ENTRIES), extract=True)
    assert fetch(resource, dest) == dest
    assert (dest / "set" / "a.txt").read_bytes() == b"alpha\n"
    assert (dest / "set.tgz").is_file() and (dest / ".extracted-set.tgz").is_file()
    assert not [p for p in dest.parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_fetch_reextracts_when_the_archive_changed(server, tmp_path, dest):
    """A marker trusted without comparing its digest would keep the old archive's extraction
    after a new archive (other content, other digest) is downloaded under the same name."""
    old = server.publish("set.tgz", _tar_bytes({"set/a.txt": b"old a\n", "set/gone.txt": b"x",
                                                "top.txt": b"old top\n"}), extract=True)
    out = tmp_path / "extracted"
    fetch(old, dest, out)
    new = server.publish("set.tgz", _tar_bytes({"set/a.txt": b"new a\n", "set/b.txt": b"b\n"}),
                         extract=True)
    assert new.md5 != old.md5
    assert fetch(new, dest, out) == out
    assert (out / "set" / "a.txt").read_bytes() == b"new a\n"
    # each top-level entry of the archive replaces its namesake; other entries are kept
    assert sorted(p.name for p in (out / "set").iterdir()) == ["a.txt", "b.txt"]
    assert (out / "top.txt").read_bytes() == b"old top\n"
    assert (out / ".extracted-set.tgz").read_text().strip() == new.md5


def test_the_extraction_marker_holds_the_strongest_digest(server, tmp_path, dest):
    """With an md5 and a sha256 given, the marker of what was extracted is the sha256."""
    data = _tar_bytes({"a.txt": b"a"})
    resource = server.publish("set.tgz", data, algorithm="sha256", extract=True)
    both = dataclasses.replace(resource, md5=hashlib.md5(data).hexdigest())
    assert list(both.checksums) == ["sha256", "md5"] and both.digest == resource.sha256
    fetch(both, dest, tmp_path / "out")
    assert (tmp_path / "out" / ".extracted-set.tgz").read_text().strip() == resource.sha256


def test_fetch_without_extract_returns_the_file(server, dest):
    resource = server.publish("labels.mat", b"MATLAB 5.0")
    assert fetch(resource, dest) == dest / "labels.mat"


def test_extract_into_existing_target_replaces_entries_and_keeps_others(tmp_path):
    archive = tmp_path / "set.tar.gz"
    archive.write_bytes(_tar_bytes(ENTRIES))
    target = tmp_path / "out"
    (target / "set").mkdir(parents=True)
    (target / "set" / "old.txt").write_text("old")
    (target / "keep.txt").write_text("keep")
    safe_extract(archive, target)
    assert sorted(p.name for p in (target / "set").iterdir()) == ["a.txt", "sub"]
    assert (target / "keep.txt").read_text() == "keep"
    assert (target / "top.txt").read_bytes() == b"top\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "set.tar.gz"]


def test_extraction_removes_what_a_killed_one_left(tmp_path, caplog):
    """A killed extraction leaves its unpacked copy (a whole archive) beside the target; the
    next one removes it, and names, but keeps, a backup of replaced entries."""
    archive = tmp_path / "set.tar.gz"
    archive.write_bytes(_tar_bytes(ENTRIES))
    target = tmp_path / "out"
    left = [tmp_path / ".out.tmp-k1ll3d", tmp_path / ".out.tmp-again"]
    for folder in left:
        (folder / "set").mkdir(parents=True)
        (folder / "set" / "a.txt").write_text("partial")
    backup = tmp_path / ".out.old-k1ll3d"
    (backup / "set").mkdir(parents=True)
    other = tmp_path / ".other.tmp-x"  # another target's: not ours to touch
    other.mkdir()
    with caplog.at_level("WARNING", logger="relvit"):
        safe_extract(archive, target)
    assert not any(folder.exists() for folder in left)
    assert backup.is_dir() and other.is_dir()
    assert f"{backup}: entries of {target}" in caplog.text
    assert (target / "top.txt").read_bytes() == b"top\n"


def test_leftovers_beside_a_target_named_with_glob_characters_are_removed(tmp_path):
    """A target named `out[1]`: what a killed extraction left beside it is found (its name
    had been read as a glob pattern)."""
    archive = tmp_path / "set.tar.gz"
    archive.write_bytes(_tar_bytes({"a.txt": b"a"}))
    left = tmp_path / ".out[1].tmp-k1ll3d"
    left.mkdir()
    safe_extract(archive, tmp_path / "out[1]")
    assert not left.exists() and (tmp_path / "out[1]" / "a.txt").read_bytes() == b"a"


@pytest.mark.skipif(not hasattr(tarfile, "data_filter"), reason="no tarfile data filter")
def test_an_extracted_folder_is_readable_by_others_and_members_lose_setuid(tmp_path):
    """A dataset folder is shared: made by mkdtemp (0o700), it is opened to 0o755; and
    tarfile's "data" filter drops a member's setuid bit."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("tool")
        info.size, info.mode = 2, 0o4755
        tar.addfile(info, io.BytesIO(b"hi"))
    archive = tmp_path / "set.tar"
    archive.write_bytes(buffer.getvalue())
    safe_extract(archive, tmp_path / "out")
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
    assert not (tmp_path / "out" / "tool").stat().st_mode & stat.S_ISUID


def test_a_dangling_link_in_the_target_is_replaced_by_the_archives_entry(tmp_path):
    """A broken symlink named as an archive's top-level folder is replaced (it had failed
    the extraction)."""
    archive = tmp_path / "set.tar.gz"
    archive.write_bytes(_tar_bytes({"set/a.txt": b"alpha"}))
    target = tmp_path / "out"
    target.mkdir()
    (target / "set").symlink_to(tmp_path / "gone", target_is_directory=True)
    safe_extract(archive, target)
    assert not (target / "set").is_symlink()
    assert (target / "set" / "a.txt").read_bytes() == b"alpha"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "set.tar.gz"]


@pytest.mark.parametrize("failing", ["a", "b"])
def test_a_failed_replacement_puts_back_exactly_what_it_moved(tmp_path, monkeypatch, failing):
    """A move into the backup that fails must not count as moved: undoing it would delete the
    entry it had failed to move, the only copy (entry "a": the first move; "b": the second)."""
    archive = tmp_path / "set.tar.gz"
    archive.write_bytes(_tar_bytes({"a/new.txt": b"new a", "b/new.txt": b"new b"}))
    target = tmp_path / "out"
    for name in ("a", "b"):
        (target / name).mkdir(parents=True)
        (target / name / "precious.txt").write_text(f"old {name}")
    real_replace = os.replace

    def replace(src, dst):
        if Path(src) == target / failing:
            raise OSError(errno.EBUSY, "Device or resource busy", str(src))
        real_replace(src, dst)

    monkeypatch.setattr(dl.os, "replace", replace)
    with pytest.raises(OSError, match="busy"):
        safe_extract(archive, target)
    for name in ("a", "b"):
        assert _listing(target / name) == ["precious.txt"]
    assert _listing(tmp_path) == ["out", "set.tar.gz"]


def test_extracting_into_a_link_works_beside_the_folder_it_names(tmp_path, monkeypatch):
    """A dataset folder linked to another disk: the unpacked copy and the backup go beside the
    real folder (on its disk), so the moves into it never cross file systems."""
    archive = tmp_path / "set.tar.gz"
    archive.write_bytes(_tar_bytes(ENTRIES))
    real = tmp_path / "disk2" / "set"
    (real / "set").mkdir(parents=True)
    (real / "set" / "old.txt").write_text("old")
    link = tmp_path / "data" / "set"
    link.parent.mkdir()
    link.symlink_to(real, target_is_directory=True)
    made = []
    real_mkdtemp = dl.tempfile.mkdtemp

    def mkdtemp(prefix, dir):
        made.append(Path(dir))
        return real_mkdtemp(prefix=prefix, dir=dir)

    monkeypatch.setattr(dl.tempfile, "mkdtemp", mkdtemp)
    safe_extract(archive, link)
    assert made == [real.parent, real.parent]  # the unpacked copy, then the backup
    assert link.is_symlink() and (link / "set" / "a.txt").read_bytes() == b"alpha\n"
    assert _listing(real / "set") == ["a.txt", "sub"]
    assert _listing(tmp_path / "data") == ["set"] and _listing(real.parent) == ["set"]


def test_extracting_again_removes_the_marker_first(server, tmp_path, dest, monkeypatch):
    """An extraction that fails half way must not leave the marker saying it is done."""
    resource = server.publish("set.tgz", _tar_bytes(ENTRIES), extract=True)
    out = tmp_path / "extracted"
    fetch(resource, dest, out)
    assert (out / ".extracted-set.tgz").is_file()

    def fails(archive: Path, target: Path) -> None:
        raise DownloadError("cut short")

    monkeypatch.setattr(dl, "safe_extract", fails)
    with pytest.raises(DownloadError, match="cut short"):
        fetch(resource, dest, out, extract_again=True)
    assert not (out / ".extracted-set.tgz").exists()


def test_symlink_inside_the_target_is_allowed(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("d/a.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
        link = tarfile.TarInfo("d/link")
        link.type, link.linkname = tarfile.SYMTYPE, "a.txt"
        tar.addfile(link)
    archive = tmp_path / "ok.tar"
    archive.write_bytes(buffer.getvalue())
    safe_extract(archive, tmp_path / "out")
    assert (tmp_path / "out" / "d" / "link").read_bytes() == b"hi"


def _hostile_tar(member: tarfile.TarInfo, data: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        ok = tarfile.TarInfo("fine.txt")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"ok"))  # a harmless member first: it must not survive either
        member.size = len(data) if member.isreg() else 0
        tar.addfile(member, io.BytesIO(data) if member.isreg() else None)
    return buffer.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


def _symlinks_tar(links: list[tuple[str, str]], then: tuple[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, target in links:
            tar.addfile(_member(name, tarfile.SYMTYPE, target))
        if then:
            info = tarfile.TarInfo(then[0])
            info.size = len(then[1])
            tar.addfile(info, io.BytesIO(then[1]))
    return buffer.getvalue()


def _hostile_cases(tmp_path: Path) -> dict[str, tuple[str, bytes]]:
    absolute = str(tmp_path / "abs-evil.txt")
    return {
        "dotdot": ("evil.tar.gz", _hostile_tar(_member("../evil.txt"), b"evil")),
        "dotdot-inner": ("evil.tar.gz", _hostile_tar(_member("d/../../evil.txt"), b"evil")),
        "absolute": ("evil.tar.gz", _hostile_tar(_member(absolute), b"evil")),
        "symlink": ("evil.tar.gz", _hostile_tar(_member("passwd", tarfile.SYMTYPE, "/etc/passwd"))),
        "symlink-up": ("evil.tar.gz", _hostile_tar(_member("up", tarfile.SYMTYPE, "d/../../x"))),
        # each link lexically inside, but e -> f -> . makes e/.. the target's parent
        "symlink-chain": ("evil.tar", _symlinks_tar([("f", "."), ("e", "f"), ("b", "e/..")])),
        # a harmless-looking inner link, then a file written through it
        "through-symlink": ("evil.tar", _symlinks_tar([("d", ".")], ("d/x.txt", b"x"))),
        # a file at exactly a symlink member's path would be written through the link
        "at-symlink": ("evil.tar", _symlinks_tar([("a", "b")], ("a", b"x"))),
        "hardlink": ("evil.tar.gz", _hostile_tar(_member("h", tarfile.LNKTYPE, "../outside.txt"))),
        "hardlink-inner": ("evil.tar.gz", _hostile_tar(_member("h", tarfile.LNKTYPE,
                                                               "d/../../outside.txt"))),
        "hardlink-abs": ("evil.tar.gz", _hostile_tar(_member("h", tarfile.LNKTYPE, "/etc/passwd"))),
        "device": ("evil.tar.gz", _hostile_tar(_member("dev", tarfile.CHRTYPE))),
        "fifo": ("evil.tar.gz", _hostile_tar(_member("fifo", tarfile.FIFOTYPE))),
        "zip-dotdot": ("evil.zip", _zip_bytes({"fine.txt": b"ok", "../evil.txt": b"evil"})),
        "zip-absolute": ("evil.zip", _zip_bytes({"fine.txt": b"ok", absolute: b"evil"})),
    }


HOSTILE = ["dotdot", "dotdot-inner", "absolute", "symlink", "symlink-up", "symlink-chain",
           "through-symlink", "at-symlink", "hardlink", "hardlink-inner", "hardlink-abs", "device",
           "fifo", "zip-dotdot", "zip-absolute"]


@pytest.mark.parametrize("data_filter", [True, False], ids=["with-filter", "own-checks-only"])
@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_archive_is_refused_and_leaves_nothing(tmp_path, monkeypatch, case, data_filter):
    if not data_filter:  # our checks must hold without tarfile's "data" filter
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    name, data = _hostile_cases(tmp_path)[case]
    archive = tmp_path / "dl" / name
    archive.parent.mkdir()
    archive.write_bytes(data)
    outer = tmp_path / "work"
    target = outer / "target"
    with pytest.raises(UnsafeArchiveError) as error:
        safe_extract(archive, target)
    assert str(archive) in str(error.value)
    assert not target.exists()
    assert _listing(outer) == []  # no temp folder either
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dl", "work"]
    assert _listing(tmp_path / "dl") == [name]


def test_a_link_into_a_sibling_named_like_the_target_is_refused(tmp_path, monkeypatch):
    """A link resolves inside the extraction folder as a path, not as a string prefix:
    `.out.tmp-K-evil` is a sibling of `.out.tmp-K`. Each link here is lexically inside; only
    the resolved path shows that b leaves (the folder's name is pinned to know the sibling's)."""
    fixed = tmp_path / "work" / ".out.tmp-K"
    real_mkdtemp = dl.tempfile.mkdtemp

    def mkdtemp(prefix: str, dir: str) -> str:
        if prefix.endswith(".tmp-"):
            fixed.mkdir()
            return str(fixed)
        return real_mkdtemp(prefix=prefix, dir=dir)

    monkeypatch.setattr(dl.tempfile, "mkdtemp", mkdtemp)
    monkeypatch.delattr(tarfile, "data_filter", raising=False)  # our own checks, as in HOSTILE
    (tmp_path / "work").mkdir()
    archive = tmp_path / "evil.tar"
    archive.write_bytes(_symlinks_tar([("f", "."), ("e", "f"), ("b", "e/../.out.tmp-K-evil")]))
    with pytest.raises(UnsafeArchiveError, match="resolves outside"):
        safe_extract(archive, tmp_path / "work" / "out")
    assert _listing(tmp_path / "work") == []


def test_hostile_archive_leaves_an_existing_target_untouched(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    archive.write_bytes(_hostile_tar(_member("../evil.txt"), b"evil"))
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("keep")
    with pytest.raises(UnsafeArchiveError, match=re.escape("'../evil.txt'")):
        safe_extract(archive, target)
    assert _listing(target) == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tar.gz", "out"]


@pytest.mark.parametrize("name,build", [("cut.tar.gz", _tar_bytes), ("cut.zip", _zip_bytes)])
def test_truncated_archive_raises_and_creates_no_target(tmp_path, name, build):
    data = build({f"f{i}.bin": os.urandom(20_000) for i in range(4)})
    archive = tmp_path / name
    archive.write_bytes(data[: len(data) // 2])
    target = tmp_path / "out"
    with pytest.raises(DownloadError) as error:
        safe_extract(archive, target)
    assert not isinstance(error.value, UnsafeArchiveError)
    assert str(archive) in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_a_full_disk_is_not_called_a_corrupt_archive(tmp_path, monkeypatch):
    archive = tmp_path / "good.tar.gz"
    archive.write_bytes(_tar_bytes({"a.bin": b"x" * 100}))

    def full_disk(archive: Path, dest: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dl, "_unpack_tar", full_disk)
    with pytest.raises(DownloadError, match="cannot write .* No space left.*archive is kept") \
            as error:
        safe_extract(archive, tmp_path / "out")
    assert "corrupt" not in str(error.value)
    assert archive.is_file() and not (tmp_path / "out").exists()
