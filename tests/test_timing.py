"""An epoch's throughput and input-wait share (relvit.train.timing), and where runs record them."""

from __future__ import annotations

import csv
import json
import time

from relvit.train.loop import train
from relvit.train.timing import TIMING_KEYS, InputWait, epoch_timing


def slow_items(n: int, delay: float):
    for i in range(n):
        time.sleep(delay)
        yield i


def test_waiting_for_a_slow_loader_is_counted():
    wait = InputWait()
    started = time.perf_counter()
    assert list(wait.iterate(slow_items(4, 0.02))) == [0, 1, 2, 3]
    assert 0.08 <= wait.seconds <= time.perf_counter() - started


def test_the_consumer_s_own_time_is_not_counted():
    wait = InputWait()
    for _ in wait.iterate(range(4)):
        time.sleep(0.05)  # the training step: 0.2 s in all, were it counted
    assert wait.seconds < 0.1


def test_epoch_timing():
    assert epoch_timing(500, 2.0, 0.5) == {"train_images_per_s": 250.0, "input_wait_share": 0.25}


def test_runs_record_timing_in_the_history_not_in_the_metrics(tmp_path, tiny_config, caplog):
    caplog.set_level("INFO", logger="relvit")
    metrics = train(tiny_config("supervised", optim={"epochs": 2}), tmp_path / "run",
                    progress=False)
    with (tmp_path / "run" / "history.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert set(TIMING_KEYS) <= set(rows[0])
    for row in rows:
        assert float(row["train_images_per_s"]) > 0
        assert 0 <= float(row["input_wait_share"]) <= 1
        assert 0 < float(row["eval_time_s"]) < float(row["epoch_time_s"])
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in TIMING_KEYS:
        assert key not in saved["best"] and key not in saved["last"] and key not in metrics["last"]
    assert "images/s" in caplog.text and "% waiting for batches; evaluation " in caplog.text


def test_history_of_a_run_resumed_across_the_new_columns():
    """Rows saved before the timing columns existed and rows with them make one CSV."""
    from relvit.train.loop import _history_csv

    old = {"epoch": 1, "lr": 0.1, "train_loss": 2.0, "epoch_time_s": 3.0}
    new = {**old, "epoch": 2, "train_images_per_s": 50.0, "input_wait_share": 0.1}
    rows = list(csv.DictReader(_history_csv([old, new]).splitlines()))
    assert rows[0]["input_wait_share"] == "" and rows[1]["input_wait_share"] == "0.1"
    assert list(rows[0]) == list(new)
