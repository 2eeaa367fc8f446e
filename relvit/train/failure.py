"""A failed run as a result: metrics.json with "status": "failed", so the tables show the cell.

`relvit <mode> --record-failure` (what the workflow's rules pass) writes this record when a run
stops for a reason that is a result of the method rather than of the set-up: a non-finite loss
(the epoch and step are recorded), or a pretrain run it starts from that failed. The run
directory keeps its last good last.pt / best.pt. Everything else (missing data, a bad config, a
full disk) still fails the job.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from relvit.atomic import atomic_write_text
from relvit.config import RunConfig
from relvit.layout import HISTORY, METRICS

FAILED = "failed"


def is_failed(metrics: dict[str, Any]) -> bool:
    """Whether a metrics.json records a failed run."""
    return metrics.get("status") == FAILED


def failed_metrics(cfg: RunConfig, out_dir: Path, error: BaseException) -> dict[str, Any]:
    """The metrics.json of a failed run: what identifies its table cell, the error and where."""
    from relvit.data.loading import dataset_folder
    from relvit.data.registry import get_dataset
    from relvit.geometry import run_identity
    from relvit.train import provenance

    failed_epoch = getattr(error, "epoch", None)
    history = Path(out_dir) / HISTORY
    if failed_epoch is not None:  # every epoch before it is in last.pt (history.csv may lag)
        epochs_done = failed_epoch - 1
    else:
        epochs_done = max(len(history.read_text().splitlines()) - 1, 0) if history.is_file() else 0
    return {
        "status": FAILED, "error": str(error), "error_type": type(error).__name__,
        "failed_epoch": failed_epoch, "failed_step": getattr(error, "step", None),
        "epochs_completed": epochs_done,
        **run_identity(cfg), "init_checkpoint": cfg.init_checkpoint,
        "data_copy": provenance.data_copy(dataset_folder(get_dataset(cfg.data.name), cfg.data)),
        "versions": provenance.versions(), "git_sha": provenance.git_sha(),
        **provenance.run_provenance(cfg.to_dict()),
    }


def record_failure(cfg: RunConfig, out_dir: Path, error: BaseException) -> Path | None:
    """Write the failed run's metrics.json (rank 0 only, under torchrun); returns its path."""
    if os.environ.get("RANK", "0") != "0":
        return None
    path = Path(out_dir) / METRICS
    atomic_write_text(json.dumps(failed_metrics(cfg, out_dir, error), indent=2) + "\n", path)
    return path
