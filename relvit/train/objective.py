"""Batches in, losses out: standard augmentation, SSL input construction, targets and losses.

A batch is made in two steps: `Objective.draw` makes every random draw (augmentation,
mega-patches, the patches' jitter and permutation), `Objective.build` applies what is left
with no randomness (jitter, permutation, normalisation); `compile_step` compiles `build`, the
model and the losses as one region (`Objective.step_losses`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from relvit.config import RunConfig
from relvit.data.augment import normalize, random_crop, random_hflip
from relvit.data.registry import DatasetSpec
from relvit.geometry import Geometry
from relvit.models import losses
from relvit.models.heads import PairProjections
from relvit.ssl.jitter import JitterConfig
from relvit.ssl.megapatch import megapatch_images
from relvit.ssl.pipeline import SSLDraws, apply_ssl_inputs, draw_ssl_inputs
from relvit.train.columns import LOSS, POSITIONS, RELATIONS, TOP1
from relvit.ssl.targets import (
    angle_targets,
    distance_targets,
    position_targets,
    relation_targets,
)

JITTER = JitterConfig()  # the original's hard-coded probabilities (method spec Q6)


@dataclass
class Batch:
    """What the model sees and what it must predict."""

    images: Tensor  # normalised model input
    labels: Tensor
    grid: tuple[int, int]  # SSL grid of `images`
    perm: Tensor | None  # [B, N] patch permutation (None: identity)


@dataclass
class DrawnBatch:
    """A batch with its random draws made (`Objective.draw`), before `Objective.build`."""

    images: Tensor  # augmented (pretrain: mega-patched) images in [0, 1]
    labels: Tensor
    grid: tuple[int, int]  # SSL grid of `images`
    draws: SSLDraws | None = None  # pretrain: the patches' jitter and permutation


class Objective:
    """Builds model inputs and computes the summed loss of a run's active terms (spec §1.8)."""

    def __init__(self, cfg: RunConfig, dataset: DatasetSpec, geo: Geometry,
                 mean: tuple[float, ...], std: tuple[float, ...]):
        self.cfg, self.dataset, self.geo = cfg, dataset, geo
        self.mean, self.std = mean, std
        self._plain = False  # within `plain()`

    def augment(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """The dataset's standard training augmentation (on un-normalised images)."""
        if not self.cfg.data.augment or self.dataset.train_crop != "pad":
            return images  # RandomResizedCrop datasets are augmented by the loader workers
        images = random_crop(images, self.dataset.crop_padding, generator)
        return random_hflip(images, generator) if self.dataset.flip else images

    def _compiled_on(self, device: torch.device) -> bool:
        """Whether the jitter and the loss chunks take their compiled twins: `compile: true`
        compiles them on CUDA only, as it does the model; never within `plain()`."""
        return self.cfg.compile and device.type == "cuda" and not self._plain

    @contextlib.contextmanager
    def plain(self) -> Iterator[None]:
        """Within it the jitter and the loss chunks take their plain versions: for a batch of a
        shape that no compiled code was made for (an epoch's last, shorter batch)."""
        self._plain = True
        try:
            yield
        finally:
            self._plain = False

    def batch(self, images: Tensor, labels: Tensor, train: bool,
              generator: torch.Generator) -> Batch:
        """`draw`, then `build`: the model's input and targets of a batch."""
        return self.build(self.draw(images, labels, train, generator))

    def draw(self, images: Tensor, labels: Tensor, train: bool,
             generator: torch.Generator) -> DrawnBatch:
        """Every random draw of a batch: training batches are augmented; pretraining adds
        mega-patches (applied here) and the patches' jitter and shuffle (drawn only)."""
        if train:
            images = self.augment(images, generator)
        grid = (self.geo.ssl_grid, self.geo.ssl_grid)
        if self.cfg.mode != "pretrain":
            return DrawnBatch(images, labels, grid)
        ssl, cell = self.cfg.ssl, self.geo.cell
        if self.geo.megapatch_side:
            images, _, _ = megapatch_images(images, cell, self.geo.megapatch_side, generator,
                                            symmetric=ssl.megapatch_symmetric)
        grid = (images.shape[-2] // cell, images.shape[-1] // cell)
        jitter = JITTER if train and ssl.jitter else None
        draws = draw_ssl_inputs(images, cell, jitter, train and ssl.shuffle, generator)
        return DrawnBatch(images, labels, grid, draws)

    def build(self, drawn: DrawnBatch) -> Batch:
        """The model's input of drawn images, with no randomness: the patches' jitter and
        permutation (pretrain), and the normalisation."""
        images, draws = drawn.images, drawn.draws
        if draws is None:
            return Batch(normalize(images, self.mean, self.std), drawn.labels, drawn.grid, None)
        after = self.cfg.ssl.jitter_after_normalize  # the original's order (Q5): jitter clamps
        if after:
            images = normalize(images, self.mean, self.std)
        images = apply_ssl_inputs(images, self.geo.cell, draws, JITTER,
                                  self._compiled_on(images.device))
        if not after:
            images = normalize(images, self.mean, self.std)
        return Batch(images, drawn.labels, drawn.grid, draws.perm)

    def step_losses(self, model: torch.nn.Module, drawn: DrawnBatch, autocast: bool
                    ) -> tuple[Tensor, dict[str, Tensor]]:
        """`build`, then `forward_losses`: the part of a training step that `compile_step`
        compiles as one region."""
        return self.forward_losses(model, self.build(drawn), autocast)

    def forward_losses(self, model: torch.nn.Module, batch: Batch, autocast: bool
                       ) -> tuple[Tensor, dict[str, Tensor]]:
        """`model`'s forward pass on a built batch (bf16 autocast with `autocast`), then
        `losses`."""
        precision = (torch.autocast(batch.images.device.type, dtype=torch.bfloat16) if autocast
                     else contextlib.nullcontext())
        with precision:
            out = model(batch.images)
        return self.losses(out, batch)

    def losses(self, out: dict[str, Tensor], batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """Unweighted sum of the active terms, and every term and accuracy (detached)."""
        terms: dict[str, Tensor] = {}
        stats: dict[str, Tensor] = {}
        h, w = batch.grid
        device = batch.images.device
        perm = batch.perm
        if "logits" in out:
            terms["loss_clf"] = torch.nn.functional.cross_entropy(out["logits"].float(), batch.labels)
            stats[TOP1] = losses.accuracy(out["logits"], batch.labels)
        if "relations" in out:
            rel, diagonal = out["relations"], self.cfg.ssl.relation_diagonal
            if isinstance(rel, PairProjections):  # fused: the N x N scores are never held
                target = relation_targets(h, w, perm, dtype=torch.uint8, device=device)
                terms["loss_rel"], stats[RELATIONS], stats[f"{RELATIONS}_all"] = \
                    losses.fused_relation_loss(rel, target, diagonal,
                                               compiled=self._compiled_on(device))
            else:  # the plain reference path
                target = relation_targets(h, w, perm, device=device)
                terms["loss_rel"] = losses.relation_loss(rel, target, diagonal)
                stats[RELATIONS] = losses.relation_accuracy(rel, target)
                stats[f"{RELATIONS}_all"] = losses.relation_accuracy(rel, target, True)
        if "positions" in out:
            target = position_targets(h * w, perm, device)
            terms["loss_pos"] = losses.token_classification_loss(out["positions"], target)
            stats[POSITIONS] = losses.accuracy(out["positions"], target)
        if "distances" in out:
            terms["loss_dist"] = losses.regression_loss(
                out["distances"], distance_targets(h, w, perm, device))
        if "angles" in out:
            terms["loss_angle"] = losses.regression_loss(
                out["angles"], angle_targets(h, w, perm, device))
        total = torch.stack(list(terms.values())).sum()
        stats.update({k: v.detach() for k, v in terms.items()})
        stats[LOSS] = total.detach()
        return total, stats
