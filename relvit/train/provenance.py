"""Where a number came from: versions, git commit, device, peak memory, run-config hash and
container image."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

import relvit
from relvit.config import HASH_EXCLUDES, execution_settings, without_keys


IMAGE_COMMIT = "RELVIT_GIT_SHA"  # set in the container images (docker/): they hold no .git
COMMIT = re.compile(r"[0-9a-f]{7,40}(-dirty)?")


def git_sha() -> str:
    """The commit of the checkout the package runs from; outside git (an installed package, as
    in the container images), the commit the image was built from ($RELVIT_GIT_SHA), else
    "unknown"."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(relvit.__file__).parent,
            capture_output=True, text=True, timeout=10, check=True,
        )
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=normal"],
            cwd=Path(relvit.__file__).parent, capture_output=True, text=True, timeout=10,
        ).stdout.splitlines()
        return out.stdout.strip() + ("-dirty" if is_dirty(status) else "")
    except (OSError, subprocess.SubprocessError):
        image = os.environ.get(IMAGE_COMMIT, "")
        return image if COMMIT.fullmatch(image) else "unknown"


# untracked files there are code a run may have run: a new module, rule or Snakefile
UNTRACKED_CODE = ("relvit/", "workflow/", "Snakefile")


def is_dirty(status: list[str]) -> bool:
    """Whether `git status --porcelain` lines show code other than the commit's: a tracked file
    changed, or an untracked one under `UNTRACKED_CODE` (untracked notes or configs elsewhere
    are not the code)."""
    return any(not line.startswith("?? ") or line[3:].strip('"').startswith(UNTRACKED_CODE)
               for line in status if line.strip())


def versions() -> dict[str, str]:
    import numpy
    import timm
    import torchvision

    return {
        "python": platform.python_version(), "relvit": relvit.__version__,
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "timm": timm.__version__, "numpy": numpy.__version__,
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def peak_memory_reserved_mb(device: torch.device) -> float | None:
    """Peak GPU memory held by the caching allocator (the blocks of CUDA graphs' private pools
    included, which `max_memory_allocated` may leave out); None on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_reserved(device) / 2**20
    return None


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated by tensors, or the process's peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


IMAGE_VARIABLES = ("APPTAINER_CONTAINER", "SINGULARITY_CONTAINER", "RELVIT_IMAGE")


def config_hash(config: dict[str, Any]) -> str:
    """Stable hash (16 hex digits) of a resolved run config (RunConfig.to_dict()), without the
    keys of HASH_EXCLUDES: equal configs give equal hashes on any machine."""
    text = json.dumps(without_keys(config, HASH_EXCLUDES), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def container_image() -> str:
    """The container image the process runs in (Apptainer/Singularity set their variables; set
    RELVIT_IMAGE for Docker and the like), else "none"."""
    return next((os.environ[name] for name in IMAGE_VARIABLES if os.environ.get(name)), "none")


def data_copy(folder: str | Path) -> dict[str, int] | None:
    """The settings of the resized copy a run read from `folder` (made by `relvit
    resize-images`, e.g. through the workflow's `data.resized`), or None for the dataset's own
    files."""
    from dataclasses import asdict

    from relvit.data.resize import resized_copy

    settings = resized_copy(folder)
    return asdict(settings) if settings else None


def run_provenance(config: dict[str, Any]) -> dict[str, Any]:
    """metrics.json entries that tie a run to its config and image, and how it executed (the
    execution keys, which the hash leaves out)."""
    return {"config_hash": config_hash(config), "execution": execution_settings(config),
            "image": container_image()}
