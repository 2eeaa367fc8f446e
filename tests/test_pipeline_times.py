"""bench/pipeline_times.py: a Snakemake run's core-seconds split into the training runs' own
time, the jobs' time outside it and idle cores (a real log is read in test_workflow)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from fixtures.bench import bench_script
from relvit.train.loop import _history_csv

START = datetime(2026, 11, 8, 10, 0, 0)  # a one-digit day: Snakemake pads it with a space


@pytest.fixture(scope="module")
def pipeline_times():
    with bench_script("pipeline_times") as module:
        yield module


def _stamp(second: int) -> str:
    return f"[{(START + timedelta(seconds=second)).ctime()}]"


def _job(second: int, rule: str, jobid: int, output: str, threads: int = 1,
         local: bool = False) -> list[str]:
    """A job's block as Snakemake 9 writes it."""
    lines = [_stamp(second), f"{'local' if local else ''}rule {rule}:", f"    output: {output}",
             f"    jobid: {jobid}", f"    reason: Missing output files: {output}",
             "    wildcards: run=digits/vit_small"]
    if threads > 1:
        lines.append(f"    threads: {threads}")
    return lines + ["    resources: tmpdir=/tmp", ""]


def _finished(second: int, jobid: int, rule: str) -> list[str]:
    return [_stamp(second), f"Finished jobid: {jobid} (Rule: {rule})", "1 of 5 steps done"]


def _write_log(root: Path, body: list[str], cores: int = 2) -> Path:
    """A Snakemake log of the project at root, with Snakemake 9's header."""
    header = ["Assuming unrestricted shared filesystem usage.", "", "SNAKEMAKE", "=========",
              f"  Date: {START:%Y-%m-%d %H:%M:%S}", f"  Working directory: {root}", "",
              "Building DAG of jobs...", f"Provided cores: {cores}",
              "Rules claiming more threads will be scaled down.", "Job stats:",
              "job           count", "----------  -------", "pretrain          1", "",
              "Select jobs to execute...", "Execute 2 jobs..."]
    path = root / ".snakemake" / "log" / "2026-11-08T100000.000000.snakemake.log"
    path.parent.mkdir(parents=True)
    path.write_text("\n".join(header + body) + "\n")
    return path


def _metrics(root: Path, run: str, wall_time_s: float,
             evaluation: list[float] | None = None) -> str:
    """A run's metrics.json and, with `evaluation` (each epoch's eval_time_s), its history.csv
    (without: a run recorded before that column)."""
    path = root / "results" / "runs" / run / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"mode": "pretrain", "wall_time_s": wall_time_s}))
    rows = [{"epoch": i + 1, "epoch_time_s": wall_time_s / len(evaluation or [1]),
             **({} if evaluation is None else {"eval_time_s": seconds})}
            for i, seconds in enumerate(evaluation or [0.0])]
    path.with_name("history.csv").write_text(_history_csv(rows))
    return path.relative_to(root).as_posix()


def test_core_seconds_split_into_runs_jobs_and_idle_cores(tmp_path, pipeline_times, capsys,
                                                          monkeypatch):
    pretrain = _metrics(tmp_path, "pretrain", 30.5, [1.5, 2.5])
    supervised = _metrics(tmp_path, "supervised", 44.5, [3.0, 3.0, 2.0])
    body = (_job(1, "run_config", 3, "results/configs/a.yaml", local=True)
            + _finished(1, 3, "run_config")
            + _job(1, "pretrain", 1, pretrain)
            + _job(2, "supervised", 2, f"results/tables/runs.csv, {supervised}")  # two outputs
            + _finished(41, 1, "pretrain") + _finished(52, 2, "supervised")
            + _job(53, "table1", 0, "results/tables/table1.md, results/tables/table1.tex",
                   local=True)
            + _finished(55, 0, "table1")
            + _job(53, "finetune", 4, _metrics(tmp_path, "finetune", 1.0))
            + [_stamp(54), "Error in rule finetune:", "    jobid: 4", ""])
    log = _write_log(tmp_path, body)
    # a later `snakemake` that had nothing to do writes a newer log, without jobs
    log.with_name("2026-11-08T110000.000000.snakemake.log").write_text(
        "Building DAG of jobs...\nNothing to be done (all requested files are present and up to "
        "date).\n")
    monkeypatch.chdir(tmp_path)
    assert pipeline_times.main([]) == 0  # the newest log under .snakemake/log that ran jobs
    out = capsys.readouterr().out
    assert "4 jobs finished on 2 cores in 55 s" in out
    assert "| supervised | 1 | 50 | 44 | 8 | 6 | 5.5 |" in out  # 44.5 s of a 50-s job
    assert "| pretrain | 1 | 40 | 30 | 4 | 10 | 9.5 |" in out
    assert "| table1 | 1 | 2 | 0 | 0 | 2 |  |" in out
    assert "| run_config | 1 | 0 | 0 | 0 | 0 |  |" in out
    assert "| total | 4 | 92 | 75 | 12 | 17 | 8.5 |" in out
    # 110 core-seconds: 75 in the runs (12 of them evaluating), 17 in the jobs outside them,
    # and 18 with no finished job on the core: 2 (second 0), 1 (second 1), 11 (41-51), 2 (52),
    # 2 (53-54, table1 alone; the failed finetune ran then, and the label says so)
    assert "Core-seconds (2 cores × 55 s): 110" in out
    assert "own time (their epochs): 75 (68.2%)\n  - of which evaluation: 12 (10.9%)" in out
    assert "the report jobs): 17 (15.5%)" in out
    assert "waiting on inputs; the jobs not finished in this log, too): 18 (16.4%)" in out
    assert "**outside training: 31.8%**" in out
    assert "**outside the training steps (evaluation too): 42.7%**" in out
    assert "Not finished in this log (failed, or still running): finetune (job 4)" in out


def test_a_job_of_two_threads_holds_both_cores(tmp_path, pipeline_times, capsys):
    log = _write_log(tmp_path, _job(0, "pretrain", 1, _metrics(tmp_path, "run", 9.0),
                                    threads=2) + _finished(10, 1, "pretrain"))
    assert pipeline_times.main([str(log)]) == 0
    out = capsys.readouterr().out
    assert "waiting on inputs): 0 (0.0%)" in out
    # its 9 s of training held both cores: 18 of the 20 core-seconds
    assert "own time (their epochs): 18 (90.0%)" in out and "outside training: 10.0%" in out
    # a run recorded before eval_time_s: its evaluation is not split out, and said so
    assert "| pretrain | 1 | 10 | 9 |  | 1 | 1.0 |" in out and "- of which evaluation" not in out
    assert "evaluation not split out: a run's history.csv has no eval_time_s" in out
    # --cores overrides the log's: on 4 cores the job leaves 2 idle for 10 s
    assert pipeline_times.main([str(log), "--cores", "4"]) == 0
    assert "waiting on inputs): 20 (50.0%)" in capsys.readouterr().out


def test_a_two_thread_jobs_evaluation_holds_both_cores(tmp_path, pipeline_times, capsys):
    log = _write_log(tmp_path, _job(0, "pretrain", 1, _metrics(tmp_path, "run", 9.0, [1.0, 2.0]),
                                    threads=2) + _finished(10, 1, "pretrain"))
    assert pipeline_times.main([str(log)]) == 0
    out = capsys.readouterr().out
    # 20 core-seconds: 18 in the run (6 of them evaluating: 3 s on 2 cores), 2 outside it
    assert "own time (their epochs): 18 (90.0%)\n  - of which evaluation: 6 (30.0%)" in out
    assert "the report jobs): 2 (10.0%)" in out
    assert "**outside the training steps (evaluation too): 40.0%**" in out


def test_a_rule_with_runs_before_and_after_eval_time_s_leaves_evaluation_out(
        tmp_path, pipeline_times, capsys):
    """A rule's runs recorded before and after the eval_time_s column (a resumed pipeline):
    the rule's evaluation stays unsplit rather than summing None."""
    old, new = _metrics(tmp_path, "old", 5.0), _metrics(tmp_path, "new", 5.0, [1.0])
    log = _write_log(tmp_path, _job(0, "pretrain", 1, old) + _finished(6, 1, "pretrain")
                     + _job(6, "pretrain", 2, new) + _finished(12, 2, "pretrain"))
    assert pipeline_times.main([str(log)]) == 0
    out = capsys.readouterr().out
    assert "| pretrain | 2 | 12 | 10 |  | 2 | 1.0 |" in out
    assert "| total | 2 | 12 | 10 |  | 2 | 1.0 |" in out


def test_the_newest_of_several_logs_with_jobs_is_read(tmp_path, pipeline_times, capsys,
                                                      monkeypatch):
    log = _write_log(tmp_path, _job(0, "pretrain", 1, _metrics(tmp_path, "run", 9.0))
                     + _finished(10, 1, "pretrain"))
    newer = log.with_name("2026-11-08T120000.000000.snakemake.log")
    newer.write_text(log.read_text().replace("Provided cores: 2", "Provided cores: 3"))
    monkeypatch.chdir(tmp_path)
    assert pipeline_times.main([]) == 0
    assert f"{newer.relative_to(tmp_path)}: 1 jobs finished on 3 cores" in capsys.readouterr().out


def test_a_log_shorter_than_a_second_has_no_shares(tmp_path, pipeline_times, capsys):
    """Snakemake's times are whole seconds: a log whose jobs all ended in the second it began
    (a quick local rule) had raised ZeroDivisionError."""
    log = _write_log(tmp_path, _job(0, "run_config", 3, "results/configs/a.yaml", local=True)
                     + _finished(0, 3, "run_config"))
    assert pipeline_times.main([str(log)]) == 0
    out = capsys.readouterr().out
    assert "Core-seconds (2 cores × 0 s): 0" in out and "**outside training: —**" in out


def test_bad_input_is_named(tmp_path, pipeline_times, capsys):
    other = tmp_path / "notes.log"
    other.write_text("epoch 1/1 train_loss=1.0\n")
    assert pipeline_times.main([str(other)]) == 2
    assert f"{other}: no Snakemake jobs in it" in capsys.readouterr().err

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no Snakemake log; pass one"):
        pipeline_times.newest_log(empty)
    nothing = empty / ".snakemake" / "log" / "2026-11-08T110000.000000.snakemake.log"
    nothing.parent.mkdir(parents=True)
    nothing.write_text("Building DAG of jobs...\nNothing to be done (all requested files are "
                       "present and up to date).\n")
    with pytest.raises(FileNotFoundError, match="none of its 1 Snakemake logs ran a job"):
        pipeline_times.newest_log(empty)

    started = tmp_path / "started"  # a run stopped before its first job ended
    started.mkdir()
    log = _write_log(started, _job(0, "pretrain", 1, "results/runs/run/metrics.json"))
    assert pipeline_times.main([str(log)]) == 1
    assert f"{log}: no job finished" in capsys.readouterr().err

    metrics = tmp_path / "results" / "runs" / "run" / "metrics.json"
    metrics.parent.mkdir(parents=True)
    metrics.write_text('{"mode": "pretrain"}')  # a run without its timing
    log = _write_log(tmp_path, _job(0, "pretrain", 1, "results/runs/run/metrics.json")
                     + _finished(5, 1, "pretrain"))
    assert pipeline_times.main([str(log)]) == 2
    assert f"{metrics}: no wall_time_s to read" in capsys.readouterr().err

    metrics.write_text('{"mode": "pretrain", "wall_time_s": 4.0}')
    history = metrics.with_name("history.csv")
    history.write_text("epoch,eval_time_s\n1,n/a\n")  # a damaged history
    assert pipeline_times.main([str(log)]) == 2
    assert f"{history}: no eval_time_s to read" in capsys.readouterr().err
