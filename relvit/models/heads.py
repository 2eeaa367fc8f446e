"""Heads of RelViT (method spec §1.2-1.7)."""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
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

    def linears(self) -> tuple[nn.Linear, ...]:
        """The maps of the tokens that `from_maps` takes, in its order (see `joint_maps`)."""
        return self.query, self.key

    def from_maps(self, query: Tensor, key: Tensor) -> PairProjections:
        """The [B, N, num_outputs * head_dim] maps by `linears()` -> the per-output queries and
        keys, each [B, num_outputs, N, head_dim] (views)."""
        b, n, _ = query.shape
        shape = (b, n, self.num_outputs, self.head_dim)
        return PairProjections(query.view(shape).transpose(1, 2), key.view(shape).transpose(1, 2))

    def project(self, tokens: Tensor) -> PairProjections:
        """[B, N, D] -> the per-output queries and keys, each [B, num_outputs, N, head_dim]."""
        return self.from_maps(self.query(tokens), self.key(tokens))

    def forward(self, tokens: Tensor) -> Tensor:
        """[B, N, D] -> scores [B, num_outputs, N, N] (row = query token i, column = key j)."""
        return self.project(tokens).scores()


class PositionHead(nn.Module):
    """Absolute position classifier: Linear(D, N) with bias, applied per token."""

    def __init__(self, dim: int, num_positions: int):
        super().__init__()
        self.linear = nn.Linear(dim, num_positions)

    def linears(self) -> tuple[nn.Linear, ...]:
        return (self.linear,)

    def from_maps(self, logits: Tensor) -> Tensor:
        """[B, N, num_positions] -> [B, num_positions, N] (class axis first, as cross-entropy
        wants)."""
        return logits.transpose(1, 2)

    def forward(self, tokens: Tensor) -> Tensor:
        """[B, N, D] -> logits [B, num_positions, N]."""
        return self.from_maps(self.linear(tokens))


def joint_maps(tokens: Tensor, linears: Sequence[nn.Linear]) -> tuple[Tensor, ...]:
    """`linear(tokens)` for each of `linears` (all reading the same width), as one matrix product
    over their stacked weights: the tokens cast once under autocast, and their gradient one
    product too, instead of one per map summed. The maps are views of one [B, N, sum of widths]
    output."""
    weight = torch.cat([linear.weight for linear in linears])
    bias = None
    if any(linear.bias is not None for linear in linears):
        bias = torch.cat([linear.bias if linear.bias is not None
                          else linear.weight.new_zeros(linear.out_features) for linear in linears])
    return F.linear(tokens, weight, bias).split([linear.out_features for linear in linears], -1)
