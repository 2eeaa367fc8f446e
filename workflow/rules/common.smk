# Shared by every rule: the plan of runs (relvit.workflow) and the paths of their files.
import os

from relvit import layout
from relvit.config import DataConfig
from relvit.data.resize import MARKER as RESIZED_MARKER, resized_folder
from relvit.execution import computation, prepare_data_file, run_file as execution_file
from relvit.workflow import detection_plan_rows, detection_rows, plan, plan_table1

RESULTS = config["results"]
DATA = config.get("data") or {}
DATA_ROOT = os.path.normpath(DATA.get("root", DataConfig.root))  # ./data is data: no new jobs
# relative to the working directory, as the rules' params: a moved checkout reruns no job
PAPER_CSV = os.path.relpath(os.path.join(workflow.basedir, layout.PAPER_TABLES))
RUNS = plan(config, PAPER_CSV, CONFIG_SOURCE)
DETECTION_ROWS = detection_rows(config, PAPER_CSV)
TABLE1_RUNS = list(plan_table1(config)) if config.get("table1") else []
DETECTIONS = [run_id for run_id, run in RUNS.items() if run.mode == "detect"]
DETECTION_TABLES = sorted({row.table for row in DETECTION_ROWS})


wildcard_constraints:
    dataset=r"[A-Za-z0-9_\-]+",
    backbone=r"[A-Za-z0-9_\-]+",
    method=r"[A-Za-z0-9_]+",
    seed=r"\d+",


RUN = layout.RUN_ID  # the training rules' wildcards


def run_dir(run_id):
    return layout.run_dir(RESULTS, run_id)


def run_config_file(run_id):
    return layout.run_config_file(RESULTS, run_id)


def metrics_file(run_id):
    return layout.metrics_file(RESULTS, run_id)


def job_log(run_id):
    """A training job's log (Snakemake deletes it before it runs the job again; the run's own
    train.log keeps every attempt's lines)."""
    return f"{RESULTS}/logs/{run_id}.log"


def ready_marker(dataset):
    """Written by prepare_data once a dataset is downloaded, verified and readable."""
    return f"{DATA_ROOT}/{dataset}/{layout.READY}"


def resized_marker(dataset, side):
    """Written by resize_data once the dataset's resized copy (data.resized) is complete."""
    return f"{resized_folder(DATA_ROOT, dataset, side)}/{RESIZED_MARKER}"


def data_marker(wildcards):
    """What a classification run waits for: its dataset ready, or its resized copy made."""
    side = (DATA.get("resized") or {}).get(wildcards.dataset)
    return resized_marker(wildcards.dataset, side) if side else ready_marker(wildcards.dataset)


def planned(wildcards):
    run_id = layout.run_id(wildcards.dataset, wildcards.backbone, wildcards.method,
                           wildcards.seed)
    if run_id not in RUNS:
        raise ValueError(f"{run_id} is not a run of this workflow config")
    return RUNS[run_id]


def planned_config(wildcards):
    """What a run computes: its config without the execution keys (relvit.execution)."""
    run_id = wildcards.run
    if run_id not in RUNS:
        raise ValueError(f"{run_id} is not a run of this workflow config")
    return computation(RUNS[run_id].config)


def run_execution_file(wildcards):
    """How a run executes: read by its job when it starts, not tracked (relvit.execution)."""
    return execution_file(RESULTS, planned(wildcards).run_id)


def pretrain_metrics(wildcards):
    """The metrics of the pretrain run a finetune or upstream detection starts from (or none)."""
    pretrain = planned(wildcards).pretrain
    return [metrics_file(pretrain)] if pretrain else []


def pretrain_checkpoint(wildcards):
    """The best.pt a finetune starts from (not a declared output, see pretrain.smk)."""
    return layout.best_checkpoint(RESULTS, planned(wildcards).pretrain)


# Containers, GPUs and cluster resources (README: "GPU boxes and SLURM clusters").
CONTAINER = config["container"]
TRAINING_STAGES = ("pretrain", "finetune", "supervised", "detect")


def stage_resources(stage: str) -> dict[str, int | str]:
    """The `resources` of a stage's jobs (gpu, mem_mb, runtime in minutes, cpus_per_task, ...)
    from the workflow config's `resources.<stage>`; a training job's `gpu` is `gpus_per_run`
    unless that block names its own."""
    resources = dict((config.get("resources") or {}).get(stage) or {})
    if stage in TRAINING_STAGES:
        resources.setdefault("gpu", config["gpus_per_run"])
    return resources


def launcher(stage: str) -> str:
    """The command a training job starts: `relvit`, or torchrun with one process per GPU."""
    gpus = stage_resources(stage)["gpu"]
    if gpus > 1:
        return f"torchrun --standalone --nproc-per-node {gpus} -m relvit.cli"
    return "relvit"


# envs/relvit.yaml installs this checkout's package from here (pip expands ${RELVIT_SRC}): set
# for `--sdm conda` to read, whatever the caller's environment holds.
os.environ.update(RELVIT_SRC=workflow.basedir)
