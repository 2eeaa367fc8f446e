"""bench/compare_runs.py: eager and compiled runs side by side, from their history.csv files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fixtures.bench import bench_script
from relvit.train.loop import _history_csv


@pytest.fixture(scope="module")
def compare_runs():
    with bench_script("compare_runs") as module:
        yield module


def _run(root: Path, name: str, losses: list[float], seconds: list[float],
         evaluation: list[float] | None = None) -> None:
    """A run directory with the training loop's own history.csv (`evaluation`: its
    eval_time_s, a column of the runs since 2026-11-28)."""
    rows = [{"epoch": i + 1, "lr": 1e-3, "train_loss": loss, "val_loss": loss + 0.5,
             "val_acc_clf": 0.25, "val_acc_rel_all": 0.5, "epoch_time_s": t,
             "train_images_per_s": 1000 / t} for i, (loss, t) in enumerate(zip(losses, seconds))]
    for row, seconds_evaluating in zip(rows, evaluation or []):
        row["eval_time_s"] = seconds_evaluating
    (root / name).mkdir()
    (root / name / "history.csv").write_text(_history_csv(rows))


def test_pairs_print_the_loss_difference_and_the_epoch_speed_up(tmp_path, capsys, compare_runs):
    _run(tmp_path, "eager", [2.0, 1.5, 1.25], [3.0, 2.0, 2.0])
    _run(tmp_path, "graphs", [2.0, 1.5015, 1.25], [40.0, 1.0, 0.5])
    assert compare_runs.main([str(tmp_path), "eager", "graphs"]) == 0
    out = capsys.readouterr().out
    assert "    2  1.50000 / 1.50150, 1.00e-03" in out  # |1.5015 - 1.5| / 1.5
    assert "val_acc_clf (base / other)" in out and "val_acc_rel_all" not in out
    # the epochs after the first (the compiles): median 2.0 s against 0.75 s
    assert ("graphs: 3 of 3 epochs; largest train_loss rel. diff 1.00e-03; median epoch after "
            "the first 2.00 s vs 0.75 s (speed-up base/other 2.67x); first epoch 3.0 vs "
            "40.0 s") in out


def test_runs_that_disagree_are_said_and_fail(tmp_path, capsys, compare_runs):
    """The loss difference had only been printed: a compiled run that trains otherwise than
    the eager one now fails the comparison (bf16 rounding: 6.7e-4 at most so far)."""
    _run(tmp_path, "eager", [2.0, 1.5, 1.25], [3.0, 2.0, 2.0])
    _run(tmp_path, "near", [2.0, 1.5029, 1.25], [3.0, 2.0, 2.0])  # 1.93e-3
    _run(tmp_path, "apart", [2.0, 1.5031, 1.25], [3.0, 2.0, 2.0])  # 2.07e-3
    assert compare_runs.main([str(tmp_path), "eager", "near"]) == 0
    assert "diff 1.93e-03;" in capsys.readouterr().out
    assert compare_runs.main([str(tmp_path), "eager", "near", "eager", "apart"]) == 1
    assert "diff 2.07e-03 (OVER 2e-03: they disagree);" in capsys.readouterr().out


def test_pairs_print_the_evaluation_time_when_both_histories_have_it(tmp_path, capsys,
                                                                     compare_runs):
    _run(tmp_path, "eager", [2.0, 1.5, 1.25], [3.0, 2.0, 2.0], [0.5, 0.4, 0.6])
    _run(tmp_path, "graphs", [2.0, 1.5, 1.25], [40.0, 1.0, 0.5], [9.0, 0.2, 0.1])
    _run(tmp_path, "older", [2.0, 1.5, 1.25], [40.0, 1.0, 0.5])
    assert compare_runs.main([str(tmp_path), "eager", "graphs", "eager", "older"]) == 0
    out = capsys.readouterr().out
    assert ("first epoch 3.0 vs 40.0 s; evaluation, median after the first 500.0 ms vs "
            "150.0 ms\n") in out
    assert out.count("; evaluation, median") == 1  # not for a run without the column


def test_a_run_without_history_fails_and_names_its_log(tmp_path, capsys, compare_runs):
    _run(tmp_path, "eager", [2.0], [3.0])
    (tmp_path / "graphs").mkdir()  # cut before its first epoch ended
    assert compare_runs.main([str(tmp_path), "eager", "graphs"]) == 1
    out = capsys.readouterr().out
    assert f"{tmp_path / 'graphs' / 'history.csv'}: no history" in out
    assert f"see {tmp_path / 'graphs'}.log" in out


def test_names_come_in_pairs(tmp_path, compare_runs):
    with pytest.raises(SystemExit) as exit_:
        compare_runs.main([str(tmp_path), "eager", "graphs", "alone"])
    assert exit_.value.code == 2


def test_pairs_print_both_runs_peak_memory_when_they_finished(tmp_path, capsys, compare_runs):
    for name, peak in (("eager", 3000.0), ("graphs", 3300.0), ("cut", None)):
        _run(tmp_path, name, [2.0, 1.5], [3.0, 2.0])
        if peak is not None:  # metrics.json is written when a run finishes
            (tmp_path / name / "metrics.json").write_text(json.dumps(
                {"peak_memory_mb": peak, "peak_memory_reserved_mb": peak + 1000}))
    assert compare_runs.main([str(tmp_path), "eager", "graphs", "eager", "cut"]) == 0
    out = capsys.readouterr().out
    assert "peak memory eager / graphs: 3,000 MB / 3,300 MB (other/base 1.10x)" in out
    assert "peak memory eager / cut: 3,000 MB / — (unfinished)\n" in out
    # on a GPU also what the allocator held: CUDA graphs' pools may not count as allocated
    assert "peak memory reserved eager / graphs: 4,000 MB / 4,300 MB (other/base 1.07x)" in out


def test_across_gives_the_pretrain_step_over_the_supervised_step(tmp_path, capsys, compare_runs):
    """A pretrain run against the supervised run of its kind: the medians of their training
    rates after the first epoch (1000/t images/s here), their ratio as step times, the peak
    memory as pretrain/supervised, and with --project a CIFAR-10 row's hours at those rates."""
    _run(tmp_path, "pretrain", [6.0, 5.5, 5.4, 5.3], [40.0, 0.5, 0.4, 0.6])  # median 2000
    _run(tmp_path, "supervised", [2.3, 2.2, 2.1, 2.0], [30.0, 0.4, 0.5, 0.3])  # median 2500
    for name, peak in (("pretrain", 3300.0), ("supervised", 3000.0)):
        (tmp_path / name / "metrics.json").write_text(json.dumps({"peak_memory_mb": peak}))
    assert compare_runs.main([str(tmp_path), "--across", "pretrain", "supervised",
                              "--project"]) == 0
    out = capsys.readouterr().out
    assert ("pretrain vs supervised: training 2,000 vs 2,500 images/s (median of the epochs "
            "after the first); pretrain step / supervised step 1.25x") in out
    assert "peak memory supervised / pretrain: 3,000 MB / 3,300 MB (other/base 1.10x)" in out
    assert "peak memory reserved" not in out  # no GPU's
    # 100 epochs of 50k images: 5e6 / 2000 s pretrain, 5e6 / 2500 s finetune and supervised
    hours = [5e6 / 2000 / 3600, 5e6 / 2500 / 3600, 5e6 / 2500 / 3600]
    assert (f"pretrain {hours[0]:.2f} h, finetune {hours[1]:.2f} h, supervised "
            f"{hours[2]:.2f} h, one_seed {sum(hours):.2f} h") in out


def test_across_needs_an_epoch_after_the_first_and_names_a_missing_history(
        tmp_path, capsys, compare_runs):
    _run(tmp_path, "pretrain", [6.0], [40.0])  # the first epoch holds the compiles only
    _run(tmp_path, "supervised", [2.3, 2.2], [30.0, 0.4])
    assert compare_runs.main([str(tmp_path), "supervised", "supervised",
                              "--across", "pretrain", "supervised"]) == 0
    assert ("pretrain vs supervised: no training rate after the first epoch"
            in capsys.readouterr().out)
    assert compare_runs.main([str(tmp_path), "supervised", "supervised",
                              "--across", "cut", "supervised"]) == 1
    assert f"{tmp_path / 'cut' / 'history.csv'}: no history" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["eager", "graphs", "--project"], []])
def test_project_needs_across_and_something_is_compared(tmp_path, compare_runs, argv):
    with pytest.raises(SystemExit) as exit_:
        compare_runs.main([str(tmp_path), *argv])
    assert exit_.value.code == 2


def test_the_epoch_and_evaluation_times_are_medians_without_the_first_epoch(tmp_path, capsys,
                                                                           compare_runs):
    """Medians (not means) of the epochs after the first, for both runs: the baseline's first
    epoch and its one slow later epoch must not move its median."""
    _run(tmp_path, "eager", [2.0, 1.5, 1.25, 1.2], [30.0, 2.0, 2.0, 5.0], [9.0, 0.1, 0.2, 0.9])
    _run(tmp_path, "graphs", [2.0, 1.5, 1.25, 1.2], [40.0, 1.0, 1.0, 1.0], [9.0, 0.1, 0.1, 0.1])
    assert compare_runs.main([str(tmp_path), "eager", "graphs"]) == 0
    assert ("median epoch after the first 2.00 s vs 1.00 s (speed-up base/other 2.00x); first "
            "epoch 30.0 vs 40.0 s; evaluation, median after the first 200.0 ms vs 100.0 ms\n"
            in capsys.readouterr().out)


def test_a_disagreeing_pair_fails_whatever_pair_comes_after_it(tmp_path, capsys, compare_runs):
    _run(tmp_path, "eager", [2.0, 1.5, 1.25], [3.0, 2.0, 2.0])
    _run(tmp_path, "apart", [2.0, 1.5031, 1.25], [3.0, 2.0, 2.0])  # 2.07e-3
    _run(tmp_path, "near", [2.0, 1.5029, 1.25], [3.0, 2.0, 2.0])  # 1.93e-3
    assert compare_runs.main([str(tmp_path), "eager", "apart", "eager", "near"]) == 1
    assert "they disagree" in capsys.readouterr().out


def test_an_empty_history_fails(tmp_path, capsys, compare_runs):
    _run(tmp_path, "eager", [2.0, 1.5], [3.0, 2.0])
    (tmp_path / "graphs").mkdir()
    (tmp_path / "graphs" / "history.csv").write_text("epoch,lr,train_loss\n")  # no epoch row
    assert compare_runs.main([str(tmp_path), "eager", "graphs"]) == 1
    assert "eager vs graphs: an empty history" in capsys.readouterr().out


def test_the_reserved_peak_is_shown_when_one_run_of_the_pair_has_it(tmp_path, capsys,
                                                                    compare_runs):
    _run(tmp_path, "eager", [2.0, 1.5], [3.0, 2.0])
    _run(tmp_path, "cut", [2.0, 1.5], [3.0, 2.0])  # no metrics.json: cut by its time cap
    (tmp_path / "eager" / "metrics.json").write_text(json.dumps(
        {"peak_memory_mb": 3000.0, "peak_memory_reserved_mb": 4000.0}))
    assert compare_runs.main([str(tmp_path), "eager", "cut"]) == 0
    assert ("peak memory reserved eager / cut: 4,000 MB / — (unfinished)\n"
            in capsys.readouterr().out)
