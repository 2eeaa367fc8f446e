"""A finished run stays finished: a rerun (an execution key changed, `--forcerun`, damaged
resume states) restores its record instead of training again or stamping new provenance; the
record survives Snakemake deleting metrics.json and `--replace-changed` moving the directory."""

from __future__ import annotations

import json
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from faults_helpers import one_thread, outcome, reference, train_here, write_config

from relvit.config import load_config
from relvit.train.checkpoint import atomic_save, check_upstream, load_checkpoint
from relvit.train.errors import CheckpointError, TrainingError
from relvit.train.loop import train

RECORD_FILES = ("best.pt", "history.csv", "finished.json")


def _finished_copy(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the session's finished reference run, and its config."""
    config, _ = reference()
    run = tmp_path / "run"
    shutil.copytree(config.parent / "run", run)
    return config, run


def _train(config: Path, run: Path, **kwargs) -> dict:
    with one_thread():
        return train(load_config(config), run, progress=False, **kwargs)


def _bytes(run: Path) -> dict[str, bytes]:
    return {name: (run / name).read_bytes() for name in RECORD_FILES}


def test_a_finished_run_with_damaged_resume_states_is_not_trained_again(tmp_path):
    """Both last.pt and last.prev.pt damaged: the run had started over, overwriting the
    finished best.pt and history.csv (a kill then left a metrics.json of epoch 3 beside a
    best.pt of epoch 1)."""
    config, run = _finished_copy(tmp_path)
    finished, metrics = _bytes(run), json.loads((run / "metrics.json").read_text())
    for name in ("last.pt", "last.prev.pt"):
        (run / name).write_bytes((run / name).read_bytes()[:1000])
    (run / "metrics.json").unlink()  # as Snakemake does before a job
    assert _train(config, run) == metrics
    assert _bytes(run) == finished
    assert json.loads((run / "metrics.json").read_text()) == metrics


def test_a_rerun_keeps_the_provenance_of_the_process_that_trained(tmp_path):
    """Re-finishing had stamped the current process's commit, device and memory on the old
    numbers (a CPU-trained run could be labelled with a GPU)."""
    config, run = _finished_copy(tmp_path)
    record = json.loads((run / "finished.json").read_text())
    record.update(git_sha="0123abc", device="the machine that trained it")
    (run / "finished.json").write_text(json.dumps(record))
    (run / "metrics.json").unlink()
    assert _train(config, run)["git_sha"] == "0123abc"
    assert json.loads((run / "metrics.json").read_text())["device"] == \
        "the machine that trained it"


def test_a_run_replaced_under_the_workflow_keeps_its_record(tmp_path):
    """Snakemake deletes the declared metrics.json before the job; the directory moved aside
    by --replace-changed had lost the finished run's record."""
    config, run = _finished_copy(tmp_path)
    record = (run / "finished.json").read_text()
    (run / "metrics.json").unlink()
    other = write_config(tmp_path / "other.yaml", optim={"epochs": 1})
    _train(other, run, replace_changed=True)
    aside = next(tmp_path.glob("run.replaced-*"))
    assert (aside / "finished.json").read_text() == record
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 1


def test_a_finished_run_of_another_config_is_refused_even_without_resume_states(tmp_path):
    config, run = _finished_copy(tmp_path)
    for name in ("last.pt", "last.prev.pt"):
        (run / name).unlink()
    other = yaml.safe_load(config.read_text())
    other["optim"]["lr"] = 0.5
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    with pytest.raises(TrainingError, match=r"holds a run with another config \(config hash"):
        _train(tmp_path / "other.yaml", run)
    assert (run / "best.pt").read_bytes() == (config.parent / "run" / "best.pt").read_bytes()


def _other_config(tmp_path: Path, config: Path) -> Path:
    other = yaml.safe_load(config.read_text())
    other["optim"]["lr"] = 0.5
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    return tmp_path / "other.yaml"


def test_a_finished_run_in_a_folder_it_cannot_write_is_rerun(tmp_path, monkeypatch, caplog):
    """Its record was written again however unchanged, and the run lock beside it made: a
    finished run in a read-only folder (an archived results tree) failed a rerun with "cannot
    write .../finished.json" or "Permission denied: .../.run.lock"."""
    import errno

    config, run = _finished_copy(tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").unlink()  # as Snakemake deletes a job's outputs before it runs it
    assert _train(config, run) == metrics

    def read_only(text, path):
        raise OSError(errno.EROFS, f"cannot write {path} (Read-only file system)")

    def no_lock_file(file, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(file))

    monkeypatch.setattr("relvit.train.loop.atomic_write_text", read_only)
    monkeypatch.setattr("relvit.train.loop.dump_config", read_only)
    monkeypatch.setattr("relvit.locks.open", no_lock_file, raising=False)
    assert _train(config, run) == metrics
    assert "cannot lock (Permission denied); a second process on" in caplog.text


def test_a_finished_runs_metrics_file_is_its_record_without_finished_json(tmp_path):
    """A run from before finished.json, its last*.pt deleted to save space: it was trained
    again from scratch over its best.pt, and under another config too, without a word."""
    config, run = _finished_copy(tmp_path)
    for name in ("last.pt", "last.prev.pt", "finished.json"):
        (run / name).unlink()
    finished = {name: (run / name).read_bytes() for name in ("best.pt", "history.csv")}
    metrics = json.loads((run / "metrics.json").read_text())
    with pytest.raises(TrainingError, match=r"holds a run with another config \(config hash"):
        _train(_other_config(tmp_path, config), run)
    assert _train(config, run) == metrics  # the same config: finished, nothing trained
    assert {name: (run / name).read_bytes() for name in finished} == finished
    assert json.loads((run / "finished.json").read_text()) == metrics  # the record kept


def test_a_record_hashed_before_hash_excludes_grew_is_still_the_finished_run(tmp_path):
    """A run recorded before data.root left the hash, its last*.pt deleted: its record's hash
    differs from any hash taken now. The config.yaml it wrote says the config is the same: the
    run is restored, with the hash taken now, not moved aside and trained again (the workflow
    passes --replace-changed). Another config is still refused."""
    config, run = _finished_copy(tmp_path)
    for name in ("last.pt", "last.prev.pt"):
        (run / name).unlink()
    metrics = json.loads((run / "metrics.json").read_text())
    old = {**metrics, "config_hash": "0123456789abcdef"}
    for name in ("finished.json", "metrics.json"):
        (run / name).write_text(json.dumps(old))
    best = (run / "best.pt").read_bytes()
    with pytest.raises(TrainingError, match=r"holds a run with another config \(config hash"):
        _train(_other_config(tmp_path, config), run)
    assert _train(config, run) == metrics  # restored, the hash as now
    assert json.loads((run / "finished.json").read_text()) == metrics
    assert (run / "best.pt").read_bytes() == best


def test_a_folder_with_nothing_to_resume_is_not_trained_over_by_another_config(tmp_path):
    """Resume states, finished.json and metrics.json gone: the config.yaml an earlier start
    wrote still says whose folder it is. The same config starts over, saying it replaces the
    folder's best.pt."""
    config, run = _finished_copy(tmp_path)
    for name in ("last.pt", "last.prev.pt", "finished.json", "metrics.json"):
        (run / name).unlink()
    best = (run / "best.pt").read_bytes()
    with pytest.raises(TrainingError, match=r"optim\.lr: .*\(config\.yaml\)"):
        _train(_other_config(tmp_path, config), run)
    assert (run / "best.pt").read_bytes() == best
    _train(_other_config(tmp_path, config), run, replace_changed=True)
    assert (next(tmp_path.glob("run.replaced-*")) / "best.pt").read_bytes() == best


def test_a_restart_over_an_earlier_best_checkpoint_is_logged(tmp_path, caplog):
    config, run = _finished_copy(tmp_path)
    for name in ("last.pt", "last.prev.pt", "finished.json", "metrics.json"):
        (run / name).unlink()
    with caplog.at_level("WARNING", logger="relvit"):
        _train(config, run)
    assert "the run starts over, replacing its best.pt" in caplog.text


def test_a_run_resumed_at_its_end_checks_its_best_weights(tmp_path):
    """Killed after its last epoch's last.pt, before its records: the rerun wrote them over a
    damaged best.pt, and the damage showed only in the finetune that read it. Its best epoch the
    last, best.pt is written again from last.pt; an earlier one's damage stops the run."""
    config, run = _finished_copy(tmp_path)
    whole = load_checkpoint(run / "best.pt")
    for name in ("metrics.json", "finished.json"):
        (run / name).unlink()
    (run / "best.pt").write_bytes((run / "best.pt").read_bytes()[:3000])
    assert whole["epoch"] == _train(config, run)["best_epoch"]  # the last: mended
    mended = load_checkpoint(run / "best.pt")
    assert all(torch.equal(whole["model"][k], mended["model"][k]) for k in whole["model"])
    for name in ("metrics.json", "finished.json"):
        (run / name).unlink()
    state = load_checkpoint(run / "last.pt")
    state["best"] = state["history"][0]  # as if epoch 1 had been the best
    atomic_save(state, run / "last.pt")
    (run / "best.pt").write_bytes((run / "best.pt").read_bytes()[:3000])
    with pytest.raises(CheckpointError, match=f"checkpoint {run / 'best.pt'}"):
        _train(config, run)
    assert not (run / "metrics.json").exists() and not (run / "finished.json").exists()


def test_a_finished_runs_damaged_config_and_history_are_written_again(tmp_path, caplog):
    """The rerun of a finished run had rewritten its records only: a config.yaml cut short (it
    still parses) made its cell stale for good, a history.csv cut short drew a shorter curve."""
    config, run = _finished_copy(tmp_path)
    written = {name: (run / name).read_bytes() for name in ("config.yaml", "history.csv")}
    for name, data in written.items():
        (run / name).write_bytes(b"\n".join(data.splitlines()[:3]) + b"\n")
    with caplog.at_level("WARNING", logger="relvit"):
        _train(config, run)
    assert {name: (run / name).read_bytes() for name in written} == written
    assert "config.yaml is not the run's config" in caplog.text
    assert "history.csv is not the run's history" in caplog.text
    (run / "config.yaml").unlink()
    _train(config, run)
    assert (run / "config.yaml").read_bytes() == written["config.yaml"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="relvit"):
        _train(config, run)  # whole: nothing said
    assert "written again" not in caplog.text


def test_a_finished_run_whose_best_weights_are_damaged_says_so(tmp_path):
    """best.pt had no check: the rerun said "finished", the finetune failed with "[Errno 22]"."""
    config, run = _finished_copy(tmp_path)
    (run / "best.pt").write_bytes((run / "best.pt").read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=f"checkpoint {run / 'best.pt'}"):
        _train(config, run)


def test_a_record_flagged_as_a_folder_is_corrupt(tmp_path):
    """One bit of a zip record's external attributes (outside every CRC) marks it a folder;
    torch then reads the tensor as empty: uninitialised memory, loaded silently."""
    config, _ = reference()
    path = tmp_path / "last.pt"
    shutil.copy(config.parent / "run" / "last.pt", path)
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if "/data/" in i.filename)
        central = archive.start_dir
    data = bytearray(path.read_bytes())
    name = info.filename.encode()
    entry = data.index(b"PK\x01\x02", central)
    while data[entry + 46:entry + 46 + len(name)] != name:  # this record's directory entry
        entry = data.index(b"PK\x01\x02", entry + 4)
    attributes = struct.unpack_from("<I", data, entry + 38)[0]
    struct.pack_into("<I", data, entry + 38, attributes | 0x10)
    path.write_bytes(bytes(data))
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None  # the CRCs do not see it
    with pytest.raises(CheckpointError, match=f"record {info.filename} is marked as a folder"):
        load_checkpoint(path)


def test_an_unreadable_upstream_record_is_refused(tmp_path):
    """A truncated metrics.json of a failed pretrain run had been ignored: the finetune trained
    on its half-trained weights."""
    upstream = tmp_path / "pretrain"
    upstream.mkdir()
    (upstream / "best.pt").write_bytes(b"")
    (upstream / "metrics.json").write_text('{"status": "failed", "error": "RUN: non-finite')
    with pytest.raises(CheckpointError, match="its run's .*metrics.json cannot be read"):
        check_upstream(upstream / "best.pt")
    (upstream / "metrics.json").unlink()
    check_upstream(upstream / "best.pt")  # no record: a run by hand, or unfinished


def test_a_failed_runs_record_is_no_finished_run(tmp_path):
    """A failed run's metrics.json holds a config hash too: taken as a finished record, the
    rerun would "restore" the failure instead of training (its finished.json never written)."""
    config, run = _finished_copy(tmp_path)
    expected = json.loads((run / "metrics.json").read_text())
    (run / "finished.json").unlink()
    failed = {**expected, "status": "failed", "error": "loss is nan"}
    (run / "metrics.json").write_text(json.dumps(failed))
    for name in ("last.pt", "last.prev.pt"):
        (run / name).unlink()
    result = _train(config, run)
    assert "status" not in result and result["best"] == expected["best"]  # trained again


def test_a_damaged_finished_json_falls_back_to_metrics_json(tmp_path):
    """The docstring's promise: a finished.json cut short does not end the search for the
    run's record (with no resume state the run had been trained again over its best.pt)."""
    config, run = _finished_copy(tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "finished.json").write_text('{"config_hash": ')
    for name in ("last.pt", "last.prev.pt"):
        (run / name).unlink()
    best = (run / "best.pt").read_bytes()
    assert _train(config, run) == metrics
    assert (run / "best.pt").read_bytes() == best
    assert json.loads((run / "finished.json").read_text()) == metrics  # written anew


def test_an_earlier_starts_unreadable_config_is_said_and_the_run_trains(tmp_path, caplog):
    """Nothing to resume and a config.yaml that is no YAML: not compared (a warning says so),
    rather than a YAML traceback; the run then trains as an uninterrupted one."""
    config, expected = reference()
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("optim: {lr: [\n")
    with caplog.at_level("WARNING", logger="relvit"):
        assert train_here(config, run) == 0
    assert "config.yaml cannot be read" in caplog.text and "not compared" in caplog.text
    assert outcome(run) == expected


@pytest.mark.parametrize("name", ["metrics.json", "history.csv"])
def test_a_folder_where_the_run_writes_a_file_is_named_before_training(tmp_path, name):
    """A metrics.json that was a folder was found at the end of the run, after all its
    training (`cannot write .../metrics.json (Is a directory)`)."""
    config, _ = reference()
    run = tmp_path / "run"
    (run / name).mkdir(parents=True)
    with pytest.raises(TrainingError, match=f"{run}: {name} is a folder where the run writes a "
                                            "file; move it away"):
        _train(config, run)
    assert not (run / "last.pt").exists()


def test_a_stale_hash_record_beside_last_pt_is_recorded_again(tmp_path, tiny_config):
    """A record whose hash is not the one taken now, last.pt beside it: the rerun finishes the
    run again from last.pt and records the current hash (restoring the old one would leave
    metrics.json stale in the reports for ever)."""
    from relvit.train.provenance import config_hash

    cfg = tiny_config("supervised", optim={"epochs": 1})
    run = tmp_path / "run"
    metrics = train(cfg, run, progress=False)
    assert metrics["config_hash"] == config_hash(cfg.to_dict())
    old = {**metrics, "config_hash": "0123456789abcdef"}
    for name in ("finished.json", "metrics.json"):
        (run / name).write_text(json.dumps(old))
    again = train(cfg, run, progress=False)
    assert again["config_hash"] == metrics["config_hash"]
    assert json.loads((run / "finished.json").read_text())["config_hash"] == \
        metrics["config_hash"]
