"""SIGKILL a training run anywhere, run the same command again: it resumes from the last complete
checkpoint and ends bit-identical to an uninterrupted run (CPU, same seed)."""

from __future__ import annotations

import errno
import io
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import warnings

import pytest
from faults_helpers import (STEPS_PER_EPOCH, outcome, reference, train_cli, train_epochs,
                            train_here, write_config)

from relvit.train.checkpoint import load_checkpoint
from relvit.train.runlock import RunLockedError, lock_path, run_lock


def _killed(result) -> None:
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]


def _temps(run_dir):
    return sorted(p.name for p in run_dir.glob(".*.tmp"))


def test_kill_mid_epoch_then_rerun_matches_an_uninterrupted_run(tmp_path):
    config, expected = reference()
    run = tmp_path / "run"
    # SIGKILL at the 5th step of epoch 2: epoch 1 is in last.pt, epoch 2 is half done
    _killed(train_cli(config, run, fault=f"kill-at-step:{STEPS_PER_EPOCH + 5}"))
    assert not (run / "metrics.json").exists()
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    assert train_here(config, run) == 0
    assert outcome(run) == expected


@pytest.mark.parametrize("fault, code, said, logged", [
    ("int-at-step", 130, "relvit: interrupted;", "stopped by KeyboardInterrupt"),
    ("term-at-step", 143, "relvit: terminated (SIGTERM);",
     "stopped by Terminated: signal SIGTERM")])
def test_ctrl_c_or_sigterm_mid_epoch_says_what_is_kept_and_resumes(tmp_path, fault, code, said,
                                                                   logged):
    """SIGTERM (a SLURM time limit, Snakemake's shutdown) had ended a run without a word, exit
    -15; Ctrl-C said only "interrupted". Both now say what the rerun resumes from, and the run's
    train.log what stopped it."""
    config, expected = reference()
    run = tmp_path / "run"
    result = train_cli(config, run, fault=f"{fault}:{STEPS_PER_EPOCH + 5}")
    assert result.returncode == code, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"{said} {run} keeps its 1 finished epoch (last.pt): the same command resumes after "
        "them")
    assert "Traceback" not in result.stderr and _temps(run) == []
    assert (run / "train.log").read_text().splitlines()[-1].endswith(logged)
    assert train_here(config, run) == 0
    assert outcome(run) == expected


def test_sigterm_to_the_group_with_loader_workers_kept(tmp_path):
    """SLURM's time limit signals every process of the job, the loader workers, kept for the
    whole run, among them: the run had ended with exit 1 and a RuntimeError ("DataLoader worker
    is killed by signal") when it stopped the dead workers, instead of Terminated's exit 143."""
    from fixtures.formats import write_imagefolder

    write_imagefolder(tmp_path / "images")
    config = write_config(tmp_path / "run.yaml", mode="supervised", optim={"epochs": 3,
                                                                           "batch_size": 2},
                          data={"name": "imagefolder", "folder": str(tmp_path / "images"),
                                "image_size": 16, "workers": 2}, model={"patch_size": 4})
    whole, run = tmp_path / "whole", tmp_path / "run"
    assert train_here(config, whole, mode="supervised") == 0
    result = train_cli(config, run, mode="supervised", fault="group-term-at-step:5")
    assert result.returncode == 143, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"relvit: terminated (SIGTERM); {run} keeps its 1 finished epoch (last.pt): the same "
        "command resumes after them")
    assert "Traceback" not in result.stderr
    assert train_here(config, run, mode="supervised") == 0
    assert outcome(run) == outcome(whole)


def test_kill_mid_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="relvit")
    config, expected = reference()
    run = tmp_path / "run"
    # the 2nd last.pt write (after epoch 2) dies half-written
    _killed(train_cli(config, run, fault="kill-in-save:2"))
    assert len(_temps(run)) == 1  # the half-written temporary file, never renamed
    assert load_checkpoint(run / "last.pt")["epoch"] == 1  # intact
    assert train_here(config, run) == 0
    assert "left by an interrupted write" in caplog.text
    assert "resuming" in caplog.text and "after epoch 1" in caplog.text
    assert _temps(run) == []
    assert outcome(run) == expected


@pytest.mark.parametrize("damage", ["truncate", "flip-byte", "garbage"])
def test_damaged_last_checkpoint_is_moved_aside_and_the_previous_one_used(
        tmp_path, caplog, damage):
    """A last.pt damaged after its rename (a copy cut short, a bad disk) is detected, never
    loaded: moved to last.pt.corrupt-<time>, and the run resumes from last.prev.pt."""
    caplog.set_level(logging.INFO, logger="relvit")
    config, expected = reference()
    run = tmp_path / "run"
    train_epochs(config, run, 2)
    last = run / "last.pt"
    assert load_checkpoint(last)["epoch"] == 2
    data = bytearray(last.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 3]
    elif damage == "flip-byte":  # inside a tensor: torch.load alone would not notice
        data[len(data) // 2] ^= 0xFF
    else:
        data = bytearray(b"\0" * len(data))
    last.write_bytes(bytes(data))
    assert train_here(config, run) == 0
    aside = list(run.glob("last.pt.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == bytes(data)  # kept, not deleted
    assert "falling back to last.prev.pt" in caplog.text
    assert "resuming" in caplog.text and "after epoch 1" in caplog.text
    assert outcome(run) == expected


@pytest.mark.parametrize("where", ["open", "tail", "read"])
def test_an_unreadable_checkpoint_is_left_as_it_was_and_the_run_stops(tmp_path, monkeypatch,
                                                                      capsys, where):
    """A last.pt that cannot be opened (permissions) or read (a disk's I/O error) had been taken
    for a damaged one: moved aside, and the run went on from the epoch before, or from scratch
    when last.prev.pt could not be read either."""
    import builtins
    import errno
    import zipfile

    from relvit.train import checkpoint

    config, expected = reference()
    run = tmp_path / "run"
    train_epochs(config, run, 2)
    if where == "open":
        def refuse(file, *args, **kwargs):
            if str(file).startswith(str(run / "last.")):
                raise PermissionError(errno.EACCES, "Permission denied", str(file))
            return builtins.open(file, *args, **kwargs)
        monkeypatch.setattr(checkpoint, "open", refuse, raising=False)
    elif where == "tail":  # the zip's directory at the file's end, which is_zipfile reads
        class FailingTail(io.FileIO):
            def read(self, size=-1):
                if self.tell() > 4:
                    raise OSError(errno.EIO, "Input/output error")
                return super().read(size)

        def open_failing(file, *args, **kwargs):
            if str(file).startswith(str(run / "last.")):
                return FailingTail(file)
            return builtins.open(file, *args, **kwargs)
        monkeypatch.setattr(checkpoint, "open", open_failing, raising=False)
    else:
        def fail(self):
            raise OSError(errno.EIO, "Input/output error")
        monkeypatch.setattr(zipfile.ZipFile, "testzip", fail)
    reason = "Permission denied" if where == "open" else "Input/output error"
    assert train_here(config, run) == 1
    assert capsys.readouterr().err.strip() == (
        f"relvit: error: checkpoint {run / 'last.pt'} cannot be read ({reason}): it is left as "
        "it was; once it is readable, the same command goes on")
    assert sorted(p.name for p in run.glob("last*")) == ["last.prev.pt", "last.pt"]
    monkeypatch.undo()
    assert load_checkpoint(run / "last.pt")["epoch"] == 2
    assert train_here(config, run) == 0
    assert outcome(run) == expected


def test_both_checkpoints_damaged_starts_over(tmp_path, caplog):
    config, expected = reference()
    run = tmp_path / "run"
    train_epochs(config, run, 2)
    for name in ("last.pt", "last.prev.pt"):
        path = run / name
        path.write_bytes(path.read_bytes()[:1000])
    assert train_here(config, run) == 0
    assert "starting the run over" in caplog.text
    assert len(list(run.glob("*.corrupt-*"))) == 2
    assert outcome(run) == expected


@pytest.mark.slow
def test_kills_at_random_times_never_change_the_result(tmp_path):
    """SIGKILL from outside at random moments of a longer run (training, evaluating or writing),
    three times in a row, then let it finish."""
    import random
    import subprocess
    import sys

    from faults_helpers import INJECT, write_config

    config = write_config(tmp_path / "run.yaml", optim={"epochs": 8})
    assert train_here(config, tmp_path / "whole") == 0
    run = tmp_path / "run"
    draw = random.Random(0)
    for _ in range(3):
        started = run.joinpath("last.pt").stat().st_mtime_ns if run.joinpath("last.pt").exists() \
            else None
        proc = subprocess.Popen([sys.executable, str(INJECT), "pretrain", "--config", str(config),
                                 "--out", str(run), "--threads", "1", "--no-progress"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while (not run.joinpath("last.pt").exists()
               or run.joinpath("last.pt").stat().st_mtime_ns == started):  # training again
            assert proc.poll() is None
            time.sleep(0.01)
        time.sleep(draw.uniform(0.0, 0.3))
        proc.kill()
        proc.wait()
        assert not (run / "metrics.json").exists()  # the kill landed before the end
    assert train_here(config, run) == 0
    assert outcome(run) == outcome(tmp_path / "whole")


HOLD_LOCK = """import sys, time
from relvit.train.runlock import run_lock
with run_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(300)
"""


def test_a_second_process_on_a_run_in_training_is_refused(tmp_path):
    """A snakemake killed without its jobs leaves their training running, and a restarted one
    started the same run again: two processes overwrote one folder. The second now stops at
    once, naming the first, and records no failure; once the first dies (SIGKILL: the kernel
    drops its lock), the run trains to the uninterrupted result."""
    config, expected = reference()
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        second = train_cli(config, run, "--record-failure")
        assert second.returncode == 1, second.stderr[-2000:]
        assert f"{run} is being trained by pid {holder.pid} on " in second.stderr
        assert not (run / "metrics.json").exists()
    finally:
        holder.kill()
        holder.wait()
    assert train_here(config, run) == 0
    assert outcome(run) == expected


def test_the_run_lock_names_its_holder(tmp_path):
    """Its holder, not the rest of a longer line an earlier holder left in the lock file."""
    run = tmp_path / "run"
    lock_path(run).write_text("pid 4194304 on a-much-longer-host-name-of-an-earlier-holder\n")
    with run_lock(run):
        with pytest.raises(RunLockedError) as raised:
            with run_lock(run):
                pass
    assert f"by pid {os.getpid()} on {socket.gethostname()} (lock {lock_path(run)})" in str(
        raised.value)
    with run_lock(run):  # released
        pass
    run.mkdir()
    (tmp_path / "alias").symlink_to(run)  # another path to the folder had taken its own lock
    with run_lock(run), pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
        with run_lock(tmp_path / "alias"):
            pass


def test_a_lock_let_go_is_free_even_while_a_process_forked_under_it_lives(tmp_path):
    """A process forked in the block (a loader's worker still shutting down) shares the lock
    file; the holder's end of the block lets the lock go for it too (its kill does not)."""
    run = tmp_path / "run"
    read, write = os.pipe()
    with run_lock(run):
        with warnings.catch_warnings():  # "multi-threaded, fork() may deadlock": the child
            warnings.simplefilter("ignore", DeprecationWarning)  # only reads a pipe and exits
            child = os.fork()
        if child == 0:  # the forked process: waits until told to go
            os.close(write)
            os.read(read, 1)
            os._exit(0)
    os.close(read)
    try:
        with run_lock(run) as waited:  # RunLockedError had the lock still been held
            assert waited is False
    finally:
        os.close(write)
        os.waitpid(child, 0)


@pytest.mark.parametrize("refusal", [PermissionError(13, "Permission denied"),
                                     OSError(errno.EROFS, "Read-only file system")])
def test_a_lock_file_it_may_not_write_still_locks(tmp_path, monkeypatch, refusal):
    """In a folder this process may not write (another user's, an archive, a read-only mount),
    the lock file that is there is locked read-only: a second process is still refused (it had
    run unguarded)."""
    import builtins

    run = tmp_path / "run"
    with run_lock(run):
        pass  # the lock file is there now

    def read_only(file, mode="r", *args, **kwargs):
        if str(file) == str(lock_path(run)) and mode != "r":
            raise type(refusal)(refusal.errno, refusal.strerror, str(file))
        return builtins.open(file, mode, *args, **kwargs)

    monkeypatch.setattr("relvit.locks.open", read_only, raising=False)
    with run_lock(run), pytest.raises(RunLockedError, match=f"{run} is being trained by pid"):
        with run_lock(run):
            pass


@pytest.mark.parametrize("under", ["sub", "a/sub"])
def test_a_file_in_the_run_folders_path_is_named(tmp_path, under):
    """`--out runfile/sub` with runfile a file said only "[Errno 17] File exists: 'runfile'"."""
    (tmp_path / "runfile").write_text("")
    out = tmp_path / "runfile" / under
    with pytest.raises(OSError) as raised:
        with run_lock(out):
            pass
    assert str(raised.value).endswith(
        f"cannot take the lock {lock_path(out)} of {out} ({tmp_path / 'runfile'} is a file, "
        "not a folder)")


def test_a_lock_file_that_cannot_be_made_says_why(tmp_path, monkeypatch):
    """Another error than a file in the way (here a full disk) is named as it is: the folders
    above the lock file are folders."""
    import builtins

    run = tmp_path / "run"

    def full(file, mode="r", *args, **kwargs):
        if str(file) == str(lock_path(run)):
            raise OSError(28, "No space left on device", str(file))
        return builtins.open(file, mode, *args, **kwargs)

    monkeypatch.setattr("relvit.locks.open", full, raising=False)
    with pytest.raises(OSError) as raised:
        with run_lock(run):
            pass
    assert str(raised.value).endswith(f"cannot take the lock {lock_path(run)} of {run} "
                                      f"(No space left on device: {lock_path(run)})")


def test_a_file_system_without_locks_trains_unguarded(tmp_path, monkeypatch, caplog):
    def no_locks(*args):
        raise OSError(37, "No locks available")

    run = tmp_path / "run"
    monkeypatch.setattr("relvit.locks.fcntl.flock", no_locks)
    with caplog.at_level("WARNING", logger="relvit"), run_lock(run):
        pass
    assert (f"{lock_path(run)}: cannot lock ([Errno 37] No locks available); a second process "
            f"on {run} would not be stopped") in caplog.text


def _resume_state(epoch: int) -> dict:
    from relvit.train.checkpoint import RESUME_KEYS

    return {**{key: None for key in RESUME_KEYS}, "model": {}, "epoch": epoch}


def test_a_sound_last_pt_is_resumed_and_an_incomplete_one_falls_back(tmp_path):
    """last.pt before last.prev.pt; a last.pt without the resume keys (a best.pt copied over
    it) is moved aside and the previous state taken, not resumed from to fail later on
    state["optimizer"]."""
    from relvit.train.checkpoint import atomic_save, load_resume_state

    atomic_save(_resume_state(1), tmp_path / "last.pt")
    atomic_save(_resume_state(2), tmp_path / "last.pt", keep_previous=True)
    assert load_resume_state(tmp_path, move_aside=False)["epoch"] == 2
    atomic_save({"model": {}, "epoch": 3}, tmp_path / "last.pt")  # no optimizer, history...
    assert load_resume_state(tmp_path)["epoch"] == 1  # last.prev.pt, after the write of 3
    assert not (tmp_path / "last.pt").exists()
    assert len(list(tmp_path.glob("last.pt.corrupt-*"))) == 1
