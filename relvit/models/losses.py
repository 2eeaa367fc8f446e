"""Losses and accuracies of the SSL tasks and the classifier (method spec §1.2-1.8)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from relvit.compiled import compiled_variant
from relvit.models.heads import PairProjections

IGNORE = -100
# Float32 scores one chunk of the fused relation loss may hold ([samples, 9, N, N]; at least one
# sample); the transient peak of the loss is a few times this (scores, their softmax gradient).
# 256 MiB: at most 194 samples of ViT-S/16 at 224 px, so a batch of 256 runs as two equal chunks
# of 128 (`relation_chunk_samples`). On the H100 the head + loss took 3.1 ms that way, against
# 3.2 as 194 + 62, 3.5-5.0 with 64 MiB and 4.4-4.5 for the plain path, at 0.68x the plain
# path's memory (docs/performance.md).
RELATION_CHUNK_BYTES = 256 * 2**20
# The fused loss pads the relation head's width (D // 9: 42 for ViT-S) with zeros to a multiple
# of this for its matrix products; 1: not padded. An experiment (`bench_relvit.py --head-align`):
# tensor-core GEMMs want rows of 16 bytes (8 bf16 values), 42 values are 84 bytes. On the H100,
# 42 -> 48 saved 0.6 ms with 64 MiB chunks and nothing with 256 MiB ones (3.3 vs 3.2 ms).
RELATION_HEAD_ALIGN = 1


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


def relation_chunk_samples(batch: int, classes: int, n: int, m: int,
                           budget: int = RELATION_CHUNK_BYTES) -> int:
    """Samples per chunk so that their [samples, classes, n, m] float32 scores fit `budget` (at
    least one sample, whatever its size), the batch split into chunks as equal as that allows:
    256 samples with room for 194 run as 128 + 128, not 194 + 62 (one compiled chunk graph, not
    two, and a smaller peak)."""
    fits = max(1, min(batch, budget // max(1, classes * n * m * 4)))
    return -(-batch // -(-batch // fits))  # ceil(batch / the fewest chunks that fit)


def _chunk_terms(scores: Tensor, t: Tensor, include_diagonal: bool, need_grad: bool
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """One chunk of samples: scores q @ k^T / sqrt(d) [S, C, N, M] (input dtype; overwritten),
    class ids t [S, 1, N, M] (long, 0 <= t < C). Returns the sum of the log-probabilities of the
    targets over the pairs used, the argmax hits over all pairs and off the diagonal, and
    d(sum of -log p) / d scores = softmax - one-hot on the pairs used, computed in float32 and
    rounded once to the scores' dtype (None without `need_grad`). Elementwise and reductions
    only: `torch.compile` fuses it into a few kernels (`compiled` in `fused_relation_loss`)."""
    # argmax (faster on the CPU) of the input dtype: float32 widens exactly, so the same indices
    hit = scores.max(dim=1, keepdim=True).indices == t
    hits_all = hit.sum()
    hits_off = hits_all - hit.diagonal(dim1=-2, dim2=-1).sum()
    logp = torch.log_softmax(scores, dim=1, dtype=torch.float32)  # reads the input dtype
    picked = logp.gather(1, t)
    grad = None
    if need_grad:  # into the scores' buffer, dead by then
        grad = torch.exp(logp, out=scores)
        # p - 1 at the targets, from the float32 log-probabilities (expm1: exact near p = 1)
        grad.scatter_(1, t, torch.expm1(picked, out=torch.empty_like(picked, dtype=grad.dtype)))
        if not include_diagonal:
            grad.diagonal(dim1=-2, dim2=-1).zero_()
    if not include_diagonal:
        picked.diagonal(dim1=-2, dim2=-1).zero_()
    return picked.sum(), hits_all, hits_off, grad


_chunk_function = compiled_variant(_chunk_terms)  # _chunk_function(compiled)


def _scaled_product(a: Tensor, b: Tensor, alpha: float, out: Tensor) -> Tensor:
    """out = alpha * a @ b for [S, C, ., .] tensors, out contiguous: the scaling inside the
    matrix product (before its one rounding to out's dtype), out's old values not read."""
    out.view(-1, *out.shape[-2:]).baddbmm_(a.flatten(0, 1), b.flatten(0, 1), beta=0, alpha=alpha)
    return out


def _aligned(t: Tensor, align: int) -> Tensor:
    """[B, C, N, d] in contiguous memory, d zero-padded to a multiple of `align` (one copy; the
    padding adds exact zeros to every dot product)."""
    pad = -t.shape[-1] % align
    return F.pad(t, (0, pad)) if pad else t.contiguous()


class _Layout(NamedTuple):
    """Shape, dtype and memory order of a [B, C, N, d] input, for a gradient laid out alike."""

    shape: torch.Size
    dtype: torch.dtype
    token_major: bool  # [B, N, C, d] order, as `PairwiseScoreHead.from_maps`'s transposed views

    @staticmethod
    def of(t: Tensor) -> _Layout:
        return _Layout(t.shape, t.dtype, t.stride(1) < t.stride(2))

    def empty(self, device: torch.device) -> Tensor:
        """A tensor laid out like the input: its gradient then flows back through the head's
        transpose and view without a copy."""
        if self.token_major:
            b, c, n, d = self.shape
            return torch.empty((b, n, c, d), dtype=self.dtype, device=device).transpose(1, 2)
        return torch.empty(self.shape, dtype=self.dtype, device=device)


class _FusedRelationCE(torch.autograd.Function):
    """Cross-entropy of the scores q @ k^T / sqrt(d), computed in chunks of samples.

    The forward pass computes, chunk by chunk, the loss, the argmax hits and (when a gradient is
    wanted) the gradients w.r.t. q and k, so that no more than one chunk of the [B, C, N, N]
    scores exists at a time and the backward pass only scales the saved gradients: the same three
    matrix products as the plain path, no recomputation. A chunk holds whole samples, so each
    writes its own rows of dq and dk, complete: nothing adds up across chunks.
    """

    @staticmethod
    def forward(ctx, query: Tensor, key: Tensor, targets: Tensor, include_diagonal: bool,
                samples: int, need_grad: bool, compiled: bool, align: int
                ) -> tuple[Tensor, Tensor, Tensor]:
        b, _, n, d = query.shape
        m = key.shape[-2]
        scale = math.sqrt(d)
        pairs = b * (n * m - (0 if include_diagonal else min(n, m)))  # the pairs averaged over
        if pairs == 0:
            raise ValueError(f"no token pairs to average the relation loss over ({b} samples, "
                             f"{n} x {m} tokens, diagonal {'in' if include_diagonal else 'out'})")
        grad_scale = 1.0 / (scale * pairs)  # d loss / d scores = grad_scale * (softmax - one-hot)
        device = query.device
        chunk_terms = _chunk_function(compiled)
        ctx.layouts = (_Layout.of(query), _Layout.of(key))
        ctx.set_materialize_grads(False)  # no zero gradients made for the accuracies
        with torch.autocast(device.type, enabled=False):
            # [B, C, N, d] memory once: every chunk's products read and write contiguous blocks
            query, key = _aligned(query, align), _aligned(key, align)
            targets = targets.reshape(-1, 1, n, m)  # [B or 1, 1, N, M], as gather's index
            dq, dk = (torch.empty_like(query), torch.empty_like(key)) if need_grad else (None, None)
            logp_sum = hits_all = hits_off = None
            for start in range(0, b, samples):
                chunk = slice(start, min(b, start + samples))
                qc, kc = query[chunk], key[chunk]
                t = targets[chunk] if targets.shape[0] > 1 else targets
                scores = torch.empty((*qc.shape[:-1], m), dtype=qc.dtype, device=device)
                terms = chunk_terms(_scaled_product(qc, kc.transpose(-1, -2), 1 / scale, scores),
                                    t.long().expand(qc.shape[0], -1, -1, -1),
                                    include_diagonal, need_grad)
                logp_sum, hits_all, hits_off = (
                    terms[:3] if logp_sum is None else
                    (logp_sum + terms[0], hits_all + terms[1], hits_off + terms[2]))
                if need_grad:  # this chunk's rows of d loss / d q and d k, in place
                    grad = terms[3]
                    _scaled_product(grad, kc, grad_scale, dq[chunk])
                    _scaled_product(grad.transpose(-1, -2), qc, grad_scale, dk[chunk])
            loss = logp_sum / -pairs
            acc_all = hits_all / (b * n * m)
            acc_off = hits_off / (b * (n * m - min(n, m)))
        ctx.mark_non_differentiable(acc_off, acc_all)
        if need_grad:
            ctx.save_for_backward(dq, dk)
        return loss, acc_off, acc_all

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss: Tensor | None, *_unused: Tensor | None):
        if grad_loss is None:
            return (None,) * 8
        grads = []
        for grad, layout in zip(ctx.saved_tensors, ctx.layouts):
            grad = grad.narrow(-1, 0, layout.shape[-1])  # without the alignment's padding
            if torch.compiler.is_compiling():  # traced into a larger graph, which lays it out
                grads.append((grad * grad_loss).to(layout.dtype))
            else:  # one kernel each: scaled, cast to the input's dtype, laid out as the input
                grads.append(torch.mul(grad, grad_loss, out=layout.empty(grad.device)))
        return (*grads, None, None, None, None, None, None)


def fused_relation_loss(pair: PairProjections, targets: Tensor, include_diagonal: bool = True,
                        chunk_samples: int | None = None, compiled: bool = False,
                        align: int = RELATION_HEAD_ALIGN) -> tuple[Tensor, Tensor, Tensor]:
    """`relation_loss` and both `relation_accuracy`s from the head's projections, in one pass.

    Equals `relation_loss(pair.scores(), ...)` (value and gradients, to float rounding) without
    holding the [B, 9, N, N] scores: chunks of `chunk_samples` samples (default: a
    `RELATION_CHUNK_BYTES` budget). `targets` is [N, N] or [B, N, N], class ids 0..8 of any
    integer dtype (no IGNORE entries: the pairs averaged over are known without reading them).
    Returns (loss, accuracy off the diagonal, accuracy over all pairs); the accuracies are detached.
    `compiled`: each chunk's elementwise work torch.compile-d (`_chunk_terms`). `align`: the
    head width zero-padded to a multiple of it for the matrix products (same values).
    """
    b, c, n, _ = pair.query.shape
    samples = chunk_samples or relation_chunk_samples(b, c, n, pair.key.shape[-2])
    need_grad = torch.is_grad_enabled() and (pair.query.requires_grad or pair.key.requires_grad)
    return _FusedRelationCE.apply(pair.query, pair.key, targets, include_diagonal, samples,
                                  need_grad, compiled, align)


def token_classification_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy of [B, C, N] logits against [N] or [B, N] targets (absolute positions).

    Computed as B * N rows of C classes, the softmax over the last axis: the position head's own
    [B, N, C] layout, of which the logits are a transposed view. The same value as over the
    middle axis of [B, C, N], whose CUDA kernel took ~0.4 ms a step at N = 196 on the H100."""
    if targets.dim() == 1:
        targets = targets.expand(logits.shape[0], -1)
    rows = logits.transpose(1, 2).reshape(-1, logits.shape[1])
    return F.cross_entropy(rows.float(), targets.reshape(-1))


def accuracy(logits: Tensor, targets: Tensor) -> Tensor:
    """Argmax accuracy with the class axis at dim 1 ([B, C] or [B, C, N])."""
    if logits.dim() == 3 and targets.dim() == 1:
        targets = targets.expand(logits.shape[0], -1)
    return (logits.argmax(dim=1) == targets).float().mean()


def regression_loss(scores: Tensor, targets: Tensor) -> Tensor:
    """MSE of [B, 1, N, N] scores against [N, N] or [B, N, N] targets (distances, angles)."""
    targets = _batched(targets, scores.shape[0])
    return F.mse_loss(scores[:, 0].float(), targets.float())
