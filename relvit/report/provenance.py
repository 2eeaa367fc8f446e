"""Where a reported number came from, as the reports see it: the run config a run was planned
from, whether the run is stale (its config changed after it ran), and a cell's provenance
summed up over its seeds.

The workflow's layout (workflow/rules/common.smk): run `<id>` writes `<results>/runs/<id>/` and
is planned from `<results>/configs/<id>.yaml`.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pandas as pd
import yaml

from relvit.data.download import file_digest
from relvit.layout import CONFIGS, METRICS, RUN_CONFIG, RUNS

STALE = "[stale]"
STALE_NOTE = (f"{STALE}: a run of this cell was made with another run config than the one the "
              "workflow now plans (`results/configs/<run>.yaml` changed after it ran), or started "
              "from a pretrain run that is stale or was redone since: rerun the workflow; "
              "`relvit compare` names the runs.")


def run_id(metrics_path: str | Path) -> str | None:
    """`<id>` of `<results>/runs/<id>/metrics.json`, or None outside the workflow's layout."""
    parts = Path(metrics_path).parent.parts
    if RUNS not in parts[:-1]:
        return None
    at = len(parts) - 1 - parts[::-1].index(RUNS)
    return "/".join(parts[at + 1:])


def planned_config(metrics_path: str | Path) -> Path | None:
    """`<results>/configs/<id>.yaml` of a run, where it exists."""
    run = run_id(metrics_path)
    if run is None:
        return None
    runs_dir = Path(metrics_path).parent.parents[len(Path(run).parts) - 1]
    path = runs_dir.parent / CONFIGS / f"{run}.yaml"
    return path if path.is_file() else None


def file_config_hash(path: str | Path) -> str:
    """The config hash (relvit.train.provenance.config_hash) of a run config file, resolved."""
    from relvit.config import ConfigError, config_from_dict, parse_yaml
    from relvit.train.provenance import config_hash

    try:
        cfg = config_from_dict(parse_yaml(Path(path).read_text()) or {}, source=str(path))
    except (ConfigError, yaml.YAMLError) as err:
        raise ValueError(f"{path}: not a run config ({err})") from err
    return config_hash(cfg.to_dict())


def recorded_hash(metrics: dict, metrics_path: str | Path) -> str | None:
    """A run's config hash: of the resolved config.yaml the run wrote beside it, hashed as now
    (a key added to HASH_EXCLUDES since, such as data.root, does not make it stale), else the
    hash metrics.json recorded."""
    written = Path(metrics_path).parent / RUN_CONFIG
    recorded = str(metrics["config_hash"]) if metrics.get("config_hash") else None
    if written.is_file():
        try:
            return file_config_hash(written)
        except ValueError:  # a damaged config.yaml: the recorded hash, where there is one
            if recorded is None:
                raise
    return recorded


def is_stale(metrics: dict, metrics_path: str | Path) -> bool | None:
    """True when the run's config hash differs from its planned run config's, or when the run
    started from a checkpoint whose run is stale or was redone since (`_upstream_changed`);
    None when there is nothing to compare (no planned config, no recorded hash)."""
    planned = planned_config(metrics_path)
    recorded = recorded_hash(metrics, metrics_path)
    if planned is None or recorded is None:
        return None
    return recorded != file_config_hash(planned) or _upstream_changed(metrics)


def _upstream_changed(metrics: dict) -> bool:
    """Whether the checkpoint a finetune or detect run started from (`init_checkpoint`, a path
    from the workflow's folder) belongs to a run that is stale now, or is no longer the file the
    run started from (`init_sha256`: the pretrain run was redone). False where the checkpoint's
    run is not there to ask."""
    init = metrics.get("init_checkpoint")
    upstream = Path(init).parent / METRICS if init else None
    if upstream is None or not upstream.is_file():
        return False
    if is_stale(read_metrics(upstream), upstream):
        return True
    best, saved = Path(init), metrics.get("init_sha256")
    if not saved or not best.is_file():
        return False
    stat = best.stat()
    return _sha256(str(best.resolve()), stat.st_mtime_ns, stat.st_size) != saved


@functools.lru_cache(maxsize=256)
def _sha256(path: str, mtime_ns: int, size: int) -> str:
    """sha256 of a file, once per version of it (its time and size in the key): the reports ask
    for each finetune's pretrain checkpoint several times."""
    return file_digest(Path(path), "sha256")


def read_metrics(path: str | Path) -> dict:
    """A metrics.json as a dict; a malformed file is an error naming it."""
    try:
        metrics = json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as err:  # JSON, or bytes that are no UTF-8
        raise ValueError(f"{path}: not a metrics file ({err})") from err
    if not isinstance(metrics, dict):
        raise ValueError(f"{path}: not a metrics file (a JSON object expected)")
    return metrics


def _distinct(values: pd.Series, width: int | None = None) -> str:
    seen = [str(v)[:width] if width else str(v) for v in values.dropna() if str(v)]
    return "; ".join(dict.fromkeys(seen)) or "—"


def resized_sides(runs: pd.DataFrame) -> str:
    """The shorter sides of the resized copies these runs (rows of gather_runs) read, e.g.
    "256" ("": every run read the dataset's own files)."""
    return "/".join(str(int(side)) for side in sorted(runs["resized"].dropna().unique()))


# what summarize() says of a cell, in compare.csv's order
PROVENANCE_KEYS = ("seeds", "config_hash", "git_sha", "image", "device", "processes",
                   "execution", "wall_time_s", "peak_memory_mb", "stale", "resized")
# the execution keys that can move a run's numbers (by rounding), outside its config hash
NUMERIC_EXECUTION = ("precision", "compile", "compile_mode", "compile_step")


def execution_text(execution: object) -> str | None:
    """A run's recorded `execution` settings that can move its numbers, as one string."""
    if not isinstance(execution, dict):
        return None
    return " ".join(f"{key}={execution[key]}" for key in NUMERIC_EXECUTION if key in execution)


def summarize(runs: pd.DataFrame) -> dict[str, str]:
    """One cell's provenance over its seeds (rows of gather_runs): the distinct config hashes,
    commits, images, devices, process counts and execution settings, the seeds, the total wall
    time, the largest peak memory, the stale runs and the resized copies read."""
    if runs.empty:
        return {key: "" if key in ("stale", "resized") else "—" for key in PROVENANCE_KEYS}
    wall, peak = runs["wall_time_s"].dropna(), runs["peak_memory_mb"].dropna()
    stale_runs = runs[runs["stale"].fillna(False).astype(bool)]
    return {
        "seeds": ", ".join(str(int(s)) for s in sorted(runs["seed"].dropna())),
        "config_hash": _distinct(runs["config_hash"]),
        "git_sha": _distinct(runs["git_sha"]),
        "image": _distinct(runs["image"].fillna("none")),
        "device": _distinct(runs["device"]),
        "processes": _distinct(runs["world_size"].dropna().astype(int)),
        "execution": _distinct(runs["execution"]),
        "wall_time_s": f"{wall.sum():.0f}" if len(wall) else "—",
        "peak_memory_mb": f"{peak.max():.0f}" if len(peak) else "—",
        "stale": ", ".join(str(run) for run in stale_runs["run"]),
        "resized": resized_sides(runs),
    }
