"""Checks of a run config against the registries: everything that can fail before training."""

from __future__ import annotations

from relvit.config import RunConfig
from relvit.data.registry import DATASETS
from relvit.models.specs import BACKBONES, get_backbone_spec


def semantic_problems(cfg: RunConfig) -> list[str]:
    """Every problem found, as "key.path: message" lines (empty when the config is usable)."""
    problems: list[str] = []
    if cfg.data.name not in DATASETS:
        problems.append(f"data.name: unknown dataset {cfg.data.name!r}; known: {', '.join(DATASETS)}")
    if cfg.model.backbone not in BACKBONES:
        problems.append(
            f"model.backbone: unknown backbone {cfg.model.backbone!r}; known: {', '.join(BACKBONES)}"
        )
    positive = {
        "optim.epochs": cfg.optim.epochs, "optim.batch_size": cfg.optim.batch_size,
        "optim.lr": cfg.optim.lr, "data.image_size": cfg.data.image_size,
        "model.patch_size": cfg.model.patch_size, "model.embed_dim": cfg.model.embed_dim,
        "model.depth": cfg.model.depth, "model.num_heads": cfg.model.num_heads,
        "model.window_size": cfg.model.window_size,
    }
    for key, value in positive.items():
        if value is not None and value <= 0:
            problems.append(f"{key}: must be positive, got {value}")
    for key, value in {"optim.min_lr": cfg.optim.min_lr, "optim.weight_decay": cfg.optim.weight_decay,
                       "optim.clip_grad": cfg.optim.clip_grad,
                       "ssl.megapatch_side": cfg.ssl.megapatch_side}.items():
        if value < 0:
            problems.append(f"{key}: must not be negative, got {value}")
    if cfg.data.workers < 0:
        problems.append(f"data.workers: must not be negative, got {cfg.data.workers}")
    if not 0 <= cfg.optim.warmup_fraction < 1:
        problems.append(f"optim.warmup_fraction: must be in [0, 1), got {cfg.optim.warmup_fraction}")
    for key in ("drop_rate", "drop_path_rate"):
        if not 0 <= getattr(cfg.model, key) < 1:
            problems.append(f"model.{key}: must be in [0, 1), got {getattr(cfg.model, key)}")
    if not (cfg.device in ("auto", "cpu", "cuda") or cfg.device.startswith("cuda:")):
        problems.append(f"device: {cfg.device!r} is not auto, cpu, cuda or cuda:N")
    if cfg.compile_mode != "default" and not cfg.compile:
        problems.append(f"compile_mode: {cfg.compile_mode!r} needs compile: true")
    if cfg.compile_step and not cfg.compile:
        problems.append("compile_step: needs compile: true")
    if cfg.compile_step and cfg.mode == "detect":
        problems.append("compile_step: not for mode 'detect' (the detector's step is its "
                        "own)")
    ssl = cfg.ssl
    if cfg.uses_ssl and not (ssl.relations or ssl.positions or ssl.distances or ssl.angles):
        problems.append(f"ssl: mode {cfg.mode!r} needs at least one SSL task switched on")
    if cfg.mode == "joint" and (ssl.shuffle or ssl.megapatch_side):
        problems.append("ssl.shuffle / ssl.megapatch_side: only used by mode 'pretrain' "
                        "(joint training uses identity targets, method spec §3)")
    if problems:
        return problems  # the geometry checks need a known dataset and backbone

    task = DATASETS[cfg.data.name].task  # pretrain uses the images of either kind
    wanted = {"detect": "detection", "pretrain": task}.get(cfg.mode, "classification")
    if task != wanted:
        problems.append(f"data.name: mode {cfg.mode!r} needs a {wanted} dataset; "
                        f"{cfg.data.name!r} is a {task} dataset")
    spec = get_backbone_spec(cfg.model.backbone)
    dim = cfg.model.embed_dim or spec.embed_dim
    heads = cfg.model.num_heads or spec.num_heads
    if spec.family != "swin" and dim % heads:
        problems.append(f"model.embed_dim: {dim} is not divisible by model.num_heads {heads}")
    if cfg.uses_ssl and ssl.relations and dim < 9:
        problems.append(f"model.embed_dim: {dim} is too narrow for the 9 relation heads (>= 9)")
    if spec.family == "t2t" and cfg.model.patch_size is not None:
        problems.append("model.patch_size: T2T-ViT has a fixed token stride of 16; leave it unset")
    from relvit.geometry import run_geometry

    try:
        run_geometry(cfg)
    except ValueError as err:
        problems.append(f"data.image_size / model.patch_size: {err}")
    return problems
