"""Where a run's files live: the one place the training loop, the reports and the workflow's
rules (workflow/rules/common.smk) take these names from. No heavy imports: the Snakefile reads it.

A dataset under the data root is ready once `relvit prepare-data` wrote <root>/<name>/
.relvit-ready.json (relvit.data.prepare). A tier's results folder (the workflow config's `results`) holds, for run
<run> = <dataset>/<backbone>/<method>/seed<N>:
- <results>/configs/<run>.yaml: what the run computes (Snakemake tracks it);
- <results>/execution/<run>.yaml: how it executes (relvit.execution; not tracked);
- <results>/runs/<run>/: what it writes (metrics.json, best.pt, last.pt, history.csv,
  train.log, and finished.json, relvit.train.finished); a run folder made with another config is
  moved aside to <run folder>.replaced-<time> (`--replace-changed`).
"""

from __future__ import annotations

import re

READY = ".relvit-ready.json"  # in a dataset's folder: downloaded, verified and readable
# the paper's numbers as data (committed), relative to the repository's root
PAPER_TABLES = "results/paper/tables.csv"
PRINTED_IMPROVEMENTS = "results/paper/printed-improvements.csv"  # its printed "Improv." values
RUNS, CONFIGS, EXECUTION = "runs", "configs", "execution"  # folders under <results>
METRICS = "metrics.json"  # a run's record: a finished run's numbers, or its failure
BEST = "best.pt"  # the weights of the best epoch: what a finetune or detection starts from
LAST = "last.pt"  # the state a run resumes from
HISTORY = "history.csv"  # one row per epoch
RUN_CONFIG = "config.yaml"  # the resolved config the run was started with
RUN_LOG = "train.log"  # every training process's log lines, appended (relvit.train.runlog)
FINISHED = "finished.json"  # metrics.json's copy, written first (relvit.train.finished)
REPLACED = ".replaced-"  # <run folder>.replaced-<time>: moved aside, never deleted


# a run's id: its folder under <results>/runs/, and the wildcards of the workflow's training rules
RUN_ID = "{dataset}/{backbone}/{method}/seed{seed}"


def run_id(dataset: str, backbone: str, method: str, seed: int | str) -> str:
    """The id of a run (`RUN_ID`), e.g. digits/vit_small/pretrain/seed0."""
    return RUN_ID.format(dataset=dataset, backbone=backbone, method=method, seed=seed)


# RUN_ID with each field a named group (a field is one folder name)
_RUN_ID_FIELDS = re.compile(re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(RUN_ID)))


def run_id_fields(run: str) -> dict[str, str] | None:
    """The fields of run id `run` (`RUN_ID`: dataset, backbone, method, seed), or None for a
    string of another form."""
    match = _RUN_ID_FIELDS.fullmatch(run)
    return match.groupdict() if match else None


def run_dir(results: str, run_id: str) -> str:
    return f"{results}/{RUNS}/{run_id}"


def run_config_file(results: str, run_id: str) -> str:
    return f"{results}/{CONFIGS}/{run_id}.yaml"


def metrics_file(results: str, run_id: str) -> str:
    return f"{run_dir(results, run_id)}/{METRICS}"


def best_checkpoint(results: str, run_id: str) -> str:
    return f"{run_dir(results, run_id)}/{BEST}"


def replaced_name(name: str, stamp: str) -> str:
    """The name a run folder `name` is moved aside to."""
    return f"{name}{REPLACED}{stamp}"


def replaced_order(name: str) -> tuple[str, int]:
    """Sort key of the names `replaced_name` gives, oldest first: the time stamp, then the
    number of a later move within the same second (`-10` after `-9`; none counts as 1)."""
    stamp = name.rsplit(REPLACED, 1)[-1]
    head, _, number = stamp.rpartition("-")
    if head.count("-") == 1 and number.isdigit():  # <date>-<time>-<n>
        return head, int(number)
    return stamp, 1
