"""Expand a workflow config (config/*.yaml) into the runs of Table 1, each with its resolved
run config. The Snakefile reads this plan; nothing here trains anything.

Run ids are `<dataset>/<backbone>/<method>/seed<seed>`, with method one of
pretrain, relvit (finetune from that seed's pretrain), supervised and supervised_same_epochs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from relvit.config import ConfigError, OptimConfig, config_from_dict, merge
from relvit.report.table1 import SAME_EPOCHS

METHOD_MODES = {"pretrain": "pretrain", "relvit": "finetune", "supervised": "supervised",
                "supervised_same_epochs": "supervised"}


@dataclass(frozen=True)
class PlannedRun:
    run_id: str
    mode: str
    config: dict[str, Any]  # a validated RunConfig as a plain dict
    pretrain: str | None = None  # run id of the pretrain run a finetune starts from


def _run_config(workflow: dict, stage: str, overrides: dict) -> dict:
    raw = merge(workflow.get("run", {}) or {}, (workflow.get("stages", {}) or {}).get(stage) or {})
    return merge(raw, overrides)


def plan_table1(workflow: dict) -> dict[str, PlannedRun]:
    """All Table 1 runs of the workflow config; every invalid run config is reported at once."""
    table = workflow["table1"]
    runs: dict[str, PlannedRun] = {}
    problems: list[str] = []
    for dataset in table["datasets"]:
        backbone = table["backbone"]
        for seed in workflow["seeds"]:
            base = {"seed": seed, "data": {"name": dataset}, "model": {"backbone": backbone}}
            stage_raw = {
                "pretrain": _run_config(workflow, "pretrain", base),
                "relvit": _run_config(workflow, "finetune", base),
                "supervised": _run_config(workflow, "supervised", base),
            }
            if table.get("same_epochs_baseline", False):
                epochs = sum(stage_raw[m].get("optim", {}).get("epochs", OptimConfig.epochs)
                             for m in ("pretrain", "relvit"))
                stage_raw["supervised_same_epochs"] = merge(
                    stage_raw["supervised"], {"label": SAME_EPOCHS, "optim": {"epochs": epochs}})
            prefix = f"{dataset}/{backbone}"
            for method, raw in stage_raw.items():
                run_id = f"{prefix}/{method}/seed{seed}"
                raw = merge(raw, {"mode": METHOD_MODES[method]})
                try:
                    cfg = config_from_dict(raw, source=f"run {run_id}").to_dict()
                except ConfigError as err:
                    problems += [f"run {run_id}: {p}" for p in err.problems]
                    continue
                pretrain = f"{prefix}/pretrain/seed{seed}" if method == "relvit" else None
                runs[run_id] = PlannedRun(run_id, METHOD_MODES[method], cfg, pretrain)
    if problems:
        raise ConfigError(sorted(set(problems)), "workflow config")
    return runs
