# relvit-repro: RelViT reproduction pipeline. Default: the smoke tier (config/config.yaml).
#   snakemake --cores 2                                  # Tables 1-3 on embedded digits
#   snakemake --cores 2 --configfile config/other.yaml   # another tier
import os
import sys

from snakemake.utils import min_version, validate

min_version("9.0")


# The smoke tier only when no --configfile is given: a workflow config is complete in itself.
# Snakemake would otherwise merge a --configfile into this one key by key, and the paper tier
# would inherit the smoke tier's stand-in data and tiny models. (`--config KEY=VALUE` still goes
# on top of whichever file is used.)
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


# every problem of the workflow config and of its run configs at once, with key paths and
# the files the config came from (a key given twice in one is refused, as in a run config)
from snakemake.utils import update_config

from relvit.config import read_config_file
from relvit.layout import PAPER_TABLES
from relvit.workflow import check_workflow_config, typed_config_values

for _file in workflow.configfiles:
    read_config_file(_file, "workflow config")
# --config KEY=VALUE alone: the values inside a nested one typed as Snakemake types a top-level
# one (it leaves them strings)
_given = workflow.config_settings.config
update_config(config, typed_config_values(_given))
CONFIG_SOURCE = "workflow config " + ", ".join(map(str, workflow.configfiles)) + (
    f" with --config {', '.join(_given)}" if _given else "")
check_workflow_config(config, os.path.join(workflow.basedir, "config", "schema.yaml"),
                      os.path.join(workflow.basedir, PAPER_TABLES),
                      CONFIG_SOURCE)
validate(config, "config/schema.yaml")

# a snakemake killed before it could unlock leaves its locks: released when no snakemake that ran
# this workflow here is alive, so a plain `snakemake` resumes (with rerun-incomplete, profiles/)
from relvit.workflow import release_stale_locks

# only the snakemake that holds the locks: the ones its executor starts for each job (on
# cluster nodes too) would leave records of other hosts, which keep every lock for good
if workflow.is_main_process:
    for _lock in release_stale_locks():
        print(f"relvit: removed stale lock {_lock} (its snakemake is gone)", file=sys.stderr)


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/configs.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/classify.smk"
include: "workflow/rules/detect.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/compare.smk"


# The jobs' execution settings (relvit.execution): written for the jobs this snakemake is about
# to run (onstart: not in a dry run, --lint or --dag; never in the jobs' own snakemake processes;
# a second snakemake on other targets leaves this one's alone), read by each job when it starts,
# and tracked by no rule, so that changing them reruns nothing. Without the hook (--no-hooks) the
# jobs would read missing or stale settings.
if workflow.is_main_process and "--no-hooks" in sys.argv:
    raise ValueError("relvit: --no-hooks skips the onstart hook that writes the jobs' execution "
                     f"settings ({RESULTS}/execution/): run without it")


onstart:
    from relvit.execution import execution_files, write_execution_files

    _jobs = list(workflow.dag.needrun_jobs())
    _runs = {planned(job.wildcards).run_id for job in _jobs if job.rule.name in TRAINING_STAGES}
    _offline = (DATA.get("offline", False) if any(job.rule.name == "prepare_data" for job in _jobs)
                else None)
    _written = write_execution_files(execution_files(
        RESULTS, {run_id: RUNS[run_id].config for run_id in sorted(_runs)}, _offline, DATA_ROOT))
    if _written:
        print(f"relvit: wrote {len(_written)} execution settings files under {RESULTS}/execution",
              file=sys.stderr)


rule all:
    input:
        # every run's own files too: Snakemake remakes no missing file that only feeds files
        # which are there, and a run folder moved away (a failed run retried) had stayed away
        [run_config_file(run_id) for run_id in RUNS],
        [metrics_file(run_id) for run_id in RUNS],
        rules.table1.output if TABLE1_RUNS else [],
        rules.detection_tables.output if DETECTION_TABLES else [],
        rules.compare.output if RUNS else [],
        rules.compare_verdict.output if RUNS and COMPARE.get("fail", True) else [],
        rules.figures.output if RUNS else [],
    default_target: True


onsuccess:
    # where to look, once every requested target is there (not after a dry run)
    if workflow.is_main_process:
        print(f"relvit: every requested target is done; the pipeline's tables are in "
              f"{RESULTS}/tables/ (Markdown and LaTeX; compare.md puts every cell beside the "
              f"paper's number), its figures in {RESULTS}/figures/", file=sys.stderr)


onerror:
    if workflow.is_main_process:
        print("relvit: a job failed or was stopped (Snakemake names its log above). Finished "
              "runs are kept: once the cause is fixed, the same command resumes every unfinished "
              "run from its last finished epoch", file=sys.stderr)
