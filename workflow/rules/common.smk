# Shared by every rule: the plan of runs (relvit.workflow) and the paths of their files.
import os

from relvit.workflow import detection_plan_rows, detection_rows, plan, plan_table1

RESULTS = config["results"]
DATA = config.get("data") or {}
DATA_ROOT = DATA.get("root", "data")
PAPER_CSV = os.path.join(workflow.basedir, "results", "paper", "tables.csv")
RUNS = plan(config, PAPER_CSV)
DETECTION_ROWS = detection_rows(config, PAPER_CSV)
TABLE1_RUNS = list(plan_table1(config)) if config.get("table1") else []
DETECTIONS = [run_id for run_id, run in RUNS.items() if run.mode == "detect"]
DETECTION_TABLES = sorted({row.table for row in DETECTION_ROWS})


wildcard_constraints:
    dataset=r"[A-Za-z0-9_\-]+",
    backbone=r"[A-Za-z0-9_\-]+",
    method=r"[A-Za-z0-9_]+",
    seed=r"\d+",


def run_dir(run_id):
    return f"{RESULTS}/runs/{run_id}"


def run_config_file(run_id):
    return f"{RESULTS}/configs/{run_id}.yaml"


def metrics_file(run_id):
    return f"{run_dir(run_id)}/metrics.json"


def ready_marker(dataset):
    """Written by prepare_data once a dataset is downloaded, verified and readable."""
    return f"{DATA_ROOT}/{dataset}/.relvit-ready.json"


def planned(wildcards):
    run_id = f"{wildcards.dataset}/{wildcards.backbone}/{wildcards.method}/seed{wildcards.seed}"
    if run_id not in RUNS:
        raise ValueError(f"{run_id} is not a run of this workflow config")
    return RUNS[run_id]


def planned_config(wildcards):
    run_id = wildcards.run
    if run_id not in RUNS:
        raise ValueError(f"{run_id} is not a run of this workflow config")
    return RUNS[run_id].config


def pretrain_metrics(wildcards):
    """The metrics of the pretrain run a finetune or upstream detection starts from (or none)."""
    pretrain = planned(wildcards).pretrain
    return [metrics_file(pretrain)] if pretrain else []


def pretrain_checkpoint(wildcards):
    """The best.pt a finetune starts from (not a declared output, see pretrain.smk)."""
    return os.path.join(run_dir(planned(wildcards).pretrain), "best.pt")
