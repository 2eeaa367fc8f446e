"""Expand a workflow config (config/*.yaml) into the runs of Table 1, each with its resolved
run config. The Snakefile reads this plan; nothing here trains anything.

Run ids are `<dataset>/<backbone>/<method>/seed<seed>`, with method one of pretrain,
relvit (finetune from that seed's pretrain), supervised, supervised_same_epochs, and
pretrain_mega / relvit_mega for the mega-patch variant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from relvit.config import ConfigError, OptimConfig, config_from_dict, merge
from relvit.report.table1 import MEGAPATCHES, SAME_EPOCHS

METHOD_MODES = {"pretrain": "pretrain", "relvit": "finetune", "supervised": "supervised",
                "supervised_same_epochs": "supervised", "pretrain_mega": "pretrain",
                "relvit_mega": "finetune"}
PRETRAIN_OF = {"relvit": "pretrain", "relvit_mega": "pretrain_mega"}


@dataclass(frozen=True)
class PlannedRun:
    run_id: str
    dataset: str
    mode: str
    config: dict[str, Any]  # a validated RunConfig as a plain dict
    pretrain: str | None = None  # run id of the pretrain run a finetune starts from


def _stage(workflow: dict, stage: str, overrides: dict) -> dict:
    raw = merge(workflow.get("run", {}) or {}, (workflow.get("stages", {}) or {}).get(stage) or {})
    return merge(raw, overrides)


def _epochs(raw: dict) -> int:
    return raw.get("optim", {}).get("epochs", OptimConfig.epochs)


def _methods(workflow: dict, dataset: str, base: dict) -> dict[str, dict]:
    """The raw run config of every method planned for one dataset and seed."""
    table = workflow["table1"]
    raw = {"pretrain": _stage(workflow, "pretrain", base),
           "relvit": _stage(workflow, "finetune", base),
           "supervised": _stage(workflow, "supervised", base)}
    if table.get("same_epochs_baseline", False):
        epochs = _epochs(raw["pretrain"]) + _epochs(raw["relvit"])
        raw["supervised_same_epochs"] = merge(
            raw["supervised"], {"label": SAME_EPOCHS, "optim": {"epochs": epochs}})
    mega = table.get("megapatch") or {}
    if dataset in mega.get("datasets", []):
        raw["pretrain_mega"] = merge(raw["pretrain"], {"label": MEGAPATCHES,
                                                       "ssl": {"megapatch_side": mega["side"]}})
        raw["relvit_mega"] = merge(raw["relvit"], {"label": MEGAPATCHES})
    return raw


def plan_table1(workflow: dict) -> dict[str, PlannedRun]:
    """All Table 1 runs of the workflow config; every invalid run config is reported at once."""
    table = workflow["table1"]
    data = workflow.get("data", {}) or {}
    runs: dict[str, PlannedRun] = {}
    problems: list[str] = []
    backbone = table["backbone"]
    for dataset in table["datasets"]:
        seeds = (table.get("seeds") or {}).get(dataset, workflow["seeds"])
        for seed in seeds:
            base = {"seed": seed, "data": {"name": dataset, "root": data.get("root", "data")},
                    "model": {"backbone": backbone}}
            prefix = f"{dataset}/{backbone}"
            for method, raw in _methods(workflow, dataset, base).items():
                run_id = f"{prefix}/{method}/seed{seed}"
                raw = merge(raw, {"mode": METHOD_MODES[method]})
                try:
                    cfg = config_from_dict(raw, source=f"run {run_id}").to_dict()
                except ConfigError as err:
                    problems += [f"run {run_id}: {p}" for p in err.problems]
                    continue
                pretrain = f"{prefix}/{PRETRAIN_OF[method]}/seed{seed}" \
                    if method in PRETRAIN_OF else None
                runs[run_id] = PlannedRun(run_id, dataset, METHOD_MODES[method], cfg, pretrain)
    if problems:
        raise ConfigError(sorted(set(problems)), "workflow config")
    return runs
