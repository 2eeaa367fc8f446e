"""The RelViT model: a backbone, the SSL heads on its (pooled) token grid, and a classifier."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from relvit.geometry import NUM_RELATIONS
from relvit.models.contract import Backbone, Tokens
from relvit.models.heads import PairProjections, PairwiseScoreHead, PositionHead, joint_maps


@dataclass(frozen=True)
class SSLTasks:
    """Which SSL heads exist (method spec §1.2-1.5)."""

    relations: bool = False
    positions: bool = False
    distances: bool = False
    angles: bool = False

    @property
    def any(self) -> bool:
        return self.relations or self.positions or self.distances or self.angles


class RelViT(nn.Module):
    """Backbone + optional SSL heads + optional classifier.

    `forward` returns a dict with "logits" [B, classes] when there is a classifier, and the SSL
    outputs "relations", "positions" [B, P, N], "distances" / "angles" [B, 1, N, N] for the heads
    that exist, where N is the SSL grid (T2T's 14x14 tokens pooled to 7x7). "relations" is the
    head's `PairProjections` (queries and keys, for the fused loss that never holds the N x N
    scores; `.scores()` gives them), or with `relation_projections=False` the scores
    [B, 9, N, N] themselves.
    """

    def __init__(self, backbone: Backbone, num_classes: int | None, tasks: SSLTasks,
                 num_positions: int = 0, relation_projections: bool = True):
        super().__init__()
        self.backbone = backbone
        self.tasks = tasks
        self.relation_projections = relation_projections
        dim = backbone.embed_dim
        self.relation_head = PairwiseScoreHead(dim, NUM_RELATIONS) if tasks.relations else None
        self.position_head = PositionHead(dim, num_positions) if tasks.positions else None
        self.distance_head = PairwiseScoreHead(dim, 1, head_dim=dim) if tasks.distances else None
        self.angle_head = PairwiseScoreHead(dim, 1, head_dim=dim) if tasks.angles else None
        self.classifier = nn.Linear(dim, num_classes) if num_classes else None
        if self.classifier is not None and backbone.classifier_init_std:
            nn.init.trunc_normal_(self.classifier.weight, std=backbone.classifier_init_std)
            nn.init.zeros_(self.classifier.bias)
        self.ssl_pool = (
            nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)
            if backbone.ssl_pool > 1 else None
        )

    def ssl_tokens(self, tokens: Tokens) -> tuple[Tensor, tuple[int, int]]:
        """The tokens the SSL heads read, and their grid."""
        if self.ssl_pool is None:
            return tokens.patches, tokens.grid
        x = tokens.patches
        b, _, d = x.shape
        h, w = tokens.grid
        factor = self.backbone.ssl_pool
        x = x.transpose(1, 2).reshape(b, d, h, w)
        while factor > 1:
            x = self.ssl_pool(x)
            factor //= 2
        return x.flatten(2).transpose(1, 2), (x.shape[-2], x.shape[-1])

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        tokens = self.backbone.tokens(images)
        out: dict[str, Tensor] = {}
        if self.classifier is not None:
            pooled = tokens.cls if tokens.cls is not None else tokens.patches.mean(dim=1)
            # float32 logits under bf16 autocast too: rounded to bf16's 8 bits, near-tied top
            # classes swap, which moves the reported top-1 (spec §7: best epoch's accuracy)
            with torch.autocast(pooled.device.type, enabled=False):
                out["logits"] = self.classifier(pooled.float())
        if self.tasks.any:
            out.update(self.ssl_outputs(self.ssl_tokens(tokens)[0]))
        return out

    def ssl_outputs(self, z: Tensor) -> dict[str, Tensor]:
        """The SSL heads' outputs from their tokens [B, N, D]. All their Linear maps are one
        matrix product (`joint_maps`): one copy of the strided tokens (cast under autocast),
        one gradient product, no per-head copies and sums."""
        heads = {name: head for name, head in (
            ("relations", self.relation_head), ("positions", self.position_head),
            ("distances", self.distance_head), ("angles", self.angle_head)) if head is not None}
        maps = iter(joint_maps(z, [linear for head in heads.values() for linear in head.linears()]))
        out: dict[str, Tensor] = {}
        for name, head in heads.items():
            result = head.from_maps(*(next(maps) for _ in head.linears()))
            if isinstance(result, PairProjections) and (
                    name != "relations" or not self.relation_projections):
                result = result.scores()  # distances, angles; relations on the plain path
            out[name] = result
        return out


