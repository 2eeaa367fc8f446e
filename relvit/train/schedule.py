"""Learning-rate schedules, evaluated per optimisation step (method spec §5.1, Q8)."""

from __future__ import annotations

import math

from relvit.config import OptimConfig


def learning_rate(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """LR at `step` (0-based) of `total_steps`.

    All schedules warm up linearly from 0 over W = floor(warmup_fraction * T) steps. Then
    "relvit" (the original) is the quarter-cosine lr_end + (lr - lr_end) * cos(pi/2 * t / T)
    measured from t = 0, so it jumps slightly down at t = W; "cosine" is the usual half-cosine
    from lr at t = W to lr_end at t = T. "step" (the detection follow-up's StepLR) multiplies the
    LR by step_gamma every step_epochs epochs.
    """
    warmup = int(cfg.warmup_fraction * total_steps)
    if cfg.schedule == "step":  # per epoch: lr * gamma^(epoch // step_epochs), after warm-up
        epoch = step * cfg.epochs // max(total_steps, 1)
        factor = cfg.step_gamma ** (epoch // cfg.step_epochs)
        return cfg.lr * factor * (step / warmup if step < warmup else 1.0)
    if step < warmup:
        return cfg.lr * step / warmup
    if cfg.schedule == "relvit":
        progress = min(step / total_steps, 1.0)
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * math.cos(math.pi / 2 * progress)
    progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
