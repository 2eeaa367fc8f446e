"""A full disk (a real, small tmpfs filled up) or a file-size limit (RLIMIT_FSIZE: EFBIG) while a
run writes its checkpoints: the run stops with an error naming the file, the previous checkpoint
stays intact and loadable, no temporary file is left, and once there is room again the same
command finishes with the uninterrupted run's result."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
from faults_helpers import outcome, reference, train_cli, train_epochs, train_here

from relvit.atomic import atomic_write_text, cannot_write
from relvit.train.checkpoint import atomic_save, load_checkpoint

FREE_LEFT = 24 * 1024  # room for config.yaml and history.csv, not for best.pt (~94 kB)


@pytest.fixture
def small_fs(tmp_path) -> Iterator[Path]:
    """A 4 MiB tmpfs (needs root or CAP_SYS_ADMIN; skipped where mounting is not allowed)."""
    mount = tmp_path / "fs"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if made.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def fill(folder: Path, leave: int) -> Path:
    """Fill the file system of `folder` until `leave` bytes are free."""
    stats = os.statvfs(folder)
    filler = folder / "filler"
    filler.write_bytes(b"\0" * max(stats.f_bavail * stats.f_frsize - leave, 0))
    return filler


def _no_temps(run: Path) -> None:
    assert [p.name for p in run.glob(".*.tmp")] == []


def _interrupted_by_the_disk(run: Path) -> None:
    """After the failed write: last.pt is epoch 1's, whole; nothing half-written is left."""
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    assert not (run / "metrics.json").exists()
    _no_temps(run)


def test_full_disk_during_training_keeps_the_last_checkpoint(small_fs, capsys):
    config, expected = reference()
    run = small_fs / "run"
    train_epochs(config, run, 1)
    filler = fill(small_fs, FREE_LEFT)
    assert train_here(config, run) == 1
    error = capsys.readouterr().err
    assert f"cannot write {run}/best.pt (No space left on device)" in error, error
    _interrupted_by_the_disk(run)
    filler.unlink()
    assert train_here(config, run) == 0
    assert outcome(run) == expected


def test_file_size_limit_during_training_keeps_the_last_checkpoint(tmp_path):
    config, expected = reference()
    run = tmp_path / "run"
    train_epochs(config, run, 1)
    result = train_cli(config, run, fault="fsize:50000")  # best.pt is ~94 kB
    assert result.returncode == 1, result.stderr
    assert f"cannot write {run}/best.pt (File too large)" in result.stderr, result.stderr
    _interrupted_by_the_disk(run)
    assert train_here(config, run) == 0
    assert outcome(run) == expected


def test_full_disk_replacing_a_checkpoint_keeps_it_and_its_previous_copy(small_fs):
    """atomic_save over an existing last.pt (keeping last.prev.pt) with no room for the new one."""
    path = small_fs / "last.pt"
    atomic_save({"model": {"w": b"old".hex()}, "epoch": 1}, path)
    atomic_save({"model": {"w": b"new".hex()}, "epoch": 2}, path, keep_previous=True)
    fill(small_fs, 4096)
    big = {"model": {"w": os.urandom(64 * 1024).hex()}, "epoch": 3}
    with pytest.raises(OSError, match=r"cannot write .*last\.pt \(No space left on device\); "
                                      r"the previous last\.pt"):
        atomic_save(big, path, keep_previous=True)
    assert load_checkpoint(path)["epoch"] == 2
    assert load_checkpoint(small_fs / "last.prev.pt")["epoch"] == 1
    _no_temps(small_fs)
    with pytest.raises(OSError, match="metrics.json"):
        atomic_write_text("x" * 64 * 1024, small_fs / "metrics.json")
    assert not (small_fs / "metrics.json").exists()
    _no_temps(small_fs)


def test_a_read_only_file_system_is_named_as_the_write_it_stops(small_fs):
    """The temporary file's creation failed outside the handler: the error named the
    temporary file, not the one being written."""
    target = small_fs / "config.yaml"
    atomic_write_text("old\n", target)
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    with pytest.raises(OSError, match=f"cannot write {target} \\(Read-only file system\\); "
                                      "the previous config.yaml, if any, is left as it was"):
        atomic_write_text("new\n", target)
    assert target.read_text() == "old\n"


def test_a_failed_write_without_an_errno_is_named_without_one():
    """An OSError without an errno (a library's own) had read "[Errno None] cannot write"."""
    err = cannot_write(Path("run") / "metrics.json", OSError("the write stopped"))
    assert err.errno is None
    assert str(err) == ("cannot write run/metrics.json (the write stopped); the previous "
                        "metrics.json, if any, is left as it was")
    err = cannot_write(Path("a.png"), OSError(28, "No space left on device"), kept=False)
    assert (err.errno, str(err)) == (28, "[Errno 28] cannot write a.png (No space left on device)")


def test_a_lock_taken_on_a_full_disk_holds_and_lets_go(small_fs):
    """The holder line cannot be written on a full disk: the lock is held all the same (a
    second run is refused, its holder unnamed), and letting it go raises nothing."""
    from relvit.train.runlock import RunLockedError, run_lock

    run = small_fs / "run"
    fill(small_fs, 0)
    with run_lock(run):
        with pytest.raises(RunLockedError, match="being trained by another process"):
            with run_lock(run):
                pass
    with run_lock(run):  # free again
        pass
