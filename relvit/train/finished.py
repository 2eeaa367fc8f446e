"""A finished run's record, `finished.json`, kept beside `metrics.json`.

The workflow declares metrics.json as a training rule's output, so Snakemake deletes it before
a job that reruns a finished run (an execution key changed, `--forcerun`), and a directory that
`--replace-changed` moves aside would lose it. finished.json holds the same record. A rerun of a
finished run restores metrics.json from it, with the provenance of the process that trained the
run (its commit, device, times), instead of stamping the current one's; it needs neither last.pt
nor last.prev.pt, so damaged resume states no longer start a finished run over.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from relvit.layout import FINISHED, METRICS
from relvit.train.failure import FAILED

log = logging.getLogger("relvit")


def read_finished(out_dir: Path) -> dict[str, Any] | None:
    """The record of the run finished in `out_dir`: finished.json, else a finished run's
    metrics.json (a run from before finished.json, or one whose finished.json is damaged or
    gone), or None (neither, or unreadable: logged)."""
    for name in (FINISHED, METRICS):
        path = Path(out_dir) / name
        if not path.is_file():
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            log.warning("%s cannot be read (%s): not taken as the run's record", path, err)
            continue
        if not isinstance(record, dict) or "config_hash" not in record:
            log.warning("%s is not a finished run's record: not taken as one", path)
        elif record.get("status") != FAILED:  # a failed run's metrics.json is no result
            return record
    return None


def record_changes(record: dict[str, Any], config_hash: str, init_digest: str | None
                   ) -> list[str]:
    """How a finished run's record differs from the run asked for now: its config (the hash,
    execution keys aside) and the init checkpoint's content (`init_digest`, None: no file)."""
    changes = []
    if record["config_hash"] != config_hash:
        changes.append(f"config hash {record['config_hash']} -> {config_hash} ({FINISHED})")
    saved = record.get("init_sha256")
    if saved and init_digest and saved != init_digest:
        changes.append("init_checkpoint: another file than the one the finished run started "
                       "from (the run that writes it was redone)")
    return changes
