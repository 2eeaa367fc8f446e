"""Losses and accuracies of the SSL tasks and the classifier (method spec §1.2-1.8)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from relvit.compiled import compiled_variant
from relvit.models.heads import PairProjections

IGNORE = -100
# Float32 scores one chunk of the fused relation loss may hold ([B, 9, rows, N]); the transient
# peak of the loss is a few times this (scores, their softmax gradient, the targets).
RELATION_CHUNK_BYTES = 64 * 2**20


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
    n = targets.shape[-1]
    off = ~torch.eye(n, dtype=torch.bool, device=targets.device)
    # a count, not correct[:, off]: boolean indexing waits for the GPU to size its result
    return (correct & off).sum() / (correct.shape[0] * (n * n - n))


def relation_chunk_rows(batch: int, classes: int, n: int,
                        budget: int = RELATION_CHUNK_BYTES) -> int:
    """Query rows per chunk so that a [batch, classes, rows, n] float32 block fits `budget`."""
    return max(1, min(n, budget // max(1, batch * classes * n * 4)))


def _chunk_terms(scores: Tensor, t: Tensor, eye: Tensor, include_diagonal: bool, scale: float,
                 need_grad: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """One chunk of query rows: scores q @ k^T [B, C, r, M] (input dtype, unscaled; overwritten),
    targets t [B, r, M] (long), eye [r, M] (the diagonal). Returns the loss sum, the valid pair
    count, the argmax hits over all pairs and off the diagonal, and d loss_sum / d scores in the
    scores' dtype (None without `need_grad`). Elementwise and reductions only: `torch.compile`
    fuses it into a few kernels (`compiled` in `fused_relation_loss`)."""
    # rounding as the plain path: scores scaled in the input dtype (in place), then float32
    logits = scores.div_(scale).float()
    hit = logits.max(dim=1).indices == t  # argmax; faster on the CPU
    hits_all = hit.sum()
    hits_off = hit.masked_fill(eye, False).sum()
    valid = t != IGNORE
    if not include_diagonal:
        valid = valid & ~eye
    safe = torch.where(valid, t, 0).unsqueeze(1)  # [B, 1, r, M]
    logp = torch.log_softmax(logits, dim=1)
    total = -torch.where(valid, logp.gather(1, safe).squeeze(1), 0.0).sum()
    count = valid.sum()
    grad = None
    if need_grad:  # d loss_sum / d scores = (softmax - one-hot) on the valid pairs
        grad = logp.exp_()  # in place: one float32 chunk at a time
        grad.scatter_add_(1, safe, torch.full_like(safe, -1, dtype=grad.dtype))
        grad = grad.mul_((valid.unsqueeze(1) / scale).to(grad.dtype)).to(scores.dtype)
    return total, count, hits_all, hits_off, grad


_chunk_function = compiled_variant(_chunk_terms)  # _chunk_function(compiled)


class _FusedRelationCE(torch.autograd.Function):
    """Cross-entropy of the scores q @ k^T / sqrt(d), computed in chunks of query rows.

    The forward pass computes, chunk by chunk, the loss, the argmax hits and (when a gradient is
    wanted) the gradients w.r.t. q and k, so that no more than one chunk of the [B, C, N, N]
    scores exists at a time and the backward pass only scales the saved gradients: the same three
    matrix products as the plain path, no recomputation.
    """

    @staticmethod
    def forward(ctx, query: Tensor, key: Tensor, targets: Tensor, include_diagonal: bool,
                rows: int, need_grad: bool, compiled: bool) -> tuple[Tensor, Tensor, Tensor]:
        b, _, n, d = query.shape
        m = key.shape[-2]
        scale = math.sqrt(d)
        device = query.device
        chunk_terms = _chunk_function(compiled)
        with torch.autocast(device.type, enabled=False):
            kt = key.transpose(-1, -2)
            total = torch.zeros((), device=device, dtype=torch.float32)
            count = torch.zeros((), device=device, dtype=torch.long)
            hits_all = torch.zeros((), device=device, dtype=torch.long)
            hits_off = torch.zeros((), device=device, dtype=torch.long)
            dq = torch.empty(query.shape, device=device, dtype=torch.float32) if need_grad else None
            dk = torch.zeros(key.shape, device=device, dtype=torch.float32) if need_grad else None
            columns = torch.arange(m, device=device)
            for start in range(0, n, rows):
                stop = min(n, start + rows)
                qc = query[:, :, start:stop]
                eye = torch.arange(start, stop, device=device)[:, None] == columns  # [r, M]
                terms = chunk_terms(torch.matmul(qc, kt), targets[:, start:stop].long(), eye,
                                    include_diagonal, scale, need_grad)
                total += terms[0]
                count += terms[1]
                hits_all += terms[2]
                hits_off += terms[3]
                if need_grad:
                    grad = terms[4]
                    dq[:, :, start:stop] = torch.matmul(grad, key)
                    dk += torch.matmul(grad.transpose(-1, -2), qc)
            loss = total / count
            acc_all = hits_all / (b * n * m)
            acc_off = hits_off / (b * (n * m - min(n, m)))
        ctx.mark_non_differentiable(acc_off, acc_all)
        ctx.dtypes = (query.dtype, key.dtype)
        if need_grad:
            ctx.save_for_backward(dq.div_(count), dk.div_(count))
        return loss, acc_off, acc_all

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss: Tensor, *_unused: Tensor):
        dq, dk = ctx.saved_tensors
        return ((dq * grad_loss).to(ctx.dtypes[0]), (dk * grad_loss).to(ctx.dtypes[1]),
                None, None, None, None, None)


def fused_relation_loss(pair: PairProjections, targets: Tensor, include_diagonal: bool = True,
                        chunk_rows: int | None = None, compiled: bool = False
                        ) -> tuple[Tensor, Tensor, Tensor]:
    """`relation_loss` and both `relation_accuracy`s from the head's projections, in one pass.

    Equals `relation_loss(pair.scores(), ...)` (value and gradients, to float rounding) without
    holding the [B, 9, N, N] scores: chunks of `chunk_rows` query rows (default: a
    `RELATION_CHUNK_BYTES` budget). `targets` is [N, N] or [B, N, N], any integer dtype.
    Returns (loss, accuracy off the diagonal, accuracy over all pairs); the accuracies are detached.
    `compiled`: each chunk's elementwise work torch.compile-d (`_chunk_terms`).
    """
    b, c, _, _ = pair.query.shape
    targets = _batched(targets, b)
    rows = chunk_rows or relation_chunk_rows(b, c, pair.key.shape[-2])
    need_grad = torch.is_grad_enabled() and (pair.query.requires_grad or pair.key.requires_grad)
    return _FusedRelationCE.apply(pair.query, pair.key, targets, include_diagonal, rows, need_grad,
                                  compiled)


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
