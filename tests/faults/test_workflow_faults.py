"""The workflow under faults: a SIGKILLed snakemake resumes with a plain `snakemake`, unrelated
files never rerun finished runs, and a diverging stage shows as failed cells in Table 1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_workflow import ROOT, SNAKEMAKE, TINY, job_counts, snakemake

RESULTS = "res dir"  # a space in every path of the run
PRETRAIN = f"{RESULTS}/runs/digits/vit_small/pretrain/seed0"
CONFIG = {**TINY, "results": RESULTS, "stages": {
    "pretrain": {"optim": {"epochs": 6}},
    "finetune": {"optim": {"epochs": 1}},
    # lr x 1e30 from epoch 2: the supervised runs diverge (for real) and are recorded as failed
    "supervised": {"optim": {"epochs": 2, "schedule": "step", "step_epochs": 1,
                             "step_gamma": 1e30, "warmup_fraction": 0.0}}}}


def _kill_snakemake_mid_run(cwd) -> None:
    """Start the workflow and SIGKILL snakemake and its jobs once the pretrain run is past its
    first epoch (as a lost session or a dead node would)."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # `relvit`
    with open(cwd / "killed.log", "w") as output:
        proc = subprocess.Popen([SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--cores", "2",
                                 "--configfile", "tiny.yaml"], cwd=cwd, start_new_session=True,
                                stdout=output, stderr=subprocess.STDOUT,
                                env={**os.environ, "PATH": path})
    last = cwd / PRETRAIN / "last.pt"
    deadline = time.monotonic() + 300
    try:
        while not last.exists():
            assert proc.poll() is None, (cwd / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # snakemake and every job it started
        proc.wait()


@pytest.mark.slow
def test_killed_workflow_resumes_with_plain_snakemake(tmp_path):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(CONFIG))
    _kill_snakemake_mid_run(tmp_path)
    assert not (tmp_path / PRETRAIN / "metrics.json").exists()
    assert list((tmp_path / ".snakemake" / "incomplete").iterdir())  # what a kill leaves

    snakemake("--cores", "2", "--configfile", "tiny.yaml", cwd=tmp_path)  # no extra flags
    log = (tmp_path / RESULTS / "logs/digits/vit_small/pretrain/seed0.log").read_text()
    assert "resuming" in log and "after epoch" in log, log
    table = (tmp_path / RESULTS / "tables" / "table1.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| Digits"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # Supervised, RelViT, Improv., same epochs
    assert cells[2] == "failed" and cells[3].endswith("(n=1)") and cells[5] == "failed", cells
    failed = yaml.safe_load((tmp_path / RESULTS / "runs/digits/vit_small/supervised/seed0"
                             / "metrics.json").read_text())
    assert failed["status"] == "failed" and failed["failed_epoch"] == 2

    dry = snakemake("-n", "--cores", "2", "--configfile", "tiny.yaml", cwd=tmp_path)
    assert "Nothing to be done" in dry.stdout + dry.stderr
    # unrelated files: nothing reruns
    for unrelated in (tmp_path / "README.md", tmp_path / "other.yaml"):
        unrelated.write_text("changed\n")
    (tmp_path / RESULTS / "logs" / "notes.txt").write_text("changed\n")
    dry = snakemake("-n", "--cores", "2", "--configfile", "tiny.yaml", cwd=tmp_path)
    assert "Nothing to be done" in dry.stdout + dry.stderr
    # another run's config: that run (and the tables) may rerun, never the pretrain/finetune
    (tmp_path / RESULTS / "configs/digits/vit_small/supervised/seed0.yaml").touch()
    dry = snakemake("-n", "--cores", "2", "--configfile", "tiny.yaml", cwd=tmp_path)
    text = dry.stdout + dry.stderr
    if "Nothing to be done" not in text:
        assert not {"pretrain", "finetune", "prepare_data"} & set(job_counts(dry.stdout)), text
