"""Atomic checkpoint files and loading a pretrained backbone into a new model."""

from __future__ import annotations

import json
import logging
import os
import re
import time
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from relvit.atomic import atomic_write, previous_path, remove_stale_temps
from relvit.data.download import file_digest as checksum
from relvit.layout import LAST, METRICS
from relvit.train.errors import CheckpointAccessError, CheckpointError, UpstreamFailedError
from relvit.train.failure import is_failed

__all__ = ["CheckpointError", "UpstreamFailedError", "atomic_save", "load_checkpoint",
           "load_resume_state", "load_backbone"]

log = logging.getLogger("relvit")

# Backbone weights a finetune may leave at their fresh init: the ViT positional embedding, absent
# from a pretrain run without positional embeddings (method spec §3: it is never trained upstream).
MAY_BE_MISSING = ("vit.pos_embed",)
# what last.pt holds besides the weights (Run._save_last)
RESUME_KEYS = frozenset({"model", "optimizer", "history", "best", "elapsed", "epoch", "config"})
MSDOS_FOLDER = 0x10  # the folder bit of a zip record's external attributes


def file_digest(path: str | Path) -> str:
    """sha256 of a file (a checkpoint a run started from: which file it was, whatever its
    path)."""
    return checksum(Path(path), "sha256")


def atomic_save(obj: Any, path: Path, keep_previous: bool = False) -> None:
    """torch.save atomically (relvit.atomic): a temporary file, fsync, one rename over `path`.

    `keep_previous` keeps the replaced file as `<stem>.prev<suffix>` (last.pt -> last.prev.pt),
    the fallback of load_resume_state.
    """
    atomic_write(path, lambda handle: torch.save(obj, handle), binary=True,
                 keep_previous=keep_previous)


def _load_failure(err: Exception) -> str:
    """What torch.load found wrong with a file, without its weights_only refusal's advice to
    load the file unsafely (torch words the refusal in more than one way)."""
    text = str(err)
    if "Weights only load failed" in text or "WeightsUnpickler error" in text:
        # the paragraphs that say what was refused: not the advice, not the documentation link
        reasons = [" ".join(part.replace("WeightsUnpickler error:", "").split())
                   for part in re.split(r"\n\s*\n", text)
                   if not re.search(r"Weights only load failed|Check the documentation", part)]
        reason = "; ".join(r for r in reasons if r) or "pickled objects other than tensors"
        return f"not a checkpoint of plain tensors and data, so not loaded (torch.load: {reason})"
    return text.splitlines()[0] if text else type(err).__name__


# where a zip archive's end-of-directory record lies: its 22 bytes and a comment of up to 65,535
ZIP_TAIL_BYTES = 22 + 65_535


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint written by this package (tensors and plain data only, never code).

    CheckpointError for a missing, truncated or corrupt file: the zip container's CRC-32 of
    every record is checked first (torch.load alone reads a flipped byte in a tensor silently).
    CheckpointAccessError (an OSError) for a file that cannot be opened or read: permissions or
    the disk, not its content (`zipfile.is_zipfile` alone says False for those).
    """
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise CheckpointError(f"checkpoint {path} {what}")
    try:
        with open(path, "rb") as handle:
            # the start and the zip's directory at the end, read here: `is_zipfile` would take
            # a failing read for a file that is no zip archive
            handle.read(4)
            handle.seek(max(path.stat().st_size - ZIP_TAIL_BYTES, 0))
            handle.read()
            is_zip = zipfile.is_zipfile(handle)
    except OSError as err:
        raise CheckpointAccessError(path, err) from err
    if not is_zip:  # torch.save's format since torch 1.6, and all we write
        raise CheckpointError(f"checkpoint {path} cannot be read: not a torch checkpoint (no "
                              "zip archive: truncated, empty, or another kind of file)")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            # a record marked as a folder (one flipped bit of its attributes, outside the CRC)
            # is read by torch as empty: the tensor would hold uninitialised memory
            folders = [info.filename for info in archive.infolist()
                       if info.external_attr & MSDOS_FOLDER or info.filename.endswith("/")]
        if bad is not None:
            raise CheckpointError(f"checkpoint {path} is corrupt: record {bad} fails its "
                                  "CRC-32 check")
        if folders:
            raise CheckpointError(f"checkpoint {path} is corrupt: record {folders[0]} is "
                                  "marked as a folder")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except OSError as err:  # reading failed, not the content
        raise CheckpointAccessError(path, err) from err
    except Exception as err:  # truncated, corrupt or foreign files; pickled code is refused
        raise CheckpointError(f"checkpoint {path} cannot be read: {_load_failure(err)}") from err
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"checkpoint {path} is not a relvit checkpoint (no 'model' entry)")
    return state


def load_resume_state(out_dir: Path, move_aside: bool = True) -> dict[str, Any] | None:
    """The state a run directory resumes from: last.pt, else last.prev.pt, else None (start over).

    A checkpoint that cannot be read (truncated, corrupt, not a resume state) is never loaded:
    it is moved aside to `<name>.corrupt-<time>` (with `move_aside`; never deleted) with a log
    line saying what the run falls back to. Stale temporary files of a killed write are removed.
    """
    out_dir = Path(out_dir)
    if move_aside:
        remove_stale_temps(out_dir)
    last = out_dir / LAST
    candidates = [last, previous_path(last)]
    for i, path in enumerate(candidates):
        if not path.exists():
            continue
        try:
            state = load_checkpoint(path)
            missing = sorted(RESUME_KEYS - set(state))
            if missing:
                raise CheckpointError(f"checkpoint {path} is not a resume state (lacks "
                                      f"{', '.join(missing)})")
            if i:
                log.warning("resuming from %s, the checkpoint before the damaged %s", path,
                            last.name)
            return state
        except CheckpointError as err:
            later = [p.name for p in candidates[i + 1:] if p.exists()]
            fallback = f"falling back to {later[0]}" if later else "starting the run over"
            if move_aside:
                aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
                os.replace(path, aside)
                log.warning("%s; moved it to %s, %s", err, aside.name, fallback)
            else:
                log.warning("%s; %s", err, fallback)
    return None


def check_upstream(path: Path) -> None:
    """UpstreamFailedError when the run directory of checkpoint `path` records a failed run
    (metrics.json with "status": "failed", see relvit.train.failure); a warning when it holds a
    run that has not finished."""
    metrics = Path(path).parent / METRICS
    try:
        record = json.loads(metrics.read_text())
    except FileNotFoundError:  # no record: a checkpoint by hand, or a run before its end
        if (Path(path).parent / LAST).is_file():
            log.warning("checkpoint %s: its run has not finished (%s beside it, no %s: still "
                        "training, or stopped); this run starts from that run's best epoch so "
                        "far", path, LAST, METRICS)
        return
    except (OSError, ValueError) as err:  # a damaged record may be a failure's
        raise CheckpointError(f"checkpoint {path}: its run's {metrics} cannot be read ({err}), "
                              "so whether that run finished or failed is unknown; rerun it "
                              "(it resumes) to write the record again") from None
    if isinstance(record, dict) and is_failed(record):
        raise UpstreamFailedError(f"checkpoint {path}: its run failed ({record.get('error')}), "
                                  "so its weights are half-trained; fix and rerun that run first")
    if not Path(path).exists():  # its run finished, and the file went later (by hand)
        raise CheckpointError(f"checkpoint {path} does not exist, though its run finished; "
                              f"move {Path(path).parent} away and run it again (snakemake "
                              "does) to train it anew")


def attention_heads(model: dict[str, Any], backbone: str) -> int:
    """The attention heads of a run config's `model` block (None: the backbone preset's)."""
    from relvit.models.specs import get_backbone_spec

    return model.get("num_heads") or get_backbone_spec(backbone).num_heads


def load_backbone(backbone: nn.Module, path: Path, expected_backbone: str,
                  num_heads: int | None = None) -> list[str]:
    """Load the backbone weights of a `best.pt` into `backbone`; returns the keys left fresh.

    Refuses a checkpoint from another backbone, or with missing, unexpected or differently shaped
    tensors (other than those in MAY_BE_MISSING), naming them, one trained with other attention
    heads than `num_heads` (the same tensor shapes, split otherwise), and (UpstreamFailedError)
    one whose run directory records a failed run.
    """
    check_upstream(path)
    ckpt = load_checkpoint(path)
    source = ckpt.get("backbone_name")
    if source != expected_backbone:
        raise CheckpointError(
            f"checkpoint {path} holds backbone {source!r}, this run builds {expected_backbone!r}"
        )
    source_mode = ckpt.get("mode") or (ckpt.get("config") or {}).get("mode")
    if source_mode != "pretrain":  # allowed (e.g. a transfer from a supervised run), but said
        log.warning("checkpoint %s is not a pretrain run's best.pt (its run's mode: %s): this "
                    "run starts from its weights, but is not RelViT's finetune of them", path,
                    repr(source_mode) if source_mode else "none recorded")
    model = (ckpt.get("config") or {}).get("model") or {}
    heads = attention_heads(model, source) if model else None
    if num_heads is not None and heads is not None and heads != num_heads:
        raise CheckpointError(f"checkpoint {path} was trained with {heads} attention heads, "
                              f"this run builds {num_heads}")
    weights = {k.removeprefix("backbone."): v for k, v in ckpt["model"].items()
               if k.startswith("backbone.")}
    own = backbone.state_dict()
    problems = []
    for key, value in weights.items():
        if key not in own:
            problems.append(f"unexpected tensor {key}")
        elif own[key].shape != value.shape:
            problems.append(
                f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(own[key].shape)}"
            )
    missing = [k for k in own if k not in weights]
    problems += [f"missing tensor {k}" for k in missing if k not in MAY_BE_MISSING]
    if problems:
        raise CheckpointError(
            f"checkpoint {path} does not fit the model: " + "; ".join(problems[:8])
            + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        )
    backbone.load_state_dict(weights, strict=False)
    return missing
