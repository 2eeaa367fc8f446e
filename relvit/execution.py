"""The workflow's execution files: how its jobs run (relvit.config.EXECUTION_KEYS per run, and
prepare_data's `data.offline`), kept out of what Snakemake tracks.

A run config under <results>/configs/ (<results>: the workflow config's `results` folder) holds
what a run computes; a change to it reruns the run. Its execution keys (device, compile,
data.workers, ...) go to <results>/execution/<run>.yaml instead, written when snakemake starts
executing (the Snakefile's `onstart`, never in a dry run), only for the jobs that snakemake runs,
and read by the job when it starts (`--execution`). Snakemake tracks neither the file nor its
content, so changing an execution key reruns no job: the runs not yet finished use the new
settings, the finished ones stay as they are (a run resumes across execution keys anyway).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from relvit.atomic import atomic_write_text
from relvit.config import EXECUTION_KEYS, execution_settings, without_keys
from relvit.layout import CONFIGS, EXECUTION

# prepare_data's file sits in the data root, not in a tier's results folder: tiers that share
# the data root share its prepare_data jobs, and a path that changed with the tier reran them
# (a changed param) and then every training job of the other tier (a newer ready marker)
PREPARE_DATA = ".relvit-prepare-data.yaml"


def computation(config: dict[str, Any]) -> dict[str, Any]:
    """A planned run's config without its execution keys: <results>/configs/<run>.yaml."""
    return without_keys(config, EXECUTION_KEYS)


def execution_files(results: str, configs: Mapping[str, dict[str, Any]], offline: bool | None,
                    data_root: str) -> dict[str, dict[str, Any]]:
    """The execution files of the jobs about to run (path -> settings by dotted key): one per
    run (`configs`: run id -> its resolved config) and prepare_data's in `data_root`
    (`offline`; None: no prepare_data job)."""
    files = {run_file(results, run_id): execution_settings(config)
             for run_id, config in configs.items()}
    if offline is not None:
        files[prepare_data_file(data_root)] = {"data.offline": offline}
    return files


def run_file(results: str, run_id: str) -> str:
    return f"{results}/{EXECUTION}/{run_id}.yaml"


def execution_file_of(config_path: str | Path) -> Path | None:
    """The execution file the workflow wrote for a run config <results>/configs/<run>.yaml,
    if there is one: <results>/execution/<run>.yaml."""
    path = Path(config_path)
    parts = path.parts
    if CONFIGS not in parts[:-1]:
        return None
    at = len(parts) - 1 - parts[:-1][::-1].index(CONFIGS) - 1  # the last configs folder
    candidate = Path(*parts[:at], EXECUTION, *parts[at + 1:])
    return candidate if candidate.is_file() else None


def prepare_data_file(data_root: str) -> str:
    return f"{data_root}/{PREPARE_DATA}"


def write_execution_files(files: Mapping[str, dict[str, Any]]) -> list[str]:
    """Write the files whose content changed (atomically); returns their paths."""
    written = []
    for path, settings in files.items():
        text = yaml.safe_dump(settings, sort_keys=False)
        target = Path(path)
        try:
            if target.read_text(encoding="utf-8") == text:
                continue
        except (OSError, UnicodeDecodeError):
            pass  # missing or unreadable: written anew
        atomic_write_text(text, target)
        written.append(path)
    return written
