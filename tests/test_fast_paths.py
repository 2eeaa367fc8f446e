"""The fast paths give the results of the plain ones: fused relation loss, device-side jitter.

Parametrised over the available devices: CPU always, CUDA when there is one (then the jitter
applied on the GPU is compared with the CPU's for the same draws).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from relvit.models import losses
from relvit.models.backbones import build_backbone
from relvit.models.heads import PairProjections, PairwiseScoreHead
from relvit.models.relvit import RelViT, SSLTasks
from relvit.ssl import pipeline
from relvit.ssl.jitter import (JitterConfig, apply_jitter, crop_resize_matrices,
                               sample_jitter_params)
from relvit.ssl.pipeline import apply_ssl_inputs, draw_ssl_inputs, jitter_and_shuffle
from relvit.ssl.targets import position_targets, relation_targets

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))]


def _relation_setup(device: str, b: int = 3, side: int = 5, dim: int = 36, seed: int = 0):
    torch.manual_seed(seed)
    head = PairwiseScoreHead(dim, 9).to(device)
    tokens = torch.randn(b, side * side, dim, device=device, requires_grad=True)
    perm = torch.stack([torch.randperm(side * side) for _ in range(b)]).to(device)
    return head, tokens, perm


def _grads(loss: torch.Tensor, head: PairwiseScoreHead, tokens: torch.Tensor) -> list:
    return list(torch.autograd.grad(loss, [tokens, head.query.weight, head.key.weight]))


def test_fused_relation_loss_refuses_an_empty_average():
    """One token without its diagonal leaves no pair: a clear error, not a division by zero."""
    q = torch.randn(2, 9, 1, 4, requires_grad=True)
    with pytest.raises(ValueError, match="no token pairs .* 1 x 1 tokens, diagonal out"):
        losses.fused_relation_loss(PairProjections(q, q), torch.zeros(1, 1, dtype=torch.uint8),
                                   False)


def test_fused_relation_loss_chunks_hold_whole_samples_within_the_budget():
    per_sample = 9 * 196 * 196 * 4  # float32 scores of one sample at N = 196
    assert 2**28 // per_sample == 194  # room for 194 samples: 256 run as two chunks of 128
    assert losses.relation_chunk_samples(256, 9, 196, 196) == 128
    assert losses.relation_chunk_samples(157, 9, 196, 196) == 157  # one chunk when it fits
    assert losses.relation_chunk_samples(256, 9, 196, 196, budget=10 * per_sample - 1) == 9
    assert losses.relation_chunk_samples(256, 9, 196, 196, budget=1) == 1  # at least one
    assert losses.relation_chunk_samples(4, 9, 64, 64) == 4  # at most the batch


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("per_sample", [False, True])
def test_position_loss_over_token_rows_equals_the_class_axis_one(device, dtype, per_sample):
    """The position loss as B * N rows of classes (the fast path) equals PyTorch's cross-entropy
    over the class axis of [B, C, N], value and gradient, for logits that are a transposed slice
    of a wider [B, N, width] output, as the joint head maps give them."""
    torch.manual_seed(0)
    b, n = 3, 16
    maps = torch.randn(b, n, 5 + n + 7, device=device, dtype=dtype, requires_grad=True)
    logits = maps[..., 5:5 + n].transpose(1, 2)  # [B, C = N, N], as PositionHead.from_maps
    perm = torch.stack([torch.randperm(n) for _ in range(b)]).to(device)
    targets = position_targets(n, perm if per_sample else None, device)
    fast = losses.token_classification_loss(logits, targets)
    (grad_fast,) = torch.autograd.grad(fast, maps)
    plain = torch.nn.functional.cross_entropy(logits.float(), targets.expand(b, -1))
    (grad_plain,) = torch.autograd.grad(plain, maps)
    torch.testing.assert_close(fast, plain, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad_fast, grad_plain, rtol=1e-5, atol=1e-7)
    assert grad_fast[..., :5].abs().sum() == 0 and grad_fast[..., 5 + n:].abs().sum() == 0


@pytest.mark.parametrize("batch", [1, 7, 64, 100, 255, 256, 257, 1000])
@pytest.mark.parametrize("fits", [1, 3, 50, 194, 2000])
def test_fused_relation_loss_chunks_are_as_few_and_as_equal_as_the_budget_allows(batch, fits):
    """The fewest chunks that fit the budget, and none much shorter than the others: at most
    one shorter chunk, the last, and all within one chunk count of an equal split."""
    per_sample = 9 * 8 * 8 * 4
    samples = losses.relation_chunk_samples(batch, 9, 8, 8, budget=fits * per_sample)
    chunks = -(-batch // samples)
    assert samples <= fits
    assert chunks == -(-batch // min(fits, batch))  # no more chunks than the budget needs
    last = batch - (chunks - 1) * samples
    assert 0 < last and samples - last < chunks  # 194 + 62 would fail: 132 >= 2


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("diagonal", [True, False])
@pytest.mark.parametrize("chunk_samples", [1, 2, 3, None])
def test_fused_relation_loss_equals_the_plain_one(device, per_sample, diagonal, chunk_samples):
    head, tokens, perm = _relation_setup(device)
    target = relation_targets(5, 5, perm if per_sample else None, device=device)
    plain = losses.relation_loss(head(tokens), target, diagonal)
    # scaled, as DDP's shares scale it: a backward that dropped its incoming gradient passed at 1
    plain_grads = _grads(2.5 * plain, head, tokens)
    fused, acc, acc_all = losses.fused_relation_loss(
        head.project(tokens), target.to(torch.uint8), diagonal, chunk_samples)
    fused_grads = _grads(2.5 * fused, head, tokens)
    torch.testing.assert_close(fused, plain, rtol=1e-6, atol=1e-6)
    for a, b in zip(fused_grads, plain_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)
    with torch.no_grad():
        scores = head(tokens)
        torch.testing.assert_close(acc, losses.relation_accuracy(scores, target), rtol=0, atol=1e-7)
        torch.testing.assert_close(acc_all, losses.relation_accuracy(scores, target, True),
                                   rtol=0, atol=1e-7)
    assert not acc.requires_grad and not acc_all.requires_grad
    assert 0.0 < acc_all.item() < 1.0  # random weights: some hits, not all


@pytest.mark.parametrize("device", DEVICES)
def test_fused_relation_loss_under_bf16_autocast(device):
    """In bf16 the two paths round the scores at different points (see the next test); the
    values agree to bf16 rounding."""
    head, tokens, perm = _relation_setup(device, b=4, side=6, dim=72)
    target = relation_targets(6, 6, perm)
    with torch.autocast(device, dtype=torch.bfloat16):
        plain = losses.relation_loss(head(tokens), target)
        plain_grads = _grads(plain, head, tokens)
        pair = head.project(tokens)
        assert pair.query.dtype == torch.bfloat16
        fused, _, _ = losses.fused_relation_loss(pair, target, chunk_samples=3)
        fused_grads = _grads(fused, head, tokens)
    assert fused.dtype == torch.float32
    torch.testing.assert_close(fused, plain, rtol=1e-3, atol=1e-3)
    for a, b in zip(fused_grads, plain_grads):
        assert a.dtype == b.dtype
        assert (a.float() - b.float()).abs().max() <= 2e-2 * b.float().abs().max()


@pytest.mark.parametrize("device", DEVICES)
def test_fused_relation_loss_scales_the_bf16_scores_before_rounding_them(device):
    """The 1 / sqrt(d) scaling happens inside the matrix product (float32 accumulator), so the
    bf16 scores are rounded once: the loss is within 1e-4 of the float64 loss of the same bf16
    inputs (found 0.6-2.1e-5 for 4 seeds). Scaling the rounded products in bf16, the plain path's
    order, rounds twice, which biases the loss: 2.6-3.1e-4 off."""
    torch.manual_seed(0)
    b, side, d = 16, 14, 42
    n = side * side
    perm = torch.stack([torch.randperm(n) for _ in range(b)])
    target = relation_targets(side, side, perm, dtype=torch.uint8).to(device)
    q, k = (2 * torch.randn(b, 9, n, d, device=device, dtype=torch.bfloat16) for _ in range(2))
    exact = losses.relation_loss(q.double() @ k.double().transpose(-1, -2) / d ** 0.5,
                                 target.long())
    fused = losses.fused_relation_loss(PairProjections(q, k), target)[0]
    assert abs(fused.double() - exact).item() < 1e-4


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bf16", [False, True])
def test_fused_relation_loss_with_the_head_width_padded(device, bf16):
    """`align` pads q and k with zero columns for the matrix products (ViT-S: 42 -> 48): the
    same loss, accuracies and gradients as unpadded, in the inputs' dtype."""
    head, tokens, perm = _relation_setup(device, dim=45)  # head width 5
    target = relation_targets(5, 5, perm, dtype=torch.uint8, device=device)
    results = []
    for align in (1, 8):
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            pair = head.project(tokens)
            loss, acc, acc_all = losses.fused_relation_loss(pair, target, False, 2, align=align)
            results.append((loss, acc, acc_all, *_grads(loss, head, tokens)))
    tol = dict(rtol=1e-2, atol=1e-3) if bf16 else dict(rtol=1e-6, atol=1e-7)
    for unpadded, padded in zip(*results):
        assert padded.dtype == unpadded.dtype
        torch.testing.assert_close(padded, unpadded, **tol)


def _saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd keeps for the backward pass of `fn()`."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def test_fused_relation_loss_keeps_no_scores_for_backward():
    """The plain path keeps [B, 9, N, N]-sized tensors; the fused one only q, k and their grads."""
    b, side, dim = 4, 14, 18
    head, tokens, perm = _relation_setup("cpu", b=b, side=side, dim=dim)
    n = side * side
    target = relation_targets(side, side, perm)
    plain = _saved_bytes(lambda: losses.relation_loss(head(tokens), target))
    fused = _saved_bytes(lambda: losses.fused_relation_loss(head.project(tokens), target, True, 3))
    scores = b * 9 * n * n * 4
    pair_bytes = b * n * 9 * (dim // 9) * 4  # one of q, k, dq, dk
    assert plain >= scores
    assert fused <= 4 * pair_bytes + tokens.numel() * 4 < scores / 10


@pytest.mark.parametrize("device", DEVICES)
def test_fused_relation_loss_without_grad(device):
    head, tokens, perm = _relation_setup(device)
    target = relation_targets(5, 5, perm)
    with torch.no_grad():
        fused, _, _ = losses.fused_relation_loss(head.project(tokens), target, chunk_samples=2)
        plain = losses.relation_loss(head(tokens), target)
    assert not fused.requires_grad
    torch.testing.assert_close(fused, plain, rtol=1e-6, atol=1e-6)


def test_objective_gives_the_same_losses_fused_and_plain(tiny_config):
    """The training objective on both RelViT outputs (projections, scores): same terms and stats."""
    from relvit.data.registry import get_dataset
    from relvit.geometry import run_geometry
    from relvit.train.objective import Objective

    cfg = tiny_config("pretrain", ssl={"relation_diagonal": False, "shuffle": True})
    geo = run_geometry(cfg)
    objective = Objective(cfg, get_dataset(cfg.data.name), geo, (0.5,) * 3, (0.25,) * 3)
    images = torch.rand(6, 3, geo.image_size, geo.image_size)
    batch = objective.batch(images, torch.zeros(6, dtype=torch.long), True,
                            torch.Generator().manual_seed(0))
    assert batch.perm is not None
    torch.manual_seed(0)
    backbone = build_backbone("vit_small", img_size=geo.image_size, patch_size=geo.patch_size,
                              embed_dim=36, depth=1, num_heads=3, pos_embed=False)
    model = RelViT(backbone, None, SSLTasks(relations=True, positions=True), geo.num_positions)
    results = {}
    for fused in (True, False):
        model.relation_projections = fused
        out = model(batch.images)
        assert isinstance(out["relations"], PairProjections) == fused
        loss, stats = objective.losses(out, batch)
        weights = [model.relation_head.query.weight, model.backbone.vit.patch_embed.proj.weight]
        results[fused] = (loss, stats, torch.autograd.grad(loss, weights))
    (loss_f, stats_f, grads_f), (loss_p, stats_p, grads_p) = results[True], results[False]
    torch.testing.assert_close(loss_f, loss_p, rtol=1e-6, atol=1e-6)
    assert stats_f.keys() == stats_p.keys() >= {"loss_rel", "acc_rel", "acc_rel_all", "loss_pos"}
    for key in stats_f:
        torch.testing.assert_close(stats_f[key], stats_p[key], rtol=1e-6, atol=1e-6)
    for a, b in zip(grads_f, grads_p):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


def test_targets_on_a_device_and_in_a_small_dtype():
    perm = torch.stack([torch.randperm(12) for _ in range(2)])
    long = relation_targets(3, 4, perm)
    small = relation_targets(3, 4, perm, dtype=torch.uint8)
    assert long.dtype == torch.long and small.dtype == torch.uint8
    assert torch.equal(small.long(), long)
    shared = relation_targets(3, 4, device="cpu")
    shared[0, 0] = 7  # a copy: the cached table is untouched
    assert relation_targets(3, 4)[0, 0] == 4
    assert torch.equal(position_targets(5, device="cpu"), torch.arange(5))


# --------------------------------------------------------------------------- jitter

STRONG = JitterConfig(brightness=0.9, contrast=0.9, saturation=1.5, hue=0.5, color_jitter_p=0.9)


def _images(b: int, side: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, side, side, generator=g)
    x[0, 1] = x[0, 0]  # ties of the max channel
    x[1] = x[1, :1]  # a gray image (undefined hue)
    return x


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cfg", [JitterConfig(), STRONG], ids=["default", "strong"])
@pytest.mark.parametrize("side,cell", [(16, 4), (64, 32)])
def test_jitter_drawn_once_applies_alike_on_every_device(monkeypatch, device, cfg, side, cell):
    """Draw on the CPU; applied on the CPU it is bit-for-bit the end-to-end function, applied on
    `device` it agrees with the CPU to float rounding."""
    monkeypatch.setattr(pipeline, "CPU_CHUNK_BYTES", 3 * 3 * side * side * 4)  # 3-image chunks
    images = _images(7, side, seed=side)
    draws = draw_ssl_inputs(images, cell, cfg, True, torch.Generator().manual_seed(1))
    assert draws.jitter.num_patches == 7 * (side // cell) ** 2
    on_cpu = apply_ssl_inputs(images, cell, draws, cfg)
    end_to_end, perm = jitter_and_shuffle(images, cell, cfg, True, torch.Generator().manual_seed(1))
    assert torch.equal(on_cpu, end_to_end) and torch.equal(perm, draws.perm)
    assert not torch.equal(on_cpu, images)
    on_device = apply_ssl_inputs(images.to(device), cell, draws.to(device), cfg)
    assert on_device.device.type == device
    torch.testing.assert_close(on_device.cpu(), on_cpu, rtol=0, atol=2e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("crop", [True, False])
@pytest.mark.parametrize("off", [(), ("hue", "brightness"), ("contrast", "saturation")],
                         ids=["all-ops", "no-hue-brightness", "no-contrast-saturation"])
def test_dense_jitter_equals_the_sorted_one(device, channels, crop, off):
    """The GPU's sync-free path and the CPU's sorted path give the same values (CPU: bit-exact),
    also with ops switched off (the dense path's passes skip them as the sorted path does)."""
    cfg = replace(STRONG, crop=crop, grayscale_p=0.5, **{op: 0.0 for op in off})
    g = torch.Generator().manual_seed(channels)
    x = torch.rand(400, channels, 8, 8, generator=g).to(device)
    prm = sample_jitter_params(400, 8, cfg, g).to(device)
    dense = apply_jitter(x, prm, cfg, dense=True)
    sorted_ = apply_jitter(x, prm, cfg, dense=False)
    if device == "cpu":
        assert torch.equal(dense, sorted_)
    else:  # CUDA may reduce a patch's mean in another order in a slice than in the whole stack
        torch.testing.assert_close(dense, sorted_, rtol=0, atol=1e-6)
    assert torch.equal(apply_jitter(x, prm, cfg), dense if device == "cuda" else sorted_)


def test_the_cpus_small_batches_take_the_dense_path(monkeypatch):
    """Up to CPU_DENSE_MAX_ELEMENTS the CPU's default is the dense path (the faster one there),
    contiguous as the sorted path's output; above it, the sorted path."""
    from relvit.ssl import jitter

    taken = []
    groups = jitter._groups
    monkeypatch.setattr(jitter, "_groups", lambda *a: taken.append("sorted") or groups(*a))
    monkeypatch.setattr(jitter, "CPU_DENSE_MAX_ELEMENTS", 3 * 8 * 8 * 100)
    g = torch.Generator().manual_seed(0)
    for m in (100, 101):
        x = torch.rand(m, 3, 8, 8, generator=g)
        prm = sample_jitter_params(m, 8, STRONG, g)
        out = apply_jitter(x, prm, STRONG)
        assert out.is_contiguous() and torch.equal(out, apply_jitter(x, prm, STRONG, dense=True))
    assert taken == ["sorted"]  # the 101 patches only


@pytest.mark.parametrize("device", DEVICES)
def test_dense_jitter_leaves_undrawn_patches_alone_outside_the_unit_range(device):
    """Normalised patches (`ssl.jitter_after_normalize`) lie outside [0, 1]: the dense path's
    blend passes leave a patch that drew none of their ops as it was (no clamp), as the sorted
    path does; only the ops drawn clamp."""
    g = torch.Generator().manual_seed(3)
    x = ((torch.rand(400, 3, 8, 8, generator=g) - 0.45) / 0.225).to(device)
    prm = sample_jitter_params(400, 8, STRONG, g).to(device)
    dense = apply_jitter(x, prm, STRONG, dense=True)
    sorted_ = apply_jitter(x, prm, STRONG, dense=False)
    untouched = ~prm.apply_color & ~prm.grayscale
    assert untouched.any() and (x[untouched] < 0).any()
    if device == "cpu":
        assert torch.equal(dense, sorted_)
    else:
        torch.testing.assert_close(dense, sorted_, rtol=0, atol=1e-6)


def test_dense_jitter_works_on_contiguous_channel_planes():
    """Each channel of the dense path's result is one block: the per-channel colour ops run as
    vectorised kernels on the GPU, as they do not on strided slices."""
    cfg = replace(STRONG, grayscale_p=0.5)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(50, 3, 8, 8, generator=g)
    prm = sample_jitter_params(50, 8, cfg, g)
    out = apply_jitter(x, prm, cfg, dense=True)
    assert out.shape == x.shape and all(out[:, c].is_contiguous() for c in range(3))
    assert torch.equal(out.contiguous(), apply_jitter(x, prm, cfg, dense=False))


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_dense_jitter_equals_the_eager_one(device):
    """torch.compile of the dense jitter (config key `compile`) keeps the values (fused kernels
    may round differently in the last bits)."""
    cfg = replace(STRONG, grayscale_p=0.5)
    g = torch.Generator().manual_seed(7)
    x = torch.rand(300, 3, 8, 8, generator=g).to(device)
    prm = sample_jitter_params(300, 8, cfg, g).to(device)
    eager = apply_jitter(x, prm, cfg, dense=True)
    compiled = apply_jitter(x, prm, cfg, dense=True, compiled=True)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-5)
    assert not torch.equal(compiled, x)  # the jitter did something
    assert _runs_compiled(lambda: apply_jitter(x, prm, cfg, dense=True, compiled=True))


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_fused_relation_loss_equals_the_eager_one(device):
    """torch.compile of each chunk's elementwise work (config key `compile`): same loss,
    accuracies and gradients, to float rounding; chunks of two sizes (2 does not divide 3)."""
    head, tokens, perm = _relation_setup(device)
    target = relation_targets(5, 5, perm, dtype=torch.uint8)
    results = []
    for compiled in (False, True):
        loss, acc, acc_all = losses.fused_relation_loss(head.project(tokens), target, False, 2,
                                                        compiled=compiled)
        results.append((loss, acc, acc_all, *_grads(loss, head, tokens)))
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
    assert _runs_compiled(lambda: losses.fused_relation_loss(head.project(tokens), target, False,
                                                             2, compiled=True))


def _runs_compiled(fn) -> bool:
    """Whether a call of `fn` ran torch.compile-d code (not an eager fallback: torch 2.11 fell
    back for good once a compiled function had been called under a dispatch mode)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return any(e.name.startswith("Torch-Compiled Region") for e in prof.events())


class _Kernels(TorchDispatchMode):
    """The ATen ops a block dispatches, in order (views left out), with their output shapes: its
    kernel sequence, and whether any size depends on the data (as boolean indexing's does)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, list[tuple[int, ...]]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            outs = out if isinstance(out, (tuple, list)) else [out]
            self.ops.append((func.overloadpacket.__name__,
                             [tuple(o.shape) for o in outs if isinstance(o, torch.Tensor)]))
        return out


def _kernels(fn) -> list[tuple[str, list[tuple[int, ...]]]]:
    with _Kernels() as kernels:
        fn()
    return kernels.ops


def test_dense_jitter_runs_one_kernel_sequence_whatever_the_draws():
    """What makes the dense path CUDA-graph and torch.compile friendly: the same ops on the same
    shapes for any draws, the same ops for any number of patches (the sorted path's depend on
    the draws)."""
    cfg = replace(STRONG, grayscale_p=0.5)
    crop_resize_matrices(8)  # made once per patch size and device, then kept
    runs = []
    for seed, m in ((0, 40), (1, 40), (2, 300)):
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(m, 3, 8, 8, generator=g)
        prm = sample_jitter_params(m, 8, cfg, g)
        runs.append(_kernels(lambda: apply_jitter(x, prm, cfg, dense=True)))
    assert runs[0] == runs[1]
    assert [name for name, _ in runs[0]] == [name for name, _ in runs[2]]


def test_fused_relation_loss_runs_one_kernel_sequence_whatever_the_targets():
    """Forward and backward of the fused loss: the same ops on the same shapes for any
    permutation (nothing sized by the targets' values, which would wait for the GPU)."""
    runs = []
    for seed in (0, 1):
        head, tokens, perm = _relation_setup("cpu", seed=seed)
        target = relation_targets(5, 5, perm, dtype=torch.uint8)
        runs.append(_kernels(lambda: losses.fused_relation_loss(
            head.project(tokens), target, False, 2)[0].backward()))
    assert runs[0] == runs[1]


def test_fused_relation_loss_gradients_go_back_to_the_joint_maps_without_a_copy():
    """dq and dk are laid out as the relation head's views of the SSL heads' joint map
    (`RelViT.ssl_outputs`), so their way back to it is views and the split's one concatenation;
    and the accuracies get no zero gradients."""
    torch.manual_seed(0)
    backbone = build_backbone("vit_small", img_size=16, patch_size=4, embed_dim=36, depth=1,
                              num_heads=3)
    model = RelViT(backbone, None, SSLTasks(relations=True), num_positions=0)
    z = torch.randn(2, 16, 36, requires_grad=True)
    out = model.ssl_outputs(z)
    loss = losses.fused_relation_loss(out["relations"], relation_targets(4, 4))[0]
    ops = [name for name, _ in _kernels(loss.backward) if name not in ("empty", "ones_like")]
    assert ops[:3] == ["mul", "mul", "cat"]  # dq and dk scaled into place, then the joint map's


def test_the_head_width_is_padded_to_a_multiple_of_align():
    """`_aligned` pads d up to the next multiple of `align` with exact zeros (values alone cannot
    tell: any zero padding gives the same products; a width padded by `d % align` had passed)."""
    t = torch.rand(1, 9, 4, 42)
    for align, width in ((1, 42), (8, 48), (16, 48), (7, 42), (5, 45)):
        padded = losses._aligned(t, align)
        assert padded.shape[-1] == width and padded.is_contiguous()
        assert torch.equal(padded[..., :42], t) and not padded[..., 42:].any()
