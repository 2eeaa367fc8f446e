"""The per-patch input of RelViT pretraining on a whole batch: jitter and permutation (§2.1-2.2).

Two steps: `draw_ssl_inputs` makes every random draw of a batch (the permutation, then each
patch's jitter), `apply_ssl_inputs` applies them with no randomness; `jitter_and_shuffle` is both.
The draws can be made once and applied on any device (the CPU and CUDA results agree).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from relvit.ssl.jitter import JitterConfig, JitterParams, apply_jitter, sample_jitter_params
from relvit.ssl.patches import grid_shape, patchify, permute_patches, unpatchify

# On the CPU, work in chunks of at most this many bytes of images: glibc serves larger blocks with
# fresh mmap pages, and page-faulting them costs more than the jitter itself (measured 1.5x at
# 224 px, batch 256, in bench/bench_relvit.py). CUDA's caching allocator needs no chunking.
CPU_CHUNK_BYTES = 32 * 2**20


@dataclass
class SSLDraws:
    """The random draws of one batch: permutation [B, N] and per-patch jitter (B * N patches,
    image-major; None when off)."""

    perm: Tensor | None
    jitter: JitterParams | None

    def to(self, device: torch.device | str) -> SSLDraws:
        """The same draws on `device`."""
        return SSLDraws(None if self.perm is None else self.perm.to(device),
                        None if self.jitter is None else self.jitter.to(device))


def _chunk_images(images: Tensor) -> int:
    """Images per chunk: the whole batch on CUDA or in a compiled region (`compile_step`),
    `CPU_CHUNK_BYTES` worth on the CPU."""
    if images.is_cuda or torch.compiler.is_compiling():
        return max(1, images.shape[0])
    return max(1, CPU_CHUNK_BYTES // (images[0].numel() * images.element_size()))


def draw_ssl_inputs(images: Tensor, cell: int, jitter: JitterConfig | None, shuffle: bool,
                    generator: torch.Generator | None = None) -> SSLDraws:
    """Every draw of `jitter_and_shuffle` for [B, C, H, W] `images`, in the same order.

    The permutation is drawn on the images' device; the jitter on the generator's (default: the
    images'), one `sample_jitter_params` call per processing chunk as the applied code always did,
    so the random stream is the same as drawing and applying chunk by chunk.
    """
    b, _, h, w = images.shape
    rows, cols = grid_shape(h, w, cell)
    n = rows * cols
    perm = None
    if shuffle:
        noise = torch.rand(b, n, generator=generator, device=images.device)
        perm = noise.argsort(dim=1)
    params = None
    if jitter is not None and b > 0:
        device = generator.device if generator is not None else images.device
        step = _chunk_images(images)
        params = JitterParams.cat([
            sample_jitter_params(min(step, b - start) * n, cell, jitter, generator, device)
            for start in range(0, b, step)
        ])
    return SSLDraws(perm, params)


def apply_ssl_inputs(images: Tensor, cell: int, draws: SSLDraws,
                     jitter: JitterConfig | None, compiled: bool = False) -> Tensor:
    """Jitter every `cell` x `cell` patch of [B, C, H, W] images with `draws.jitter` (settings
    `jitter`; `compiled`: the torch.compile-d dense jitter), then move the patches by
    `draws.perm`; returns the new images."""
    if draws.jitter is None and draws.perm is None:
        return images
    b, _, h, w = images.shape
    rows, cols = grid_shape(h, w, cell)
    n = rows * cols
    draws = draws.to(images.device)
    step = _chunk_images(images)
    out = torch.empty_like(images)
    for start in range(0, b, step):
        stop = min(b, start + step)
        patches = patchify(images[start:stop], cell)
        if draws.jitter is not None:
            if jitter is None:
                raise ValueError("jitter draws need the jitter settings they were drawn for")
            flat = patches.reshape(-1, *patches.shape[-3:])
            flat = apply_jitter(flat, draws.jitter[start * n:stop * n], jitter,
                                compiled=compiled)
            patches = flat.view(patches.shape)
        if draws.perm is not None:
            patches = permute_patches(patches, draws.perm[start:stop])
        unpatchify(patches, (rows, cols), out=out[start:stop])
    return out


def jitter_and_shuffle(
    images: Tensor,
    cell: int,
    jitter: JitterConfig | None,
    shuffle: bool,
    generator: torch.Generator | None = None,
    compiled: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Jitter every `cell` x `cell` patch of [B, C, H, W] images and/or permute the patches.

    Returns the new images and the permutation [B, N] (slot k holds original cell perm[b, k];
    None without shuffle), from which `relvit.ssl.targets` builds the matching targets.
    """
    draws = draw_ssl_inputs(images, cell, jitter, shuffle, generator)
    return apply_ssl_inputs(images, cell, draws, jitter, compiled), draws.perm
