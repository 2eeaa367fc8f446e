"""Split images into a grid of patches and put them back together (row-major order)."""

from __future__ import annotations

import torch
from torch import Tensor


def grid_shape(height: int, width: int, patch_size: int) -> tuple[int, int]:
    """The (rows, cols) of the patch grid; raises if the patch size does not divide the image."""
    if patch_size <= 0 or height % patch_size or width % patch_size:
        raise ValueError(
            f"patch size {patch_size} does not divide the image size {height}x{width}"
        )
    return height // patch_size, width // patch_size


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """[B, C, H, W] -> [B, N, C, p, p] with patch k at grid cell (k // cols, k % cols)."""
    b, c, h, w = images.shape
    rows, cols = grid_shape(h, w, patch_size)
    p = patch_size
    x = images.reshape(b, c, rows, p, cols, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, rows * cols, c, p, p)


def unpatchify(patches: Tensor, grid: tuple[int, int], out: Tensor | None = None) -> Tensor:
    """Inverse of `patchify`: [B, N, C, p, p] on a (rows, cols) grid -> [B, C, rows*p, cols*p].

    With `out` (contiguous, of that shape) the images are written there, in one copy."""
    b, n, c, p, _ = patches.shape
    rows, cols = grid
    if rows * cols != n:
        raise ValueError(f"grid {rows}x{cols} does not hold {n} patches")
    x = patches.reshape(b, rows, cols, c, p, p).permute(0, 3, 1, 4, 2, 5)
    if out is None:
        return x.reshape(b, c, rows * p, cols * p)
    out.view(b, c, rows, p, cols, p).copy_(x)
    return out


def permute_patches(patches: Tensor, perm: Tensor) -> Tensor:
    """Put into slot k the patch of original cell perm[b, k]; perm is [B, N] (or [N])."""
    if perm.dim() == 1:
        return patches[:, perm]
    b, n = perm.shape
    rows = (perm + torch.arange(b, device=perm.device)[:, None] * n).reshape(-1)
    return patches.reshape(b * n, *patches.shape[2:]).index_select(0, rows).view(patches.shape)
