"""Batched per-patch jitter (RelViT §2.1), vectorised over all patches of a batch.

Reproduces, patch by patch, the original per-sample pipeline of `datasets/patch_transforms.py`
(see `relvit.ssl.jitter_reference`):

1. ``RandomCrop(round(p / 1.15))`` then bilinear ``Resize(p)`` (torchvision, tensors);
2. ``RandomApply([ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8)`` — four ops in a random order per patch;
3. ``RandomGrayscale(p=0.2)``.

The random draws are made once for all M patches (`sample_jitter_params`) and applied with tensor
operations whose number does not depend on M (`apply_jitter`). Inputs are un-normalised images in
[0, 1] (jitter runs before normalisation, method doc §8 Q5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from relvit.compiled import compiled_variant, device_constant

# Op ids as in torchvision's ColorJitter ``fn_idx``.
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3
_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision rgb_to_grayscale
# On the CPU the dense path is the faster one up to about this many patch elements (M * C * p * p):
# its fixed op sequence beats the sorted path's loop over up to 25 groups on small batches (the
# digits' 1,024 patches of 3 x 4 x 4: 0.29-0.37x the time; a digits pretrain run 5-8 % faster,
# the same numbers), and breaks even at about 1.5x this size (the 2-core development VM).
CPU_DENSE_MAX_ELEMENTS = 2**17


@dataclass(frozen=True)
class JitterConfig:
    """Per-patch jitter settings; the defaults are the hard-coded values of the original code."""

    crop: bool = True  # random crop of side round(p / 1.15) then bilinear resize back to p
    color_jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_p: float = 0.2


@dataclass
class JitterParams:
    """Per-patch random draws, every tensor has leading dim M (number of patches)."""

    crop_top: Tensor  # long [M]
    crop_left: Tensor  # long [M]
    apply_color: Tensor  # bool [M]
    order: Tensor  # long [M, 4], permutation of (0 brightness, 1 contrast, 2 saturation, 3 hue)
    brightness: Tensor  # float [M] factor in [1-b, 1+b]
    contrast: Tensor  # float [M]
    saturation: Tensor  # float [M]
    hue: Tensor  # float [M] in [-h, h]
    grayscale: Tensor  # bool [M]

    @property
    def num_patches(self) -> int:
        """M, the number of patches the draws are for."""
        return int(self.crop_top.shape[0])

    def to(self, device: torch.device | str) -> JitterParams:
        """The same draws on `device` (self when already there)."""
        if self.crop_top.device == torch.device(device):
            return self
        return JitterParams(**{k: getattr(self, k).to(device) for k in self.__dataclass_fields__})

    def __getitem__(self, index: slice) -> JitterParams:
        """The draws of patches `index` (a slice)."""
        return JitterParams(**{k: getattr(self, k)[index] for k in self.__dataclass_fields__})

    @staticmethod
    def cat(parts: list[JitterParams]) -> JitterParams:
        """The draws of consecutive patch ranges, joined."""
        if len(parts) == 1:
            return parts[0]
        return JitterParams(**{k: torch.cat([getattr(p, k) for p in parts])
                               for k in JitterParams.__dataclass_fields__})


def crop_size(patch_size: int) -> int:
    """Side of the random crop: round(p / 1.15), rounding half to even like ``np.round``."""
    if patch_size <= 0:
        raise ValueError(f"patch size must be positive, got {patch_size}")
    return max(1, int(round(patch_size / 1.15)))


def _factor_range(value: float, center: float, clip_zero: bool) -> tuple[float, float] | None:
    """torchvision ``ColorJitter._check_input`` for a scalar: None means the op is switched off."""
    if value < 0:
        raise ValueError(f"jitter strength must be non-negative, got {value}")
    lo, hi = center - value, center + value
    if clip_zero:
        lo = max(lo, 0.0)
    if lo == hi == center:
        return None
    return lo, hi


def color_ranges(cfg: JitterConfig) -> tuple[tuple[float, float] | None, ...]:
    """Factor ranges (brightness, contrast, saturation, hue); None marks a disabled op."""
    if not 0.0 <= cfg.hue <= 0.5:
        raise ValueError(f"hue must be in [0, 0.5], got {cfg.hue}")
    return (
        _factor_range(cfg.brightness, 1.0, True),
        _factor_range(cfg.contrast, 1.0, True),
        _factor_range(cfg.saturation, 1.0, True),
        _factor_range(cfg.hue, 0.0, False),
    )


def sample_jitter_params(
    num_patches: int,
    patch_size: int,
    cfg: JitterConfig,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> JitterParams:
    """Draw the jitter of `num_patches` patches with torchvision's distributions.

    Draws are made on `device` (default: the generator's device, else CPU) with `generator`.
    """
    m = num_patches
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    kw = {"generator": generator, "device": device}
    c = crop_size(patch_size)
    span = patch_size - c + 1
    if cfg.crop and span > 1:
        top = torch.randint(0, span, (m,), **kw)
        left = torch.randint(0, span, (m,), **kw)
    else:
        top = torch.zeros(m, dtype=torch.long, device=device)
        left = torch.zeros(m, dtype=torch.long, device=device)
    apply_color = torch.rand(m, **kw) < cfg.color_jitter_p
    order = torch.argsort(torch.rand(m, 4, **kw), dim=1)
    factors = []
    for rng, neutral in zip(color_ranges(cfg), (1.0, 1.0, 1.0, 0.0)):
        f = torch.empty(m, device=device)
        if rng is None:
            f.fill_(neutral)
        else:
            f.uniform_(rng[0], rng[1], generator=generator)
        factors.append(f)
    grayscale = torch.rand(m, **kw) < cfg.grayscale_p
    return JitterParams(top, left, apply_color, order, *factors, grayscale)


# --------------------------------------------------------------------------- crop + resize

def resize_matrix(in_size: int, out_size: int, device: torch.device | None = None) -> Tensor:
    """[out, in] float64 matrix of 1-D bilinear interpolation, align_corners=False, on `device`.

    Same weights as ``F.interpolate(mode='bilinear', align_corners=False)`` (source coordinate
    (i + 0.5) * in / out - 0.5 clamped at 0, right neighbour clamped at in - 1); for upsampling
    torchvision's antialiased resize uses the same weights.
    """
    scale = in_size / out_size
    out = torch.arange(out_size, dtype=torch.float64, device=device)
    src = ((out + 0.5) * scale - 0.5).clamp(min=0.0)
    left = src.long().clamp(max=in_size - 1)  # src >= 0: the cast floors
    right = (left + 1).clamp(max=in_size - 1)
    lam = (src - left)[:, None]
    cols = torch.arange(in_size, device=device)
    return (cols == left[:, None]) * (1.0 - lam) + (cols == right[:, None]) * lam


@device_constant
def _crop_resize_matrices(patch_size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """`crop_resize_matrices`, made on `device` by tensor ops."""
    c = crop_size(patch_size)
    r = resize_matrix(c, patch_size, device)  # [p, c]
    # shift[o, k] = k - o: column k of crop o is column k - o of the crop, when inside it
    shift = (torch.arange(patch_size, device=device)
             - torch.arange(patch_size - c + 1, device=device)[:, None])
    inside = (shift >= 0) & (shift < c)
    mats = r[:, shift.clamp(0, c - 1)].transpose(0, 1)  # [p - c + 1, p, p]
    return torch.where(inside[:, None, :], mats, 0.0).to(dtype)


def crop_resize_matrices(
    patch_size: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """[p - c + 1, p, p]: matrix o maps a length-p line to its crop [o, o + c) resized back to p
    (made on `device`; `device_constant`)."""
    return _crop_resize_matrices(patch_size, torch.device(device if device is not None else "cpu"),
                                 dtype)


def _crop_resize_transposed(x: Tensor, params: JitterParams) -> tuple[Tensor, Tensor]:
    """Crop + resize of every patch as out[m, c] = A[top[m]] @ x[m, c] @ A[left[m]]^T.

    Returns (z, w): w holds the result with the two spatial axes swapped and the channels in the
    middle, w[m, l, c, i] = out[m, c, i, l] (logical view ``w.permute(0, 2, 3, 1)``); this layout
    needs no transposing copy between the two batched matmuls. z is the (dead) intermediate,
    returned so that its memory can be reused.
    """
    m, ch, p, _ = x.shape
    mats = crop_resize_matrices(p, x.device, x.dtype)
    # z[m, l, (c, i)] = sum_k A_left[m][l, k] x[m, c, i, k]
    z = torch.bmm(mats[params.crop_left], x.reshape(m, ch * p, p).transpose(1, 2))
    # w[m, (l, c), i'] = sum_i z[m, l, c, i] A_top[m][i', i]
    w = torch.bmm(z.view(m, p * ch, p), mats[params.crop_top].transpose(1, 2))
    return z, w.view(m, p, ch, p)


# --------------------------------------------------------------------------- colour ops
# Each op works in place on a contiguous stack [n, C, p, p] with per-patch factors f [n].


def _gray(x: Tensor) -> Tensor:
    """[n, 3, p, p] -> [n, 1, p, p] luma with torchvision's weights."""
    g = x[:, 0:1] * _GRAY_WEIGHTS[0]
    g.add_(x[:, 1:2], alpha=_GRAY_WEIGHTS[1])
    return g.add_(x[:, 2:3], alpha=_GRAY_WEIGHTS[2])


def _per_patch(f: Tensor) -> Tensor:
    return f.view(-1, 1, 1, 1)


def _brightness(x: Tensor, f: Tensor) -> None:
    """torchvision adjust_brightness: clamp(f * x, 0, 1)."""
    x.mul_(_per_patch(f)).clamp_(0.0, 1.0)


def _gray_mean(x: Tensor, gray: Tensor | None = None) -> Tensor:
    """[n]: the mean of each patch's grayscale image (`gray`, when made already), as
    torchvision's adjust_contrast; a 1-channel patch is its own grayscale."""
    if gray is None:
        gray = _gray(x) if x.shape[1] == 3 else x
    return gray.mean(dim=(1, 2, 3))


# Contrast and saturation blend as x * f + term in one op (`addcmul`, rounded once; torchvision
# rounds the product and the sum, so their values may differ by an ulp), the same on both paths.


def _contrast(x: Tensor, f: Tensor) -> None:
    """torchvision adjust_contrast: blend with the mean of the patch's grayscale."""
    shift = (1.0 - f) * _gray_mean(x)  # before x changes
    torch.addcmul(_per_patch(shift), x, _per_patch(f), out=x).clamp_(0.0, 1.0)


def _saturation(x: Tensor, f: Tensor) -> None:
    """torchvision adjust_saturation: blend with the grayscale image."""
    term = _gray(x).mul_(_per_patch(1.0 - f))
    torch.addcmul(term, x, _per_patch(f), out=x).clamp_(0.0, 1.0)


def _hue_terms(x: Tensor, f: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """torchvision adjust_hue (rgb -> hsv, h = (h + f) mod 1, hsv -> rgb) of x [n, 3, p, p] is
    v - cr * k per channel; returns v [n, p, p], k [3, n, p, p] (the channels first), cr.

    With v = max, cr = max - min (so v * s = cr) and h6 = 6 h, torchvision's ``_hsv2rgb`` equals
    channel_n = v - cr * clamp(min(k', 4 - k'), 0, 1) with k' = (h6 + n) mod 6, n = 5, 3, 1 for
    R, G, B. h6 before the shift is ``_rgb2hsv``'s sector formula (max channel r, else g, else b).
    """
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    maxc = torch.maximum(r, g)
    torch.maximum(maxc, b, out=maxc)
    cr = torch.minimum(r, g)
    torch.minimum(cr, b, out=cr)
    torch.sub(maxc, cr, out=cr)
    # exclusive 0/1 masks of the max channel (float arithmetic: bool `where` is slow on CPU)
    m_r = torch.eq(maxc, r, out=torch.empty_like(maxc))
    m_g = torch.eq(maxc, g, out=torch.empty_like(maxc))
    m_g.addcmul_(m_g, m_r, value=-1.0)
    h6 = torch.sub(g, b).mul_(m_r)
    h6.addcmul_(b - r, m_g)
    m_b = m_r.add_(m_g).neg_().add_(1.0)  # reuses m_r
    h6.addcmul_(r - g, m_b)
    # gray pixels (cr = 0) have a zero numerator, any finite divisor gives h = 0 as torchvision
    h6.div_(cr.clamp_min(torch.finfo(x.dtype).tiny))
    h6.add_(m_g, alpha=2.0).add_(m_b, alpha=4.0).add_((6.0 * f).view(-1, 1, 1))
    # 5, 3, 1 made on the device (a host tensor's copy would wait for the GPU; a cache of it
    # would make torch.compile trace this function twice, before and after the cache is filled)
    k = h6 + torch.arange(5, 0, -2, device=x.device, dtype=x.dtype).view(3, 1, 1, 1)
    # clamp(min(k, 4 - k), 0, 1): k below 2 is taken as it is, 4 - k exactly from 2 up
    k.remainder_(6.0)
    return maxc, torch.minimum(k, torch.rsub(k, 4.0), out=k).clamp_(0.0, 1.0), cr


def _hue_planar(x: Tensor, f: Tensor) -> Tensor:
    """adjust_hue of x [n, 3, p, p] as a new [3, n, p, p] tensor.

    torchvision's ``_hsv2rgb`` clamps its p, q, t terms (k > 0) to [0, 1] but not v (k = 0).
    Inside [0, 1] that changes nothing; jitter on normalised patches (`ssl.jitter_after_normalize`,
    the original's order, Q5) has values outside it."""
    maxc, k, cr = _hue_terms(x, f)
    out = torch.addcmul(maxc, k, cr, value=-1.0)
    return torch.where(k > 0.0, out.clamp(0.0, 1.0), out)


def _hue_of(x: Tensor, f: Tensor) -> Tensor:
    """adjust_hue as a new tensor, channel-planar ([3, n, p, p] memory behind the [n, 3, p, p]
    view; the dense path, which torch.compile traces: no `out=` tensor that is not contiguous)."""
    return _hue_planar(x, f).transpose(0, 1)


def _hue(x: Tensor, f: Tensor) -> None:
    """adjust_hue in place (the sorted path's slices)."""
    x.transpose(0, 1).copy_(_hue_planar(x, f))


def _to_grayscale(x: Tensor) -> None:
    """torchvision rgb_to_grayscale(num_output_channels=3), in place."""
    x.copy_(_gray(x).expand_as(x))


_OPS = (_brightness, _contrast, _saturation, _hue)
_NO_COLOR = 4**4  # sort code of patches without colour jitter (after the 256 op orders)


def _groups(params: JitterParams, enabled: list[bool]) -> tuple[Tensor, list[tuple[int, int, int]]]:
    """Sort the patches by (colour-op order, grayscale); return the permutation and its groups.

    Each group is (key, start, end) over the sorted patches with key = 2 * code + grayscale, code =
    the op order in base 4 (or _NO_COLOR). There are at most 2 * 25 groups whatever M is.
    """
    order = params.order
    code = ((order[:, 0] * 4 + order[:, 1]) * 4 + order[:, 2]) * 4 + order[:, 3]
    active = params.apply_color if any(enabled) else torch.zeros_like(params.apply_color)
    key = torch.where(active, code, _NO_COLOR) * 2 + params.grayscale.long()
    sorted_key, perm = torch.sort(key, stable=True)
    keys, counts = torch.unique_consecutive(sorted_key, return_counts=True)
    groups, start = [], 0
    for k, n in zip(keys.tolist(), counts.tolist()):
        groups.append((k, start, start + n))
        start += n
    return perm, groups


def _decode(code: int) -> tuple[int, ...]:
    return (code >> 6 & 3, code >> 4 & 3, code >> 2 & 3, code & 3)


def _jitter_sorted(buf: Tensor, factors: Tensor, groups, enabled: list[bool]) -> None:
    """Colour jitter then grayscale, in place, on patches sorted by `_groups` (loop over groups)."""
    rgb = buf.shape[1] == 3
    i = 0
    while i < len(groups):
        key, start, end = groups[i]
        code = key >> 1
        # a colour group is its non-gray part followed by its gray part: one slice for the ops
        if key & 1 == 0 and i + 1 < len(groups) and groups[i + 1][0] == key + 1:
            end = groups[i + 1][2]
            gray_start = groups[i + 1][1]
            i += 2
        else:
            gray_start = start if key & 1 else end
            i += 1
        if code != _NO_COLOR:
            sl = buf[start:end]
            for op in _decode(code):
                if enabled[op]:
                    _OPS[op](sl, factors[op, start:end])
        if rgb and gray_start < end:
            _to_grayscale(buf[gray_start:end])


@dataclass
class _BlendPasses:
    """The per-patch coefficients of the dense path's blend passes, all [S, M] (S passes).

    Brightness, contrast and saturation are one blend: clamp(f * x + (1 - f) * z) with z = 0
    (brightness), the patch's gray mean (contrast) or its grayscale image (saturation). A pass
    computes x * scale + shift * gray_mean(x) + gray(x) * mix, clamped to [low, high]: per patch
    the chosen op's factors and [0, 1], elsewhere neutral ones, (1, 0, 0) and no bounds, which
    leave the patch as it was (x * 1 + 0 + 0, also outside [0, 1], as after normalising). The
    same float operations as the separate ops, so bit-identical to applying the chosen one
    (`_jitter_sorted`).
    """

    scale: Tensor
    shift: Tensor  # multiplies the patch's gray mean
    mix: Tensor  # multiplies the patch's grayscale image
    low: Tensor  # 0 where a blend op was drawn for the patch in this pass, else -inf
    high: Tensor  # 1 there, else inf

    @staticmethod
    def of(ops: Tensor, take: Tensor, factors: Tensor, enabled: list[bool]) -> _BlendPasses:
        """From the op id [S, M] each pass reads (at its order position) and whether it may
        apply it `take` [S, M]; `factors` [4, M]. A few ops on [S, M] for all passes at once."""
        chosen = [(ops == op) & take if enabled[op] else torch.zeros_like(take)
                  for op in (BRIGHTNESS, CONTRAST, SATURATION)]
        brightness, contrast, saturation = chosen
        scale = torch.where(brightness, factors[BRIGHTNESS],
                            torch.where(contrast, factors[CONTRAST],
                                        torch.where(saturation, factors[SATURATION], 1.0)))
        low = torch.where(brightness | contrast | saturation, 0.0, -math.inf)
        return _BlendPasses(scale, torch.where(contrast, 1.0 - factors[CONTRAST], 0.0),
                            torch.where(saturation, 1.0 - factors[SATURATION], 0.0),
                            low, 1.0 - low)

    def apply(self, x: Tensor, i: int, enabled: list[bool]) -> Tensor:
        """Pass `i` on patches x [M, C, p, p]; returns a new tensor: x * scale + term, clamped,
        with term = shift * gray mean + gray * mix ([M, 1, p, p]; one of the two is 0 per
        patch), the one op of `_contrast` and `_saturation`."""
        gray = _gray(x) if enabled[SATURATION] else None  # off for 1-channel patches
        term = _per_patch(self.shift[i] * _gray_mean(x, gray)) if enabled[CONTRAST] else None
        if gray is not None:
            mix = _per_patch(self.mix[i])
            term = gray.mul_(mix) if term is None else torch.addcmul(term, gray, mix)
        scale = _per_patch(self.scale[i])
        y = x.mul(scale) if term is None else torch.addcmul(term, x, scale)
        return y.clamp_(_per_patch(self.low[i]), _per_patch(self.high[i]))


def _jitter_dense(x: Tensor, params: JitterParams, factors: Tensor, enabled: list[bool]) -> Tensor:
    """Colour jitter then grayscale on all patches at once (no sorting, no host sync).

    Hue, the dear op, runs once on every patch: first the blend ops (brightness, contrast,
    saturation) that a patch drew before hue, one blend pass per order position 0-2, then hue,
    then those drawn after it (positions 1-3), each kept only where drawn. Every patch sees its
    ops in its drawn order: the same values as `_jitter_sorted`, with a fixed sequence of kernels
    whatever the draws (static shapes: CUDA graphs, torch.compile). Without hue, a blend pass per
    position. The passes' per-patch coefficients are computed together (`_BlendPasses`), so
    that the kernel count does not grow with the passes' bookkeeping.
    """
    active = params.apply_color
    order = params.order.t()  # [4, M]: the op id at each order position
    if not enabled[HUE]:
        passes = _BlendPasses.of(order, active.expand_as(order), factors, enabled)
        for i in range(4):
            x = passes.apply(x, i, enabled)
    else:
        hue_at = (order == HUE).int().argmax(dim=0)  # [M]: the position hue was drawn at
        position = torch.arange(4, device=order.device).view(4, 1)
        # passes 0-2 read positions 0-2 before hue, passes 3-5 positions 1-3 after it
        ops = torch.cat((order[:3], order[1:]))
        take = torch.cat(((position < hue_at)[:3], (position > hue_at)[1:])) & active
        passes = _BlendPasses.of(ops, take, factors, enabled)
        for i in range(3):
            x = passes.apply(x, i, enabled)
        x = torch.where(_per_patch(active), _hue_of(x, factors[HUE]), x)
        for i in range(3, 6):
            x = passes.apply(x, i, enabled)
    if x.shape[1] == 3:
        x = torch.where(params.grayscale.view(-1, 1, 1, 1), _gray(x).expand_as(x), x)
    return x


_dense_jitter = compiled_variant(_jitter_dense)  # _dense_jitter(compiled): one fused kernel chain


def apply_jitter(patches: Tensor, params: JitterParams, cfg: JitterConfig,
                 dense: bool | None = None, compiled: bool = False) -> Tensor:
    """Apply the draws `params` to `patches` [M, C, p, p] (float, in [0, 1] or normalised);
    returns a new tensor (from the dense path with channel-planar memory: `reshape`, not `view`,
    merges its dims).

    Vectorised: crop + resize are two batched matmuls. The sorted path (`dense=False`, default on
    the CPU) then sorts the patches by their colour-op order and grayscale flag, so that every op
    runs in place on a contiguous slice (at most 25 slices, each op once per slice), and scatters
    them back; it reads the group sizes on the host. The dense path (default on CUDA, in a
    compiled region and, contiguous, for the CPU's small batches: `CPU_DENSE_MAX_ELEMENTS`) runs
    a fixed sequence of ops on all patches (`_jitter_dense`, torch.compile-d with `compiled`);
    all give the same values.
    """
    if patches.dim() != 4 or patches.shape[-1] != patches.shape[-2]:
        raise ValueError(f"expected patches [M, C, p, p], got {tuple(patches.shape)}")
    m, ch, p, _ = patches.shape
    if ch not in (1, 3):
        raise ValueError(f"jitter needs 1 or 3 channels (as torchvision), got {ch}")
    if not patches.is_floating_point():
        raise TypeError("jitter expects a float tensor in [0, 1]")
    if params.num_patches != m:
        raise ValueError(f"{params.num_patches} draws for {m} patches")
    if m == 0:
        return patches.clone()
    params = params.to(patches.device)
    enabled = [rng is not None for rng in color_ranges(cfg)]
    if ch == 1:  # torchvision: saturation and hue are identities on 1-channel images
        enabled[SATURATION] = enabled[HUE] = False
    crop = cfg.crop and crop_size(p) < p
    small_on_cpu = False  # dense as the faster path, returned contiguous as the sorted one's
    if dense is None:  # the sorted path's host reads would break a compiled region
        dense = patches.is_cuda or torch.compiler.is_compiling()
        small_on_cpu = not dense and patches.numel() <= CPU_DENSE_MAX_ELEMENTS
    if dense or small_on_cpu:
        factors = torch.stack((params.brightness, params.contrast, params.saturation, params.hue))
        # channel-planar memory behind the [M, C, p, p] view: each channel one contiguous block,
        # so that the colour maths' per-channel ops run as vectorised kernels (strided channel
        # slices took the GPU's slow generic kernel: half the eager jitter's time at 224 px)
        out = patches.new_empty((ch, m, p, p)).transpose(0, 1)
        out.copy_(_crop_resize_transposed(patches, params)[1].permute(0, 2, 3, 1) if crop
                  else patches)
        out = _dense_jitter(compiled)(out, params, factors.to(patches.dtype), enabled)
        return out.contiguous() if small_on_cpu else out
    perm, groups = _groups(params, enabled)
    factors = torch.stack(
        (params.brightness, params.contrast, params.saturation, params.hue)
    ).to(device=patches.device, dtype=patches.dtype)[:, perm]
    if crop:
        z, w = _crop_resize_transposed(patches, params)
        # gather the sorted patches back into [M, C, p, p] layout, into z's (dead) memory
        buf = z.view(m, ch, p, p)
        torch.index_select(w.permute(0, 2, 3, 1), 0, perm, out=buf)
        out = w.view(m, ch, p, p)  # w's memory is free now and becomes the output
    else:
        buf = patches.index_select(0, perm)
        out = torch.empty_like(buf)
    _jitter_sorted(buf, factors, groups, enabled)
    return out.index_copy_(0, perm, buf)


def jitter_patches(
    patches: Tensor, cfg: JitterConfig, generator: torch.Generator | None = None
) -> Tensor:
    """Sample and apply the per-patch jitter; `patches` is [..., C, p, p], e.g. [B, N, C, p, p].

    The draws are made with `generator` on its device (default: torch's global CPU generator when
    None and the patches are on the CPU, else the patches' device) and moved to the patches.
    """
    if patches.dim() < 3:
        raise ValueError(f"expected [..., C, p, p], got {tuple(patches.shape)}")
    shape = patches.shape
    flat = patches.reshape(-1, *shape[-3:])
    device = generator.device if generator is not None else patches.device
    params = sample_jitter_params(flat.shape[0], shape[-1], cfg, generator, device)
    return apply_jitter(flat, params.to(patches.device), cfg).view(shape)
