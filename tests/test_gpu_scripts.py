"""bench/gpu_run_check.sh's dry run on the CPU (`--device cpu`: a tiny model, no compile), so
that a broken script is found here rather than in a lent GPU's few minutes."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_run_check_trains_and_compares_every_run(tmp_path):
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    scratch.mkdir()
    result = subprocess.run(
        ["bash", "bench/gpu_run_check.sh", "--device", "cpu", "--step", "--mode", "pretrain"],
        cwd=ROOT, env={**os.environ, "OUT": str(out), "PYTHON": sys.executable,
                       "TMPDIR": str(scratch)},
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = (out / "summary.txt").read_text()
    runs = ("pretrain-eager", "pretrain-graphs", "pretrain-graphs-step")
    for run in runs:
        assert f"pretrain {run}: exit 0 " in summary, summary
    assert "comparison: exit 0" in summary, summary
    # the three pairs (eager against each graphs run, graphs against the step region) compared
    # on every epoch
    assert summary.count(": 2 of 2 epochs; largest train_loss rel. diff") == 3, summary
    assert summary.count("peak memory pretrain-eager / pretrain-graphs") == 2, summary
    assert "peak memory pretrain-graphs / pretrain-graphs-step" in summary, summary
    with tarfile.open(out / "runs.tar.gz") as tar:
        configs = {run: yaml.safe_load(tar.extractfile(f"./{run}/config.yaml")) for run in runs}
        assert {f"./{run}/history.csv" for run in runs} <= set(tar.getnames())
    assert [(c["compile"], c["compile_mode"], c["compile_step"]) for c in configs.values()] == [
        (False, "default", False), (True, "reduce-overhead", False),
        (True, "reduce-overhead", True)]
    # data and checkpoints in a scratch folder, removed: a call cut at its limit returns $OUT
    assert {p.name for p in out.iterdir()} == {"summary.txt", "run.yaml", "runs.tar.gz"}
    assert not list(scratch.glob("gpu-run-check.*"))
