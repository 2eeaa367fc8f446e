"""Per-sample reference of the per-patch jitter, written like the original dataset code.

`reference_jitter_image` follows `datasets/patch_transforms.py` of the original repository: torchvision
transforms applied patch by patch with torch's global RNG. It is the speed baseline of the batched
`relvit.ssl.jitter` and, with `reference_apply_params` (same draws, torchvision functional ops, one
patch at a time), its test oracle.
"""

from __future__ import annotations

import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from torch import Tensor

from relvit.ssl.jitter import JitterConfig, JitterParams, crop_size
from relvit.ssl.patches import grid_shape, patchify, unpatchify


class _PerPatch:
    """Apply a transform to every patch of a [N, C, p, p] stack (the original ``PerPatchAug``)."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, x: Tensor) -> Tensor:
        return torch.stack([self.fn(x_p) for x_p in x], 0)


def reference_transform(patch_size: int, cfg: JitterConfig = JitterConfig()) -> T.Compose:
    """The original per-image patch transform on a [N, C, p, p] stack of patches."""
    tf = []
    if cfg.crop:
        tf += [_PerPatch(T.RandomCrop(crop_size(patch_size))), T.Resize(patch_size)]
    tf += [
        _PerPatch(
            T.RandomApply(
                [T.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)],
                p=cfg.color_jitter_p,
            )
        ),
        _PerPatch(T.RandomGrayscale(p=cfg.grayscale_p)),
    ]
    return T.Compose(tf)


def reference_jitter_image(
    image: Tensor, patch_size: int, cfg: JitterConfig = JitterConfig()
) -> Tensor:
    """Jitter one image [C, H, W] in [0, 1] patch by patch with torchvision (global RNG)."""
    grid = grid_shape(image.shape[-2], image.shape[-1], patch_size)
    patches = patchify(image.unsqueeze(0), patch_size)[0]
    out = reference_transform(patch_size, cfg)(patches)
    return unpatchify(out.unsqueeze(0), grid)[0]


def reference_apply_params(patches: Tensor, params: JitterParams, cfg: JitterConfig) -> Tensor:
    """Apply the draws `params` to `patches` [M, C, p, p] one patch at a time (torchvision F ops)."""
    p = patches.shape[-1]
    c = crop_size(p)
    # torchvision decides which colour ops exist (None = off) exactly as ColorJitter does
    cj = T.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)
    ops = (
        (cj.brightness, TF.adjust_brightness, params.brightness),
        (cj.contrast, TF.adjust_contrast, params.contrast),
        (cj.saturation, TF.adjust_saturation, params.saturation),
        (cj.hue, TF.adjust_hue, params.hue),
    )
    out = []
    for i, x in enumerate(patches):
        if cfg.crop:
            x = TF.crop(x, int(params.crop_top[i]), int(params.crop_left[i]), c, c)
            x = TF.resize(x, [p, p])
        if bool(params.apply_color[i]):
            for fn_id in params.order[i].tolist():
                rng, fn, factor = ops[fn_id]
                if rng is not None:
                    x = fn(x, float(factor[i]))
        if bool(params.grayscale[i]):
            x = TF.rgb_to_grayscale(x, num_output_channels=x.shape[0])
        out.append(x)
    return torch.stack(out, 0)
