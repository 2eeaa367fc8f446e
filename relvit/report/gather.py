"""Read every finished run directory (its metrics.json) into one tidy pandas DataFrame."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

COLUMNS = ["run", "dataset", "dataset_title", "backbone", "backbone_label", "mode", "label",
           "seed", "best_top1", "last_top1", "pretext_rel_acc", "pretext_pos_acc",
           "pretext_positions", "wall_time_s", "peak_memory_mb", "git_sha"]


def _percent(fraction: float | None) -> float | None:
    return None if fraction is None else 100 * fraction


def metrics_files(sources: list[str | Path]) -> list[Path]:
    """metrics.json files given directly, or found under given directories."""
    files: list[Path] = []
    for source in map(Path, sources):
        if source.is_dir():
            files += sorted(source.rglob("metrics.json"))
        elif source.is_file():
            files.append(source)
        else:
            raise FileNotFoundError(f"{source}: no such metrics file or run directory")
    return files


def gather_runs(sources: list[str | Path]) -> pd.DataFrame:
    """One row per metrics.json; a malformed file is an error naming it."""
    rows = []
    for path in metrics_files(sources):
        try:
            metrics = json.loads(path.read_text())
            last = metrics.get("last", {})
            rows.append({"run": str(path.parent),
                         **{key: metrics.get(key) for key in COLUMNS[1:]},
                         # was the pretext task learned? held-out, last epoch, in %
                         "pretext_rel_acc": _percent(last.get("val_acc_rel")),
                         "pretext_pos_acc": _percent(last.get("val_acc_pos"))})
        except (json.JSONDecodeError, AttributeError) as err:
            raise ValueError(f"{path}: not a metrics file ({err})") from err
    return pd.DataFrame(rows, columns=COLUMNS)
