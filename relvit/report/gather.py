"""Read run directories into tidy pandas DataFrames: finished runs (metrics.json) and planned
runs (their run configs, so a table can show cells that have not run yet)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import yaml

from relvit.config import is_whole_number
from relvit.data.registry import DATASETS
from relvit.layout import EXECUTION, METRICS, REPLACED, RUNS
from relvit.report.numbers import PRETEXT_NUMBERS, TOP1_NUMBERS, reported_numbers
from relvit.report.provenance import execution_text, is_stale, read_metrics, recorded_hash

log = logging.getLogger("relvit")

KEYS = ["dataset", "dataset_title", "backbone_label", "mode", "label", "seed"]
NUMBERS = [*TOP1_NUMBERS, *PRETEXT_NUMBERS]
COLUMNS = ["run", *KEYS, *NUMBERS, "pretext_positions", "wall_time_s", "peak_memory_mb",
           "git_sha", "device", "world_size", "execution", "image", "config_hash", "stale",
           "status", "error", "resized"]


def find_files(sources: list[str | Path], pattern: str, skip: tuple[str, ...] = ()
               ) -> list[Path]:
    """Files given directly that match `pattern`, or found under given directories (skipping
    run directories moved aside by --replace-changed, `<dir>.replaced-<time>`, folders named
    in `skip`, and, with a warning, another tier's results folder inside a given one: the CI
    tier's results/ci in the smoke tier's results/, whose runs would join its cells)."""
    files: list[Path] = []
    for source in map(Path, sources):
        if source.is_dir():
            tiers = sorted(runs.parent for runs in source.rglob(RUNS)
                           if runs.is_dir() and runs.parent != source)
            for tier in tiers:
                log.warning("%s: another tier's results folder (it holds %s/) inside %s, left "
                            "out: give it on its own", tier, RUNS, source)
            files += sorted(f for f in source.rglob(pattern)
                            if not any(REPLACED in part or part in skip
                                       for part in f.relative_to(source).parent.parts)
                            and not any(f.is_relative_to(tier) for tier in tiers))
        elif source.is_file():
            if source.match(pattern):
                files.append(source)
        else:
            raise FileNotFoundError(f"{source}: no such metrics file, run config or directory")
    return files


def _identity_problems(metrics: dict) -> list[str]:
    """What is mistyped among the keys that place a run in Table 1, or missing in the record of
    a run of one of its modes (a detection run's are read from the detection plan)."""
    required = metrics.get("mode") not in (None, "detect")
    problems = []
    name = ("a name", lambda v: isinstance(v, str))
    for key, kind, fits in (("seed", "a whole number", is_whole_number),
                            ("dataset", "a dataset of relvit/data/registry.py",
                             lambda v: isinstance(v, str) and v in DATASETS),
                            ("mode", *name), ("dataset_title", *name),
                            ("backbone_label", *name)):
        if (key in metrics or required) and not fits(metrics.get(key)):
            problems.append(f"{key}: expected {kind}, got {metrics.get(key)!r}")
    return problems


def gather_runs(sources: list[str | Path]) -> pd.DataFrame:
    """One row per metrics.json, with its provenance (relvit.report.provenance: the config hash
    and whether the run is stale); a malformed file is an error naming it."""
    for source in map(Path, sources):  # another file (best.pt, finished.json) had been left out
        if source.is_file() and not (source.match(METRICS) or source.match("*.yaml")):
            raise ValueError(f"{source}: neither a run's {METRICS} nor a run config (*.yaml)")
    rows = []
    for path in find_files(sources, METRICS):
        try:
            rows.append(_run_row(path))
        except FileNotFoundError:  # a run moved aside (--replace-changed) since it was listed
            log.warning("%s: gone since the folder was listed; left out", path)
    return pd.DataFrame(rows, columns=COLUMNS)


def _run_row(path: Path) -> dict:
    """`gather_runs`' row of one metrics.json."""
    metrics = read_metrics(path)
    problems = _identity_problems(metrics)
    if problems:
        raise ValueError(f"{path}: not a run's metrics file ({'; '.join(problems)})")
    try:
        numbers = reported_numbers(metrics)
        return {"run": str(path.parent),
                **{key: metrics.get(key) for key in COLUMNS[1:]},
                **{key: numbers[key] for key in NUMBERS},
                "config_hash": recorded_hash(metrics, path),
                "execution": execution_text(metrics.get("execution")),
                "resized": (metrics.get("data_copy") or {}).get("shorter_side"),
                "stale": is_stale(metrics, path)}
    except AttributeError as err:
        raise ValueError(f"{path}: not a metrics file ({err})") from err


def gather_planned(sources: list[str | Path]) -> pd.DataFrame:
    """One row per run config (*.yaml) found: what a table should have a cell for."""
    from relvit.config import ConfigError, config_from_dict, parse_yaml
    from relvit.geometry import run_identity

    rows = []
    # the workflow's execution files (relvit.execution) are not run configs
    for path in find_files(sources, "*.yaml", skip=(EXECUTION,)):
        try:
            cfg = config_from_dict(parse_yaml(path.read_text()) or {}, source=str(path))
        except (ConfigError, yaml.YAMLError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not a run config ({err})") from err
        identity = run_identity(cfg)
        rows.append({key: identity[key] for key in KEYS})
    return pd.DataFrame(rows, columns=KEYS).drop_duplicates()


PAPER_COLUMNS = ("table", "dataset", "backbone", "method", "upstream", "permutation",
                 "megapatch", "metric", "value", "std")


def read_paper(path: str | Path) -> pd.DataFrame:
    """The paper's Tables 1-3 as data (results/paper/tables.csv); ValueError naming the file
    when it is missing or lacks a column (another CSV given as --paper)."""
    if not Path(path).is_file():
        raise ValueError(f"{path}: the paper's tables not found (a path from the repository's "
                         "root: run from there, or pass --paper)")
    try:
        paper = pd.read_csv(path)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ValueError(f"{path}: not the paper's tables ({err})") from err
    missing = [column for column in PAPER_COLUMNS if column not in paper.columns]
    if missing:
        raise ValueError(f"{path}: not the paper's tables (no column {', '.join(missing)}; "
                         f"expected {', '.join(PAPER_COLUMNS)})")
    return paper


def load_paper_table1(path: str | Path) -> pd.DataFrame:
    """The paper's Table 1 (results/paper/tables.csv): dataset, backbone, method, value, std."""
    paper = read_paper(path)
    return paper[(paper["table"] == 1) & (paper["metric"] == "top1")]
