"""Batched image augmentation on tensors (CPU or GPU), drawn from an explicit generator."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from relvit.compiled import device_constant


def random_crop(images: Tensor, padding: int, generator: torch.Generator | None = None) -> Tensor:
    """torchvision RandomCrop(size, padding) for a batch: zero-pad, then crop at random offsets."""
    if padding <= 0:
        return images
    b, c, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    top = torch.randint(0, 2 * padding + 1, (b, 1), generator=generator, device=images.device)
    left = torch.randint(0, 2 * padding + 1, (b, 1), generator=generator, device=images.device)
    rows = (top + torch.arange(h, device=images.device))[:, None, :, None]  # [B, 1, H, 1]
    cols = (left + torch.arange(w, device=images.device))[:, None, None, :]  # [B, 1, 1, W]
    batch = torch.arange(b, device=images.device)[:, None, None, None]
    channel = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def random_hflip(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Flip each image horizontally with probability 0.5."""
    flip = torch.rand(images.shape[0], generator=generator, device=images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


@device_constant
def _channel_constants(values: tuple[float, ...], device: torch.device,
                       dtype: torch.dtype) -> Tensor:
    """[1, C, 1, 1] made on `device` from the scalars `values` (kept: no host-to-device copy per
    batch, which would wait for the GPU)."""
    return torch.stack([torch.full((), v, dtype=dtype, device=device) for v in values]
                       ).view(1, -1, 1, 1)


def normalize(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """(images - mean) / std per channel."""
    m = _channel_constants(tuple(mean), images.device, images.dtype)
    s = _channel_constants(tuple(std), images.device, images.dtype)
    return (images - m) / s
