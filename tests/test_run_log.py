"""A run directory's train.log: every attempt's log lines, each after a dated line naming its start
(Snakemake deletes a job's own log before it runs the job again)."""

from __future__ import annotations

import re

import pytest

from relvit.train import loop
from relvit.train.errors import CheckpointError, TrainingError
from relvit.train.loop import train

STARTED = re.compile(r"^== \d{4}-\d\d-\d\d \d\d:\d\d:\d\d relvit (\w+) started \(process \d+\)$",
                     re.M)


def test_a_resumed_run_keeps_every_attempts_lines(tmp_path, tiny_config):
    cfg = tiny_config("supervised", optim={"epochs": 2})
    assert train(cfg, tmp_path / "run", stop_after=1, progress=False) is None
    first = (tmp_path / "run" / "train.log").read_text()
    assert STARTED.findall(first) == ["supervised"] and "epoch 1/2" in first
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d relvit: epoch 1/2 ", first, re.M), first
    train(cfg, tmp_path / "run", progress=False)
    text = (tmp_path / "run" / "train.log").read_text()
    assert text.startswith(first) and STARTED.findall(text) == ["supervised", "supervised"]
    second = text[len(first):]
    assert "resuming" in second and "after epoch 1" in second and "epoch 2/2" in second
    train(cfg, tmp_path / "run", progress=False)  # finished: restored from its record
    assert "finished already" in (tmp_path / "run" / "train.log").read_text().split("== ")[-1]


def test_what_stopped_a_run_is_its_last_line(tmp_path, tiny_config, monkeypatch):
    calls = [0]
    original = loop.Run.train_loss

    def train_loss(self, *args):
        calls[0] += 1
        if calls[0] == 3:
            raise RuntimeError("the device fell over")
        return original(self, *args)

    monkeypatch.setattr(loop.Run, "train_loss", train_loss)
    with pytest.raises(RuntimeError):
        train(tiny_config("supervised", optim={"epochs": 2}), tmp_path / "run", progress=False)
    lines = (tmp_path / "run" / "train.log").read_text().splitlines()
    assert re.fullmatch(r"== [\d-]+ [\d:]+ stopped by RuntimeError: the device fell over",
                        lines[-1])
    # not one of relvit's own errors: its traceback, down to where it was raised, comes first
    start = lines.index("Traceback (most recent call last):")
    assert lines[start - 1].endswith("relvit: the traceback of what stopped the run:")
    assert 'raise RuntimeError("the device fell over")' in lines[start:-1][-2]
    assert lines[-2] == "RuntimeError: the device fell over"


def test_a_start_refused_before_its_folder_exists_writes_nothing(tmp_path, tiny_config):
    with pytest.raises(CheckpointError, match="needs init_checkpoint"):
        train(tiny_config("finetune"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_replaced_run_folder_keeps_its_log_and_the_new_one_starts_its_own(tmp_path,
                                                                           tiny_config):
    old = tiny_config("supervised", optim={"epochs": 2})
    train(old, tmp_path / "run", stop_after=1, progress=False)
    new = tiny_config("supervised", optim={"epochs": 2, "lr": 1e-3})
    with pytest.raises(TrainingError, match="another config"):
        train(new, tmp_path / "run", progress=False)
    refused = (tmp_path / "run" / "train.log").read_text()
    assert refused.splitlines()[-1].split(": ")[0].endswith("stopped by TrainingError")
    assert "Traceback" not in refused  # relvit's own error: its message says it all
    train(new, tmp_path / "run", progress=False, replace_changed=True)
    aside = next(tmp_path.glob("run.replaced-*"))
    moved = (aside / "train.log").read_text()
    assert moved.startswith(refused) and "moved to" in moved.splitlines()[-1]
    fresh = (tmp_path / "run" / "train.log").read_text()
    assert STARTED.match(fresh) and "moved to" not in fresh and "epoch 2/2" in fresh


def test_a_log_that_cannot_be_written_never_stops_the_run(tmp_path, tiny_config, capsys):
    """train.log made a folder (as a full disk or a read-only file would make the write fail):
    the run trains to its end, and says once that its lines are on the console only."""
    (tmp_path / "run" / "train.log").mkdir(parents=True)
    metrics = train(tiny_config("supervised", optim={"epochs": 2}), tmp_path / "run",
                    progress=False)
    assert metrics["last"]["train_loss"] > 0
    assert capsys.readouterr().err.count("train.log: cannot append") == 1
