"""The per-patch input of RelViT pretraining on a whole batch: jitter and permutation (§2.1-2.2)."""

from __future__ import annotations

import torch
from torch import Tensor

from relvit.ssl.jitter import JitterConfig, jitter_patches
from relvit.ssl.patches import grid_shape, patchify, permute_patches, unpatchify

# On the CPU, work in chunks of at most this many bytes of images: glibc serves larger blocks with
# fresh mmap pages, and page-faulting them costs more than the jitter itself (measured 1.5x at
# 224 px, batch 256, in bench/bench_relvit.py). CUDA's caching allocator needs no chunking.
CPU_CHUNK_BYTES = 32 * 2**20


def jitter_and_shuffle(
    images: Tensor,
    cell: int,
    jitter: JitterConfig | None,
    shuffle: bool,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Jitter every `cell` x `cell` patch of [B, C, H, W] images and/or permute the patches.

    Returns the new images and the permutation [B, N] (slot k holds original cell perm[b, k];
    None without shuffle), from which `relvit.ssl.targets` builds the matching targets.
    """
    b, _, h, w = images.shape
    rows, cols = grid_shape(h, w, cell)
    perm = None
    if shuffle:
        noise = torch.rand(b, rows * cols, generator=generator, device=images.device)
        perm = noise.argsort(dim=1)
    if jitter is None and perm is None:
        return images, None
    per_image = images[0].numel() * images.element_size()
    step = b if images.is_cuda else max(1, CPU_CHUNK_BYTES // per_image)
    out = torch.empty_like(images)
    for start in range(0, b, step):
        patches = patchify(images[start:start + step], cell)
        if jitter is not None:
            patches = jitter_patches(patches, jitter, generator)
        if perm is not None:
            patches = permute_patches(patches, perm[start:start + step])
        out[start:start + step] = unpatchify(patches, (rows, cols))
    return out, perm
