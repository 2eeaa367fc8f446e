"""Losses and accuracies of the SSL tasks and the classifier (method spec §1.2-1.8)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE = -100


def _batched(targets: Tensor, batch: int) -> Tensor:
    return targets.expand(batch, *targets.shape[-2:]) if targets.dim() == 2 else targets


def _drop_diagonal(targets: Tensor) -> Tensor:
    n = targets.shape[-1]
    eye = torch.eye(n, dtype=torch.bool, device=targets.device)
    return targets.masked_fill(eye, IGNORE)


def relation_loss(logits: Tensor, targets: Tensor, include_diagonal: bool = True) -> Tensor:
    """Cross-entropy over the 9 classes of logits [B, 9, N, N], averaged over the pairs used.

    `targets` is [N, N] (shared by the batch) or [B, N, N]. The original averages over all N^2
    pairs including the trivial diagonal; `include_diagonal=False` leaves it out.
    """
    targets = _batched(targets, logits.shape[0])
    if not include_diagonal:
        targets = _drop_diagonal(targets)
    return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE)


def relation_accuracy(logits: Tensor, targets: Tensor, include_diagonal: bool = False) -> Tensor:
    """Argmax accuracy over pairs; off-diagonal by default (the diagonal is trivially CC)."""
    targets = _batched(targets, logits.shape[0])
    correct = logits.argmax(dim=1) == targets
    if include_diagonal:
        return correct.float().mean()
    off = ~torch.eye(targets.shape[-1], dtype=torch.bool, device=targets.device)
    return correct[:, off].float().mean()


def token_classification_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy of [B, C, N] logits against [N] or [B, N] targets (absolute positions)."""
    if targets.dim() == 1:
        targets = targets.expand(logits.shape[0], -1)
    return F.cross_entropy(logits.float(), targets)


def accuracy(logits: Tensor, targets: Tensor) -> Tensor:
    """Argmax accuracy with the class axis at dim 1 ([B, C] or [B, C, N])."""
    if logits.dim() == 3 and targets.dim() == 1:
        targets = targets.expand(logits.shape[0], -1)
    return (logits.argmax(dim=1) == targets).float().mean()


def regression_loss(scores: Tensor, targets: Tensor) -> Tensor:
    """MSE of [B, 1, N, N] scores against [N, N] or [B, N, N] targets (distances, angles)."""
    targets = _batched(targets, scores.shape[0])
    return F.mse_loss(scores[:, 0].float(), targets.float())
