"""Heads of RelViT (method spec §1.2-1.7)."""

from __future__ import annotations

import math
from typing import NamedTuple

from torch import Tensor, nn


class PairProjections(NamedTuple):
    """Query and key projections of a `PairwiseScoreHead`, both [B, C, N, d_h].

    The scores [B, C, N, N] are `scores()`; the fused relation loss
    (`relvit.models.losses.fused_relation_loss`) reads these instead, so that the N x N scores are
    never held in memory at once. A NamedTuple, so that pytree and DDP see its tensors.
    """

    query: Tensor
    key: Tensor

    def scores(self) -> Tensor:
        """s_c(i, j) = <q_c(i), k_c(j)> / sqrt(d_h), [B, C, N, N] (row i = query token)."""
        return (self.query @ self.key.transpose(-1, -2)) / math.sqrt(self.query.shape[-1])


class PairwiseScoreHead(nn.Module):
    """`num_outputs` attention-score heads: s_c(i, j) = <W_q^c z_i, W_k^c z_j> / sqrt(d_h).

    The relation head is 9 outputs of width D // 9; the distance / angle heads are one output of
    width D. Bias-free maps, PyTorch's default Linear init, no softmax, no value projection (the
    original's value maps are never used, method spec Q13).
    """

    def __init__(self, dim: int, num_outputs: int, head_dim: int | None = None):
        super().__init__()
        self.num_outputs = num_outputs
        self.head_dim = head_dim if head_dim is not None else dim // num_outputs
        if self.head_dim < 1:
            raise ValueError(f"token width {dim} is too small for {num_outputs} score heads")
        self.query = nn.Linear(dim, num_outputs * self.head_dim, bias=False)
        self.key = nn.Linear(dim, num_outputs * self.head_dim, bias=False)

    def project(self, tokens: Tensor) -> PairProjections:
        """[B, N, D] -> the per-output queries and keys, each [B, num_outputs, N, head_dim]."""
        b, n, _ = tokens.shape
        q = self.query(tokens).view(b, n, self.num_outputs, self.head_dim).transpose(1, 2)
        k = self.key(tokens).view(b, n, self.num_outputs, self.head_dim).transpose(1, 2)
        return PairProjections(q, k)

    def forward(self, tokens: Tensor) -> Tensor:
        """[B, N, D] -> scores [B, num_outputs, N, N] (row = query token i, column = key j)."""
        return self.project(tokens).scores()


class PositionHead(nn.Module):
    """Absolute position classifier: Linear(D, N) with bias, applied per token."""

    def __init__(self, dim: int, num_positions: int):
        super().__init__()
        self.linear = nn.Linear(dim, num_positions)

    def forward(self, tokens: Tensor) -> Tensor:
        """[B, N, D] -> logits [B, num_positions, N] (class axis first, as cross-entropy wants)."""
        return self.linear(tokens).transpose(1, 2)
