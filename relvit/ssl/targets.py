"""SSL targets of RelViT (method spec §1.2-1.5), computed once per grid and indexed by a permutation.

Every function takes the grid (rows h, cols w; patch i sits at row i // w, column i % w) and an
optional permutation `perm` ([N] or batched [B, N]): input slot k holds the patch of original cell
perm[k], so pairwise target (k, l) = base(perm[k], perm[l]) and position target k = perm[k].
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from relvit.compiled import device_constant
from relvit.geometry import RELATION_NAMES
CENTRE = RELATION_NAMES.index("CC")


def _check_grid(h: int, w: int) -> None:
    if h < 1 or w < 1:
        raise ValueError(f"grid must be at least 1x1, got {h}x{w}")


def _coords(h: int, w: int, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """Row and column of every cell of an h x w grid in row-major order (long)."""
    _check_grid(h, w)
    index = torch.arange(h * w, device=device)
    return index // w, index % w


def _relation_base(h: int, w: int, device: torch.device | None = None) -> Tensor:
    rows, cols = _coords(h, w, device)
    vertical = torch.sign(rows[:, None] - rows[None, :]) + 1  # 0 = i above j (U), 2 = below (D)
    horizontal = torch.sign(cols[:, None] - cols[None, :]) + 1  # 0 = i left of j (L), 2 = right
    return 3 * vertical + horizontal


def _distance_base(h: int, w: int, device: torch.device | None = None) -> Tensor:
    rows, cols = _coords(h, w, device)
    points = torch.stack([cols, rows], dim=-1).float()
    # exact on every device (cdist takes a matrix-product formula for over 25 cells: TF32 on
    # CUDA where that is on)
    dist = (points[:, None] - points[None, :]).square().sum(dim=-1).sqrt()
    # more than one cell: top > 0 (a condition on the grid, not on a tensor's value, which
    # would read it on the host and break a compiled region)
    return dist / dist.max() * 2 - 1 if h * w > 1 else dist - 1


def _angle_base(h: int, w: int, device: torch.device | None = None) -> Tensor:
    rows, cols = _coords(h, w, device)
    # The original measures positions from (-w/2, -h/2) (a shift of +side/2, method spec Q14).
    points = torch.stack([cols + w / 2, rows + h / 2], dim=-1).double()
    norms = points.norm(dim=-1)
    cosine = (points @ points.T) / (norms[:, None] * norms[None, :] + 1e-4)
    angle = torch.arccos(cosine.clamp(-1.0, 1.0)) / math.pi
    angle.fill_diagonal_(0.0)
    # more than one cell: two of them lie on different rays from the origin, so top > 0
    angle = angle / angle.max() * 2 - 1 if h * w > 1 else angle - 1
    return angle.float()


_BASES = {"relation": _relation_base, "distance": _distance_base, "angle": _angle_base}


@device_constant
def _table(kind: str, h: int, w: int, device: torch.device, dtype: torch.dtype | None) -> Tensor:
    """A base table made on `device` in `dtype` (`device_constant`: kept when eager, made in the
    graph of a compiled region)."""
    base = _BASES[kind](h, w, device)
    return base.to(dtype or base.dtype)


def _index_pairs(kind: str, h: int, w: int, perm: Tensor | None,
                 device: torch.device | str | None, dtype: torch.dtype | None) -> Tensor:
    if perm is not None:
        device = perm.device
    base = _table(kind, h, w, torch.device(device if device is not None else "cpu"), dtype)
    if perm is None:
        return base.clone()
    if perm.dim() == 1:
        return base[perm[:, None], perm[None, :]]
    return base[perm[:, :, None], perm[:, None, :]]


def _check_perm(n: int, perm: Tensor | None) -> None:
    if perm is not None and perm.shape[-1] != n:
        raise ValueError(f"permutation has {perm.shape[-1]} entries, the grid has {n} cells")


def relation_targets(h: int, w: int, perm: Tensor | None = None,
                     device: torch.device | str | None = None,
                     dtype: torch.dtype | None = None) -> Tensor:
    """9-class compass code [N, N] (or [B, N, N]): where patch i lies relative to patch j.

    label(i, j) = 3 * (sign(r_i - r_j) + 1) + (sign(c_i - c_j) + 1), so LU=0, CU=1, RU=2, LC=3,
    CC=4 (diagonal only), RC=5, LD=6, CD=7, RD=8 and label(j, i) = 8 - label(i, j).
    Made on `perm`'s device (else `device`, default CPU), long unless `dtype` (e.g. uint8) says.
    """
    _check_perm(h * w, perm)
    return _index_pairs("relation", h, w, perm, device, dtype)


def position_targets(n: int, perm: Tensor | None = None,
                     device: torch.device | str | None = None) -> Tensor:
    """Absolute position class of every input slot: the original cell index (perm[k] or k)."""
    _check_perm(n, perm)
    return torch.arange(n, device=device) if perm is None else perm.clone().long()


def distance_targets(h: int, w: int, perm: Tensor | None = None,
                     device: torch.device | str | None = None) -> Tensor:
    """Euclidean distance between the two cells, divided by the grid's largest, mapped to [-1, 1].

    The diagonal is -1 (a 1x1 grid gives -1 everywhere).
    """
    _check_perm(h * w, perm)
    return _index_pairs("distance", h, w, perm, device, None)


def angle_targets(h: int, w: int, perm: Tensor | None = None,
                  device: torch.device | str | None = None) -> Tensor:
    """The original code's "angle": angle between the two cells' position vectors, origin at
    (-w/2, -h/2), divided by pi, diagonal 0, min-max rescaled to [-1, 1] (method spec §1.5, Q14).
    """
    _check_perm(h * w, perm)
    return _index_pairs("angle", h, w, perm, device, None)
