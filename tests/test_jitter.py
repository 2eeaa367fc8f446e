"""Tests for the batched per-patch jitter (relvit.ssl.jitter) against the torchvision reference."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

from relvit.ssl.jitter import (
    HUE,
    JitterConfig,
    JitterParams,
    apply_jitter,
    crop_resize_matrices,
    crop_size,
    jitter_patches,
    resize_matrix,
    sample_jitter_params,
)
from relvit.ssl.jitter_reference import reference_apply_params, reference_jitter_image
from relvit.ssl.patches import patchify

DEFAULT = JitterConfig()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def colourful_images(n: int, side: int, patch: int, seed: int) -> torch.Tensor:
    """[n, 3, side, side] in [0, 1]: a saturated colour per patch, a gradient and some noise."""
    g = torch.Generator().manual_seed(seed)
    cells = side // patch
    base = torch.rand(n, 3, cells, cells, generator=g) * 0.8 + 0.1
    img = base.repeat_interleave(patch, 2).repeat_interleave(patch, 3)
    ramp = torch.linspace(-0.1, 0.1, side)
    img = img + ramp.view(1, 1, 1, side) - ramp.view(1, 1, side, 1)
    img = img + 0.05 * torch.randn(n, 3, side, side, generator=g)
    return img.clamp(0.0, 1.0)


# --------------------------------------------------------------------------- building blocks


@pytest.mark.parametrize("p, c", [(4, 3), (8, 7), (16, 14), (32, 28), (2, 2)])
def test_crop_size(p: int, c: int) -> None:
    assert crop_size(p) == c


@pytest.mark.parametrize("p", [4, 8, 16, 32])
def test_resize_matrix_is_torchvision_resize(p: int) -> None:
    c = crop_size(p)
    x = torch.rand(5, 3, c, c, dtype=torch.float64)
    r = resize_matrix(c, p)
    ours = r @ x @ r.T
    torch.testing.assert_close(ours, TF.resize(x, [p, p]), atol=1e-12, rtol=0)
    plain = F.interpolate(x, size=(p, p), mode="bilinear", align_corners=False)
    torch.testing.assert_close(ours, plain, atol=1e-12, rtol=0)
    mats = crop_resize_matrices(p)
    assert mats.shape == (p - c + 1, p, p) and mats.dtype == torch.float32
    assert crop_resize_matrices(p) is mats  # cached


def test_sample_params_shapes_and_ranges() -> None:
    g = torch.Generator().manual_seed(0)
    m = 20000
    prm = sample_jitter_params(m, 32, DEFAULT, g)
    assert prm.crop_top.dtype == torch.long and prm.crop_top.shape == (m,)
    assert set(prm.crop_top.unique().tolist()) == set(range(5))
    assert set(prm.crop_left.unique().tolist()) == set(range(5))
    assert torch.equal(prm.order.sort(dim=1).values, torch.arange(4).expand(m, 4))
    for f, lo, hi in [(prm.brightness, 0.6, 1.4), (prm.contrast, 0.6, 1.4),
                      (prm.saturation, 0.6, 1.4), (prm.hue, -0.1, 0.1)]:
        assert lo <= f.min() and f.max() <= hi
        assert f.min() < lo + 0.01 and f.max() > hi - 0.01
    # 5 sigma of a Bernoulli mean over 20000 draws is < 0.015
    assert abs(prm.apply_color.float().mean() - 0.8) < 0.015
    assert abs(prm.grayscale.float().mean() - 0.2) < 0.015
    # the first position of the order is uniform over the 4 ops
    counts = torch.bincount(prm.order[:, 0], minlength=4).float() / m
    assert (counts - 0.25).abs().max() < 0.016
    no_crop = sample_jitter_params(10, 32, replace(DEFAULT, crop=False), g)
    assert not no_crop.crop_top.any() and not no_crop.crop_left.any()


# --------------------------------------------------------------------------- exactness vs torchvision

EXACT_CONFIGS = {
    "default": DEFAULT,
    "color_always": replace(DEFAULT, color_jitter_p=1.0),
    "gray_always": replace(DEFAULT, grayscale_p=1.0),
    "crop_off": replace(DEFAULT, crop=False, color_jitter_p=1.0),
    "strong": JitterConfig(brightness=0.9, contrast=0.9, saturation=1.5, hue=0.5,
                           color_jitter_p=1.0),
    "no_hue_no_brightness": replace(DEFAULT, hue=0.0, brightness=0.0, color_jitter_p=1.0),
}


@pytest.mark.parametrize("p", [4, 8, 32])
@pytest.mark.parametrize("name", list(EXACT_CONFIGS))
def test_apply_matches_torchvision_per_patch(p: int, name: str) -> None:
    cfg = EXACT_CONFIGS[name]
    m = 300 if p < 32 else 200
    g = torch.Generator().manual_seed(p)
    x = torch.rand(m, 3, p, p, generator=g)
    x[:10, 1] = x[:10, 0]  # ties of the max channel (hue sector boundaries)
    x[10:20] = x[10:20, :1]  # gray patches (undefined hue)
    x[20:25] = 1.0
    prm = sample_jitter_params(m, p, cfg, g)
    ours = apply_jitter(x, prm, cfg)
    ref = reference_apply_params(x, prm, cfg)
    assert ours.shape == x.shape and ours.is_contiguous()
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dense", [False, True], ids=["sorted", "dense"])
def test_apply_matches_torchvision_on_normalised_patches(dense: bool) -> None:
    """`ssl.jitter_after_normalize` (the original's order, Q5) jitters values outside [0, 1]:
    torchvision's hue clamps some of its terms there, and the next op sees the difference."""
    cfg = replace(DEFAULT, color_jitter_p=1.0)
    g = torch.Generator().manual_seed(11)
    mean, std = torch.tensor([0.49, 0.48, 0.45]), torch.tensor([0.25, 0.24, 0.26])
    x = (torch.rand(400, 3, 8, 8, generator=g) - mean.view(3, 1, 1)) / std.view(3, 1, 1)
    x[:10] = x[:10, :1]  # gray patches, negative and above 1
    prm = sample_jitter_params(400, 8, cfg, g)
    assert (prm.order[:, 0] == HUE).sum() > 50  # hue first: its output reaches the next op
    torch.testing.assert_close(apply_jitter(x, prm, cfg, dense=dense),
                               reference_apply_params(x, prm, cfg), atol=1e-5, rtol=0)


def test_apply_matches_torchvision_one_channel() -> None:
    cfg = replace(DEFAULT, color_jitter_p=1.0, grayscale_p=0.5)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(200, 1, 8, 8, generator=g)
    prm = sample_jitter_params(200, 8, cfg, g)
    torch.testing.assert_close(
        apply_jitter(x, prm, cfg), reference_apply_params(x, prm, cfg), atol=1e-5, rtol=0
    )


def test_apply_does_not_touch_input_and_untouched_patches() -> None:
    cfg = replace(DEFAULT, crop=False)
    g = torch.Generator().manual_seed(5)
    x = torch.rand(500, 3, 4, 4, generator=g)
    x0 = x.clone()
    prm = sample_jitter_params(500, 4, cfg, g)
    out = apply_jitter(x, prm, cfg)
    assert torch.equal(x, x0)
    keep = ~prm.apply_color & ~prm.grayscale
    assert keep.any() and torch.equal(out[keep], x[keep])


# --------------------------------------------------------------------------- distribution vs torchvision


def _se_mean(a: torch.Tensor) -> float:
    return a.double().var().item() / a.numel()


def _close_means(a: torch.Tensor, b: torch.Tensor, k: float = 5.0) -> bool:
    """|mean(a) - mean(b)| within k standard errors of the difference."""
    return abs(a.double().mean() - b.double().mean()) <= k * math.sqrt(_se_mean(a) + _se_mean(b))


def _close_stds(a: torch.Tensor, b: torch.Tensor, k: float = 5.0) -> bool:
    """|std(a) - std(b)| within k standard errors (delta method on the sample variance)."""
    def var_and_se(v: torch.Tensor) -> tuple[float, float]:
        v = v.double()
        c = v - v.mean()
        var = (c**2).mean().item()
        return var, math.sqrt(max((c**4).mean().item() - var**2, 0.0) / v.numel())
    va, sa = var_and_se(a)
    vb, sb = var_and_se(b)
    se_std = math.sqrt((sa / (2 * math.sqrt(va))) ** 2 + (sb / (2 * math.sqrt(vb))) ** 2)
    return abs(math.sqrt(va) - math.sqrt(vb)) <= k * se_std


def _frac_close(frac: float, expected: float, n: int, k: float = 5.0) -> bool:
    return abs(frac - expected) <= k * math.sqrt(expected * (1 - expected) / n)


def _is_gray(out: torch.Tensor) -> torch.Tensor:
    """[M, 3, p, p] -> [M] bool: all channels equal (what RandomGrayscale produces)."""
    return (out.amax(1) - out.amin(1)).amax(dim=(1, 2)) == 0


def _patch_stats(inp: torch.Tensor, out: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-patch statistics sensitive to each draw: brightness, saturation, hue, grayscale."""
    mi, mo = inp.mean(dim=(2, 3)), out.mean(dim=(2, 3))  # [M, 3]
    ci, co = mi - mi.mean(1, keepdim=True), mo - mo.mean(1, keepdim=True)  # chroma vectors
    ni, no = ci.norm(dim=1), co.norm(dim=1)
    coloured = (ni > 0.05) & (no > 0.02)
    cos = (ci * co).sum(1)[coloured] / (ni * no)[coloured]
    return {
        "brightness": mo.mean(1) / mi.mean(1),
        "chroma": no / ni.clamp_min(1e-6),
        "hue_angle": torch.arccos(cos.clamp(-1, 1)),
        "contrast": out.std(dim=(1, 2, 3)) / inp.std(dim=(1, 2, 3)),
    }


@pytest.fixture(scope="module")
def samples() -> dict[str, torch.Tensor]:
    """The same fixed image jittered many times by torchvision (global RNG) and by us."""
    p, n_ref, n_ours = 4, 150, 1500
    image = colourful_images(1, 32, p, seed=11)[0]
    torch.manual_seed(1234)
    ref = torch.stack([reference_jitter_image(image, p, DEFAULT) for _ in range(n_ref)])
    g = torch.Generator().manual_seed(4321)
    batch = patchify(image.expand(n_ours, -1, -1, -1), p)
    ours_patches = jitter_patches(batch, DEFAULT, g)
    inp = patchify(image.unsqueeze(0), p)[0]
    return {
        "image": image,
        "inp": inp,
        "ref": ref,
        "ref_patches": patchify(ref, p).flatten(0, 1),
        "ours_patches": ours_patches.flatten(0, 1),
        "ours_batch": ours_patches,
    }


def test_distribution_grayscale_fraction(samples) -> None:
    for key in ("ref_patches", "ours_patches"):
        gray = _is_gray(samples[key]).float()
        # saturation >= 0.6 never makes a coloured patch gray: P(gray) is 0.2 exactly
        assert _frac_close(gray.mean().item(), 0.2, gray.numel()), (key, gray.mean())


def test_distribution_patch_statistics_match_torchvision(samples) -> None:
    n_ref = samples["ref_patches"].shape[0] // samples["inp"].shape[0]
    n_ours = samples["ours_patches"].shape[0] // samples["inp"].shape[0]
    inp = samples["inp"]
    ref = _patch_stats(inp.repeat(n_ref, 1, 1, 1), samples["ref_patches"])
    ours = _patch_stats(inp.repeat(n_ours, 1, 1, 1), samples["ours_patches"])
    for name in ref:
        assert _close_means(ref[name], ours[name]), (name, ref[name].mean(), ours[name].mean())
        assert _close_stds(ref[name], ours[name]), (name, ref[name].std(), ours[name].std())
    # the statistics really see the jitter: brightness ratio spread of U[0.6, 1.4] on 80 %
    assert 0.15 < ours["brightness"].std() < 0.3
    assert 0.15 < ours["hue_angle"].mean() < 0.6  # hue shifts of up to 36 degrees


def test_distribution_per_pixel_moments_match_torchvision(samples) -> None:
    """Per-pixel mean and second moment over the repetitions (sensitive to the crop offsets)."""
    p = 4
    ref = samples["ref"]  # [R, 3, 32, 32]
    ours = samples["ours_batch"]
    rows = int(math.isqrt(ours.shape[1]))
    ours = ours.view(-1, rows, rows, 3, p, p).permute(0, 3, 1, 4, 2, 5).reshape(-1, 3, 32, 32)
    for moment in (1, 2):
        a, b = ref**moment, ours**moment
        diff = a.mean(0) - b.mean(0)
        var = a.var(0) / a.shape[0] + b.var(0) / b.shape[0]
        z2 = (diff**2 / var.clamp_min(1e-12)).mean().item()
        # E[z^2] = 1 for matching distributions; pixels are correlated, so allow wide slack
        assert z2 < 1.6, (moment, z2)


def test_distribution_probabilities_without_crop() -> None:
    """Fraction of untouched patches is (1 - 0.8) * (1 - 0.2) = 0.16 for both implementations."""
    cfg = replace(DEFAULT, crop=False)
    p = 8
    images = colourful_images(4, 32, p, seed=2)
    torch.manual_seed(99)
    ref = torch.stack([reference_jitter_image(images[i % 4], p, cfg) for i in range(320)])
    ref_in = patchify(images.repeat(80, 1, 1, 1), p)
    ref_out = patchify(ref, p)
    ours_in = patchify(images.repeat(1000, 1, 1, 1), p)
    ours_out = jitter_patches(ours_in, cfg, torch.Generator().manual_seed(7))
    for inp, out in ((ref_in, ref_out), (ours_in, ours_out)):
        inp, out = inp.flatten(0, 1), out.flatten(0, 1)
        n = inp.shape[0]
        same = (inp == out).flatten(1).all(1).float().mean().item()
        assert _frac_close(same, 0.8 * 0.2, n), same
        gray = _is_gray(out).float().mean().item()
        assert _frac_close(gray, 0.2, n), gray


# --------------------------------------------------------------------------- API properties


def test_output_range_shape_and_reproducibility() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 32, 32, generator=g)
    batch = patchify(images, 8)  # [B, N, C, p, p]
    strong = JitterConfig(brightness=0.9, contrast=0.9, saturation=0.9, hue=0.5)
    out = jitter_patches(batch, strong, torch.Generator().manual_seed(1))
    assert out.shape == batch.shape and out.dtype == batch.dtype
    assert out.min() >= 0.0 and out.max() <= 1.0
    again = jitter_patches(batch, strong, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    other = jitter_patches(batch, strong, torch.Generator().manual_seed(2))
    assert not torch.equal(out, other)
    # global RNG when no generator is given
    assert jitter_patches(batch, DEFAULT).shape == batch.shape


def test_one_channel_and_small_patches() -> None:
    g = torch.Generator().manual_seed(0)
    gray_batch = torch.rand(2, 16, 1, 4, 4, generator=g)
    out = jitter_patches(gray_batch, DEFAULT, g)
    assert out.shape == gray_batch.shape and 0.0 <= out.min() and out.max() <= 1.0
    # p = 2: the crop keeps the whole patch (no-op), only colour jitter and grayscale remain
    x = torch.rand(64, 3, 2, 2, generator=g)
    cfg = replace(DEFAULT, color_jitter_p=0.0, grayscale_p=0.0)
    assert torch.equal(jitter_patches(x, cfg, g), x)


def test_params_move_and_validation() -> None:
    prm = sample_jitter_params(4, 8, DEFAULT, torch.Generator().manual_seed(0))
    assert isinstance(prm.to("cpu"), JitterParams) and prm.num_patches == 4
    with pytest.raises(ValueError):
        apply_jitter(torch.rand(5, 3, 8, 8), prm, DEFAULT)
    with pytest.raises(ValueError):
        apply_jitter(torch.rand(4, 2, 8, 8), prm, DEFAULT)
