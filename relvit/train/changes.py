"""Whose run a run folder holds: how its earlier contents differ from the run asked for now.

A folder's resume state (last.pt) holds the config it was trained with; a finished run's record
(`finished.read_finished`) holds its config's hash; a start that left neither wrote its
config.yaml. A folder of another config is refused, or with --replace-changed moved aside to
`<dir>.replaced-<time>` (never deleted), and a finished run of this very config moved aside
earlier is moved back.
"""

from __future__ import annotations

import glob
import logging
import time
from pathlib import Path
from typing import Any

import yaml

from relvit.config import EXECUTION_KEYS, RunConfig, without_keys
from relvit.layout import BEST, RUN_CONFIG, replaced_name, replaced_order
from relvit.train import distributed, provenance
from relvit.train.checkpoint import file_digest, load_checkpoint
from relvit.train.errors import CheckpointError
from relvit.train.finished import read_finished, record_changes

log = logging.getLogger("relvit")


def folder_changes(cfg: RunConfig, out_dir: Path, state: dict[str, Any] | None,
                   record: dict[str, Any] | None) -> tuple[list[str], dict[str, Any] | None]:
    """How the run in `out_dir` (its resume `state`, its finished `record`, else an earlier
    start's config.yaml) differs from `cfg`'s, and the finished record that stands: a record
    hashed before HASH_EXCLUDES grew is dropped when last.pt is there (the run is finished
    again and re-recorded), or rehashed (`rehashed`) when it is not."""
    if state:  # last.pt says what the run was (its init checkpoint checked once, here)
        diffs = config_changes(cfg, state["config"]) + init_changes(cfg, state)
        if record and record["config_hash"] != provenance.config_hash(cfg.to_dict()):
            record = None
        return diffs, record
    if record:  # a finished run without resume states: its record says what it was
        record = rehashed(cfg, out_dir, record)
        return finished_changes(cfg, record), record
    # nothing to resume: an earlier start's config.yaml says whose folder it is
    return earlier_start_changes(cfg, out_dir), None


def config_changes(cfg: RunConfig, saved: dict[str, Any]) -> list[str]:
    """How a saved config (a checkpoint's, config.yaml's) differs from `cfg` (EXECUTION_KEYS
    aside). Whether the run starts from an `init_checkpoint` is its config's; which file, that
    file's digest (`init_changes`): `./a` and `a`, or a copy, are the same start."""
    saved = without_keys(saved, EXECUTION_KEYS)
    now = without_keys(cfg.to_dict(), EXECUTION_KEYS)
    if saved.get("init_checkpoint") and now.get("init_checkpoint"):
        saved["init_checkpoint"] = now["init_checkpoint"]
    return _dict_diff(saved, now)


def init_changes(cfg: RunConfig, state: dict[str, Any]) -> list[str]:
    """A finetune or detect run resumed from last.pt: whether `init_checkpoint` is still the
    file it started from (a redone pretrain run writes another best.pt at the same path)."""
    saved, path = state.get("init_sha256"), cfg.init_checkpoint
    if not saved or not path or not Path(path).is_file():
        return []  # a last.pt from before the check, or no file to compare: the run goes on
    if file_digest(path) == saved:
        return []
    return [f"init_checkpoint {path}: another file than the one it started from (the run "
            "that writes it was redone)"]


def earlier_start_changes(cfg: RunConfig, out_dir: Path) -> list[str]:
    """A folder without resume state or record: how the config.yaml an earlier start wrote
    differs from `cfg` (another run's folder is not trained over); none without one."""
    path = out_dir / RUN_CONFIG
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError, yaml.YAMLError) as err:
        log.warning("%s cannot be read (%s): not compared with this run's config", path, err)
        return []
    if not isinstance(saved, dict):
        return []
    return [f"{change} ({RUN_CONFIG})" for change in config_changes(cfg, saved)]


def rehashed(cfg: RunConfig, out_dir: Path, record: dict[str, Any]) -> dict[str, Any]:
    """A finished run's record with `cfg`'s config hash when its own was taken before
    HASH_EXCLUDES grew (data.workers, data.root) and the config.yaml the run wrote is `cfg`:
    the finished run is not another config's, to be trained again."""
    current = provenance.config_hash(cfg.to_dict())
    if (record["config_hash"] == current or not (out_dir / RUN_CONFIG).is_file()
            or earlier_start_changes(cfg, out_dir)):
        return record
    return {**record, "config_hash": current}


def finished_changes(cfg: RunConfig, record: dict[str, Any]) -> list[str]:
    """How a finished run's record differs from `cfg`'s run (`finished.record_changes`)."""
    path = cfg.init_checkpoint
    digest = file_digest(path) if path and Path(path).is_file() else None
    return record_changes(record, provenance.config_hash(cfg.to_dict()), digest)


def move_aside(out_dir: Path, changes: list[str]) -> Path:
    """Move a run folder of another config or start aside (--replace-changed), saying why;
    returns where to: `<dir>.replaced-<time>`, numbered when a folder of that name is there
    already (two replacements within a second)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside, n = out_dir.with_name(replaced_name(out_dir.name, stamp)), 1
    while aside.exists():
        n += 1
        aside = out_dir.with_name(replaced_name(out_dir.name, f"{stamp}-{n}"))
    log.warning("%s was made with another config or start (%s); moved to %s", out_dir,
                "; ".join(changes[:3]), aside)
    out_dir.rename(aside)
    return aside


def take_back_replaced(cfg: RunConfig, out_dir: Path) -> bool:
    """With --replace-changed, before training anew: a folder the run's was moved aside to
    (`<dir>.replaced-<time>`, the newest first) that holds this very run, finished (its
    record's config hash and init checkpoint, and a readable best.pt), is moved back, so
    that a config edit undone trains nothing again. Every rank looks before rank 0 moves."""
    distributed.barrier()  # rank 0's move aside is done before any rank looks
    found = None
    # a folder there (a start that left no resume state) is not moved over
    pattern = replaced_name(glob.escape(out_dir.name), "*")
    asides = [] if out_dir.exists() else out_dir.parent.glob(pattern)
    for aside in sorted(asides, key=lambda path: replaced_order(path.name), reverse=True):
        record = read_finished(aside)
        if record is None or finished_changes(cfg, record):
            continue
        try:
            load_checkpoint(aside / BEST)  # the CRC of every record
        except CheckpointError:
            continue
        found = aside
        break
    distributed.barrier()  # every rank has looked
    if found is not None and distributed.is_main():
        log.warning("%s: this run finished before in %s, which is moved back (nothing is "
                    "trained again)", out_dir, found)
        found.rename(out_dir)
    distributed.barrier()
    return found is not None


def _dict_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """The keys (dotted) whose values differ between two nested dicts, as `key: a -> b`."""
    out = []
    for key in sorted(set(a) | set(b)):
        path = f"{prefix}{key}"
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _dict_diff(x, y, path + ".")
        elif x != y:
            out.append(f"{path}: {x!r} -> {y!r}")
    return out
