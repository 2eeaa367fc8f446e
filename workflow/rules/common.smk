# Shared by every rule: the plan of runs (relvit.workflow) and the paths of their files.
import os

from relvit.workflow import plan_table1

RESULTS = config["results"]
DATA = config.get("data") or {}
DATA_ROOT = DATA.get("root", "data")
RUNS = plan_table1(config)


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
    return metrics_file(planned(wildcards).pretrain)


def pretrain_checkpoint(wildcards):
    """The best.pt a finetune starts from (not a declared output, see pretrain.smk)."""
    return os.path.join(run_dir(planned(wildcards).pretrain), "best.pt")
