"""The workflow's compare and figures rules and `snakemake --report`, on a tiny Table 1 whose runs
are written here as finished (training end to end is test_workflow's job): only the report
rules run, so this stays well under a minute."""

import json
import os

import pytest
import yaml
from test_figures import PDF, PNG, add_histories
from test_workflow import ROOT, TINY, job_counts, snakemake

from relvit.config import config_from_dict
from relvit.data.registry import get_dataset
from relvit.geometry import backbone_label, run_geometry
from relvit.train.provenance import config_hash
from relvit.workflow import plan

CONFIG = {**TINY, "table1": {**TINY["table1"], "same_epochs_baseline": False}}


def finished_runs(root, config: dict = CONFIG, label: str | None = None):
    """Every planned run's config (as rule run_config writes it), metrics.json and history.csv,
    the data marker; inputs older than outputs, as after a real run. `label`: the backbone label
    the runs record (default: the tiny model's own)."""
    results, inputs, outputs = root / "results", [], []
    [dataset] = config["table1"]["datasets"]
    for run_id, run in plan(config, str(ROOT / "results" / "paper" / "tables.csv")).items():
        config = results / "configs" / f"{run_id}.yaml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(yaml.safe_dump(run.config, sort_keys=False))
        cfg = config_from_dict(run.config)
        metrics = results / "runs" / run_id / "metrics.json"
        metrics.parent.mkdir(parents=True)
        metrics.write_text(json.dumps({
            "mode": cfg.mode, "label": cfg.label, "seed": cfg.seed, "dataset": dataset,
            "dataset_title": get_dataset(dataset).title,
            "backbone_label": label or backbone_label(cfg, run_geometry(cfg)),
            "best_top1": 80.0, "last_top1": 79.0, "last": {"val_acc_rel": 0.5, "val_acc_pos": 0.4},
            "wall_time_s": 3.0, "peak_memory_mb": 500.0, "device": "cpu (test)",
            "git_sha": "abc", "image": "none", "config_hash": config_hash(run.config)}))
        inputs.append(config)
        outputs.append(metrics)
    marker = root / "data" / dataset / ".relvit-ready.json"
    marker.parent.mkdir(parents=True)
    marker.write_text("{}")
    add_histories(results / "runs")
    for age, paths in ((100, [*inputs, marker]), (50, outputs)):
        for path in paths:
            os.utime(path, (path.stat().st_mtime - age,) * 2)


@pytest.mark.slow
def test_compare_figures_and_report(tmp_path):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(CONFIG))
    finished_runs(tmp_path)
    run = snakemake("--cores", "2", "--configfile", "tiny.yaml", "--rerun-triggers", "mtime",
                    cwd=tmp_path)
    assert job_counts(run.stdout + run.stderr) == {"table1": 1, "compare": 1, "figures": 1,
                                                   "compare_verdict": 1, "all": 1}
    results = tmp_path / "results"
    rows = [line for line in (results / "tables" / "compare.md").read_text().splitlines()
            if line.startswith("| 1 | Digits")]
    assert len(rows) == 2 and all("| not comparable (stand-in) |" in r for r in rows), rows
    assert "[stale]" not in (results / "tables" / "table1.md").read_text()
    for group in ("pretrain", "relvit", "supervised"):
        path = results / "figures" / "curves" / "digits" / "vit_small" / f"{group}.png"
        assert path.read_bytes().startswith(PNG)
    assert (results / "figures" / "table1.pdf").read_bytes().startswith(PDF)
    snakemake("--configfile", "tiny.yaml", "--report", "results/report.html", cwd=tmp_path)
    html = (results / "report.html").read_text()
    for name in ("table1.md", "compare.md", "compare.csv", "table1.png", "relvit.png"):
        assert name in html, name
    assert "tier <strong>test</strong>" in html  # the workflow description, rendered


@pytest.mark.slow
def test_a_cell_out_of_tolerance_fails_the_workflow_and_keeps_the_comparison(tmp_path):
    """CIFAR-10 runs of the paper's ViT-S/4 (as their metrics say) 6 points below the paper:
    `compare_verdict` fails the workflow, and compare.{md,csv} stay (a failed job's outputs
    would be deleted)."""
    config = {**CONFIG, "table1": {**CONFIG["table1"], "datasets": ["cifar10"]}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    finished_runs(tmp_path, config, label="ViT-S/4")
    run = snakemake("--cores", "2", "--configfile", "tiny.yaml", "--rerun-triggers", "mtime",
                    cwd=tmp_path, check=False)
    output = run.stdout + run.stderr
    assert run.returncode != 0 and "out of tolerance" in output, output[-3000:]
    assert "table 1 CIFAR-10 ViT-S/4" in output
    tables = tmp_path / "results" / "tables"
    assert "OUT" in (tables / "compare.md").read_text()
    assert "OUT" in (tables / "compare.csv").read_text()
    assert not (tables / "compare.verdict").exists()
