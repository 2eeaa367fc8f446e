"""Atomic checkpoint files and loading a pretrained backbone into a new model."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

# Backbone weights a finetune may leave at their fresh init: the ViT positional embedding, absent
# from a pretrain run without positional embeddings (method spec §3: it is never trained upstream).
MAY_BE_MISSING = ("vit.pos_embed",)


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or does not fit the model."""


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(text: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint written by this package (tensors and plain data only)."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, corrupt or foreign files
        raise CheckpointError(f"checkpoint {path} cannot be read: {err}") from err


def load_backbone(backbone: nn.Module, path: Path, expected_backbone: str) -> list[str]:
    """Load the backbone weights of a `best.pt` into `backbone`; returns the keys left fresh.

    Refuses a checkpoint from another backbone, or with missing, unexpected or differently shaped
    tensors (other than those in MAY_BE_MISSING), naming them.
    """
    ckpt = load_checkpoint(path)
    source = ckpt.get("backbone_name")
    if source != expected_backbone:
        raise CheckpointError(
            f"checkpoint {path} holds backbone {source!r}, this run builds {expected_backbone!r}"
        )
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
