"""A run whose loss turns NaN/inf (a config that blows the learning rate up at epoch 2, for real):
it stops with an error naming the epoch and step and keeps its last good checkpoint; under the
workflow (--record-failure) it is recorded as failed, the tables show the cell as failed, and a
run starting from it refuses its half-trained weights."""

from __future__ import annotations

import json
import re

import pandas as pd
from faults_helpers import train_here, write_config

from relvit.config import config_from_dict
from relvit.report import compare
from relvit.report.detection_tables import render_markdown as detection_markdown
from relvit.report.table1 import write_table1
from relvit.train.checkpoint import load_checkpoint
from relvit.train.failure import record_failure
from relvit.train.loop import NonFiniteLossError
from relvit.workflow import detection_plan_rows

# lr x 1e30 from epoch 2 on: the weights overflow within a step or two
DIVERGES = {"optim": {"epochs": 3, "schedule": "step", "step_epochs": 1, "step_gamma": 1e30,
                      "warmup_fraction": 0.0}}
NONFINITE = re.compile(r"non-finite loss \S+ at epoch 2, step (\d+); last\.pt \(after epoch 1\) "
                       r"and best\.pt are kept")


def _metrics(run) -> dict:
    return json.loads((run / "metrics.json").read_text())


def test_nonfinite_loss_stops_naming_epoch_and_step(tmp_path, capsys):
    config = write_config(tmp_path / "run.yaml", **DIVERGES)
    run = tmp_path / "run"
    assert train_here(config, run) == 1
    error = capsys.readouterr().err
    assert NONFINITE.search(error) and str(run) in error, error
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    assert load_checkpoint(run / "best.pt")["epoch"] == 1
    assert not (run / "metrics.json").exists()  # nothing that looks like a result


def test_recorded_failure_fails_the_cells_that_depend_on_it(tmp_path, capsys):
    pre_config = write_config(tmp_path / "pre.yaml", **DIVERGES)
    pre = tmp_path / "runs" / "pre"
    assert train_here(pre_config, pre, "--record-failure") == 0
    record = _metrics(pre)
    assert record["status"] == "failed" and record["failed_epoch"] == 2
    assert NONFINITE.search(record["error"]) and record["epochs_completed"] == 1
    assert load_checkpoint(pre / "last.pt")["epoch"] == 1

    # a finetune from its best.pt refuses the half-trained backbone ...
    fine_config = write_config(tmp_path / "fine.yaml", mode="finetune", optim={"epochs": 1})
    fine = tmp_path / "runs" / "fine"
    assert train_here(fine_config, fine, "--init", pre / "best.pt", mode="finetune") == 1
    assert "its run failed (" in capsys.readouterr().err
    # ... and, under the workflow, is recorded failed too
    assert train_here(fine_config, fine, "--init", pre / "best.pt", "--record-failure",
                      mode="finetune") == 0
    assert _metrics(fine)["status"] == "failed"
    assert _metrics(fine)["error_type"] == "UpstreamFailedError"

    sup_config = write_config(tmp_path / "sup.yaml", mode="supervised", optim={"epochs": 1})
    assert train_here(sup_config, tmp_path / "runs" / "sup", mode="supervised") == 0
    table = write_table1([tmp_path / "runs"], tmp_path / "table1", tier="test", paper_csv=None)
    row = next(line for line in (tmp_path / "table1.md").read_text().splitlines()
               if line.startswith("| Digits"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2].endswith("(n=1)") and cells[3] == "failed", cells  # Supervised, RelViT
    assert "failed: a run of this cell stopped" in (tmp_path / "table1.md").read_text()
    assert "failed" in (tmp_path / "table1.tex").read_text()
    pretext = (tmp_path / "table1.md").read_text().split("## Pretext task")[1]
    assert "| failed | failed |" in pretext
    assert table.ours("Digits (sklearn)", cells[1], "finetune", "", "best_top1").failed == 1
    verdicts = {c.method: c.verdict for c in compare.table1_cells(table, compare.Criterion())}
    assert verdicts["RelViT"] == compare.RUN_FAILED


def test_failed_detection_row_renders_as_failed(tmp_path):
    workflow = {"results": str(tmp_path), "seeds": [0], "detection": {
        "tables": {"3": {"datasets": ["coco2017"], "backbones": ["vit_small"]}},
        "stand_in": "digit_scenes"}}
    rows = detection_plan_rows(workflow)
    supervised = next(r for r in rows if r["upstream"] is None)
    cfg = config_from_dict({"mode": "detect", "data": {"name": "digit_scenes"},
                            "model": {"backbone": "vit_small", "patch_size": 8}})
    error = NonFiniteLossError("non-finite loss nan at epoch 3, step 7", 3, 7)
    path = record_failure(cfg, tmp_path / "runs" / supervised["run_id"], error)
    assert path is not None and _metrics(path.parent)["failed_step"] == 7
    text = detection_markdown(3, rows, pd.read_csv(compare.PAPER_TABLES), "test")
    line = next(line for line in text.splitlines() if "| Supervised |" in line)
    assert line.count("| failed |") == 3, line  # mAP, mAP50, mAP75
    cells = compare.detection_cells(rows, pd.read_csv(compare.PAPER_TABLES), compare.Criterion())
    assert {c.verdict for c in cells if c.method == "Supervised"} == {compare.RUN_FAILED}


def test_a_failure_record_counts_the_epochs_in_last_pt(tmp_path):
    """history.csv lags when a run killed after last.pt resumes and then fails: the record said
    1 epoch completed where last.pt held 2."""
    from relvit.config import load_config
    from relvit.train.errors import NonFiniteLossError
    from relvit.train.failure import failed_metrics

    config = write_config(tmp_path / "run.yaml", **DIVERGES)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "history.csv").write_text("epoch,lr\n1,0.1\n")
    error = NonFiniteLossError("non-finite loss nan at epoch 3, step 1", epoch=3, step=1)
    record = failed_metrics(load_config(config), tmp_path / "run", error)
    assert (record["failed_epoch"], record["epochs_completed"]) == (3, 2)
