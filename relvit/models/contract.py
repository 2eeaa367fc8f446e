"""The one contract every backbone meets, so heads and necks never care which backbone they use."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn


class Tokens(NamedTuple):
    """What a backbone returns: the CLS output (or None), patch tokens [B, N, D] and their grid."""

    cls: Tensor | None
    patches: Tensor
    grid: tuple[int, int]


class Backbone(nn.Module):
    """Base class: subclasses set `embed_dim` and `ssl_pool` and implement `tokens`.

    `ssl_pool` is the factor by which RelViT average-pools the token grid before the SSL heads
    (2 for T2T-ViT, whose 14x14 tokens become the 7x7 SSL grid; 1 otherwise).
    """

    embed_dim: int
    ssl_pool: int = 1
    # the classifier's init: nn.Linear's default, or trunc-normal weights of this std and zero
    # bias, as the original's backbone initialises its own head
    classifier_init_std: float | None = None

    def tokens(self, images: Tensor) -> Tokens:  # pragma: no cover - abstract
        raise NotImplementedError

    def token_grid(self, image_size: int) -> tuple[int, int]:
        """The (rows, cols) of the token grid for a square input of side `image_size`."""
        raise NotImplementedError  # pragma: no cover - abstract
