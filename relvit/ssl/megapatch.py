"""Mega-patches (method spec §2.3): cut the base grid into S x S rectangles of whole patches and
resize every rectangle to one p x p cell, giving an S*p x S*p image whose tokens cover 1x1, 1x2,
2x2, ... base patches.

By default rows and columns get independent cuts; `symmetric=True` reproduces the original code,
which used the row cuts for the columns too (method spec Q7).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import roi_align


def sample_cuts(
    batch: int, grid: int, side: int, generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Segment boundaries [B, S+1] in base-patch units: 0, S-1 distinct sorted cuts in 1..g-1, g."""
    if not 1 <= side <= grid:
        raise ValueError(f"mega-patch side {side} must be between 1 and the base grid side {grid}")
    noise = torch.rand(batch, grid - 1, generator=generator, device=device)
    cuts = noise.argsort(dim=1)[:, : side - 1].sort(dim=1).values + 1
    zeros = torch.zeros(batch, 1, dtype=torch.long, device=cuts.device)
    return torch.cat([zeros, cuts, torch.full_like(zeros, grid)], dim=1)


def megapatch_images(
    images: Tensor,
    patch_size: int,
    side: int,
    generator: torch.Generator | None = None,
    symmetric: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """[B, C, H, H] -> ([B, C, S*p, S*p], row bounds [B, S+1], column bounds [B, S+1]).

    Each of the S x S rectangles is resized bilinearly (align_corners=False) to p x p; done for all
    rectangles at once with `roi_align`, which samples the same points as `F.interpolate` because
    every rectangle is at least p pixels on each side.
    """
    b, c, h, w = images.shape
    if h != w or h % patch_size:
        raise ValueError(f"mega-patches need a square image divisible by {patch_size}, got {h}x{w}")
    grid = h // patch_size
    rows = sample_cuts(b, grid, side, generator, images.device)
    cols = rows if symmetric else sample_cuts(b, grid, side, generator, images.device)
    y0, y1 = rows[:, :-1, None], rows[:, 1:, None]  # [B, S, 1]
    x0, x1 = cols[:, None, :-1], cols[:, None, 1:]  # [B, 1, S]
    batch_index = torch.arange(b, device=images.device)[:, None, None]
    boxes = torch.stack(
        torch.broadcast_tensors(batch_index, x0, y0, x1, y1), dim=-1
    ).reshape(-1, 5).to(images.dtype)
    boxes[:, 1:] *= patch_size
    cells = roi_align(images, boxes, output_size=patch_size, sampling_ratio=1, aligned=True)
    cells = cells.reshape(b, side, side, c, patch_size, patch_size)
    out = cells.permute(0, 3, 1, 4, 2, 5).reshape(b, c, side * patch_size, side * patch_size)
    return out, rows, cols
