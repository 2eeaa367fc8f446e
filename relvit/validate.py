"""Checks of a run config against the registries: everything that can fail before training."""

from __future__ import annotations

import re

from relvit.config import RunConfig
from relvit.data.registry import DATASETS
from relvit.models.specs import BACKBONES, T2T_STRIDE, get_backbone_spec


# torch.manual_seed takes [-2**63, 2**64); the run's streams (relvit.train.loop._epoch_seed) are
# taken mod 2**63
SEED_LIMIT = 2**63


def range_problems(cfg: RunConfig) -> list[str]:
    """The range of every numeric key, each on its own ("key.path: must be ..."): these checks
    also run on a config whose ill-typed keys were left at their defaults (every default passes
    them), so that they come in the same round as the type errors."""
    problems: list[str] = []
    m, o, d = cfg.model, cfg.optim, cfg.detection
    if not 0 <= cfg.seed < SEED_LIMIT:
        problems.append(f"seed: must be in [0, 2**63 - 1], got {cfg.seed}")
    positive = {
        "optim.epochs": o.epochs, "optim.batch_size": o.batch_size, "optim.lr": o.lr,
        "optim.step_epochs": o.step_epochs, "optim.step_gamma": o.step_gamma,
        "data.image_size": cfg.data.image_size, "model.patch_size": m.patch_size,
        "model.embed_dim": m.embed_dim, "model.depth": m.depth, "model.num_heads": m.num_heads,
        "model.mlp_ratio": m.mlp_ratio, "model.window_size": m.window_size,
        "detection.fpn_channels": d.fpn_channels,
        "detection.box_representation": d.box_representation,
        "detection.mask_head_width": d.mask_head_width,
        "detection.roi_batch_size": d.roi_batch_size,
        "detection.rpn_train_proposals": d.rpn_train_proposals,
        "detection.eval_every": d.eval_every,
    }
    for key, value in positive.items():
        if value is not None and value <= 0:
            problems.append(f"{key}: must be positive, got {value}")
    for key, value in {"optim.min_lr": o.min_lr, "optim.weight_decay": o.weight_decay,
                       "optim.clip_grad": o.clip_grad,
                       "ssl.megapatch_side": cfg.ssl.megapatch_side,
                       "data.workers": cfg.data.workers}.items():
        if value < 0:
            problems.append(f"{key}: must not be negative, got {value}")
    if not 0 <= o.warmup_fraction < 1:
        problems.append(f"optim.warmup_fraction: must be in [0, 1), got {o.warmup_fraction}")
    for key in ("drop_rate", "drop_path_rate"):
        if not 0 <= getattr(m, key) < 1:
            problems.append(f"model.{key}: must be in [0, 1), got {getattr(m, key)}")
    return problems


def name_problems(cfg: RunConfig) -> list[str]:
    """An unknown dataset or backbone name: like range_problems, these run in the same round as
    the type errors (an ill-typed name is left at its default, a known one)."""
    problems: list[str] = []
    if cfg.data.name not in DATASETS:
        problems.append(f"data.name: unknown dataset {cfg.data.name!r}; known: {', '.join(DATASETS)}")
    if cfg.model.backbone not in BACKBONES:
        problems.append(
            f"model.backbone: unknown backbone {cfg.model.backbone!r}; known: {', '.join(BACKBONES)}"
        )
    return problems


def semantic_problems(cfg: RunConfig) -> list[str]:
    """Every problem found, as "key.path: message" lines (empty when the config is usable)."""
    problems = name_problems(cfg) + range_problems(cfg)
    if not (cfg.device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", cfg.device)):
        problems.append(f"device: {cfg.device!r} is not auto, cpu, cuda or cuda:N")
    if cfg.compile_mode != "default" and not cfg.compile:
        problems.append(f"compile_mode: {cfg.compile_mode!r} needs compile: true")
    if cfg.compile_step and not cfg.compile:
        problems.append("compile_step: needs compile: true")
    if cfg.optim.schedule != "step" and cfg.optim.min_lr > cfg.optim.lr:  # "step" ignores it
        problems.append(f"optim.min_lr: must not exceed optim.lr {cfg.optim.lr} (schedule "
                        f"{cfg.optim.schedule!r} decays from lr to min_lr), got {cfg.optim.min_lr}")
    if cfg.init_checkpoint and cfg.mode not in ("finetune", "detect"):
        problems.append(f"init_checkpoint: mode {cfg.mode!r} trains from scratch; only finetune "
                        "and detect start from a pretrain run's weights (--init)")
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
        hint = " (mode: detect, or relvit check --mode detect)" if task == "detection" else ""
        problems.append(f"data.name: mode {cfg.mode!r} needs a {wanted} dataset; "
                        f"{cfg.data.name!r} is a {task} dataset{hint}")
    spec = get_backbone_spec(cfg.model.backbone)
    dim = cfg.model.embed_dim or spec.embed_dim
    heads = cfg.model.num_heads or spec.num_heads
    if spec.family != "swin" and dim % heads:
        problems.append(f"model.embed_dim: {dim} is not divisible by model.num_heads {heads}")
    from relvit.geometry import NUM_RELATIONS, run_geometry  # geometry imports the config

    if cfg.uses_ssl and ssl.relations and dim < NUM_RELATIONS:
        problems.append(f"model.embed_dim: {dim} is too narrow for the {NUM_RELATIONS} relation "
                        f"heads (>= {NUM_RELATIONS})")
    if spec.family == "t2t" and cfg.model.patch_size is not None:
        problems.append(f"model.patch_size: T2T-ViT has a fixed token stride of {T2T_STRIDE}; "
                        "leave it unset")

    try:
        geo = run_geometry(cfg)
    except ValueError as err:  # a message that starts with its key names it already
        named = str(err).startswith("ssl.megapatch_side:")
        problems.append(str(err) if named else f"data.image_size / model.patch_size: {err}")
        return problems
    with_ssl = cfg.uses_ssl or (cfg.mode == "detect" and cfg.detection.ssl_joint)
    if with_ssl and geo.num_positions < 4:  # one cell: no pair to relate, one position class
        if geo.megapatch_side:
            problems.append("ssl.megapatch_side: the SSL grid would be 1x1 (one mega-patch): "
                            "the SSL tasks need at least 2x2 cells (0 switches mega-patches off)")
        else:
            problems.append(f"data.image_size / model.patch_size: the SSL grid would be 1x1 "
                            f"({spec.label}'s tokens of {geo.token_stride} px on "
                            f"{geo.image_size}-px images): the SSL tasks need at least 2x2 cells")
    return problems
