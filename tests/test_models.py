"""Backbones' token grids, heads' shapes, the RelViT model and the losses."""

import pytest
import torch

from relvit.models import losses
from relvit.models.backbones import build_backbone
from relvit.models.heads import PairwiseScoreHead, PositionHead
from relvit.models.relvit import RelViT, SSLTasks
from relvit.models.specs import get_backbone_spec, pooled_side, token_stride
from relvit.ssl.targets import relation_targets

TINY = dict(embed_dim=36, depth=1, num_heads=3)
ALL_TASKS = SSLTasks(relations=True, positions=True, distances=True, angles=True)


@pytest.mark.parametrize("name,size,patch,grid,cls", [
    ("vit_small", 32, 4, (8, 8), True),
    ("vit_small", 224, 32, (7, 7), True),
    ("vit_small", 64, 8, (8, 8), True),
    ("t2t_vit_14", 64, None, (4, 4), True),
])
def test_token_grid(name, size, patch, grid, cls):
    backbone = build_backbone(name, img_size=size, patch_size=patch, **TINY)
    tokens = backbone.tokens(torch.rand(2, 3, size, size))
    assert tokens.grid == grid == backbone.token_grid(size)
    assert tokens.patches.shape == (2, grid[0] * grid[1], backbone.embed_dim)
    assert (tokens.cls is not None) == cls
    if cls:
        assert tokens.cls.shape == (2, backbone.embed_dim)


@pytest.mark.parametrize("name", ["vit_small", "swin_tiny", "t2t_vit_14"])
def test_each_backbone_pools_its_ssl_grid_as_its_spec_says(name):
    """The run geometry (SSL grid, position classes) reads the spec's pool, RelViT the module's:
    one T2T pooling, not two that could drift."""
    backbone = build_backbone(name, img_size=64, patch_size=8, **TINY)
    assert backbone.ssl_pool == get_backbone_spec(name).ssl_pool == (2 if name == "t2t_vit_14"
                                                                     else 1)


@pytest.mark.parametrize("name,img_size,patch,extra,shape,grid", [
    ("vit_small", 16, 4, TINY, (16, 32), (4, 8)),  # wide: rows, then columns
    ("vit_small", 32, 4, TINY, (24, 24), (6, 6)),  # a mega-patch input, below img_size
    ("swin_tiny", 32, 2, dict(embed_dim=12, depth=2, num_heads=1, window_size=4), (32, 64),
     (8, 16)),
])
def test_token_grid_is_the_given_inputs(name, img_size, patch, extra, shape, grid):
    """The grid is (H/stride, W/stride) of the input actually given, rows first, also for a
    wide input or one smaller than img_size (S-cell mega-patches); only square inputs at
    img_size had been tokenised, so a swapped or a square grid had passed."""
    backbone = build_backbone(name, img_size=img_size, patch_size=patch, **extra).eval()
    with torch.no_grad():
        tokens = backbone.tokens(torch.rand(1, 3, *shape))
    assert tokens.grid == grid
    assert tokens.patches.shape == (1, grid[0] * grid[1], backbone.embed_dim)


def test_vit_tokens_split_the_final_normed_sequence_at_the_cls_token():
    """ViT's `cls` is the normed sequence's first (CLS) token and `patches` the rest (as T2T's,
    in test_t2t.py); a split off the wrong end, or before the final norm, had passed."""
    torch.manual_seed(0)
    backbone = build_backbone("vit_small", img_size=16, patch_size=4, **TINY).eval()
    seen = []
    backbone.vit.norm.register_forward_hook(lambda _m, _i, out: seen.append(out))
    with torch.no_grad():
        tokens = backbone.tokens(torch.rand(2, 3, 16, 16))
    (normed,) = seen
    torch.testing.assert_close(tokens.cls, normed[:, 0])
    torch.testing.assert_close(tokens.patches, normed[:, 1:])


def test_a_missing_patch_size_or_an_unknown_backbone_is_named():
    """build_backbone names a missing ViT patch size instead of failing inside timm, and
    get_backbone_spec names the bad name with the registered ones (both messages had been
    free to change)."""
    with pytest.raises(ValueError, match="needs a patch size"):
        build_backbone("vit_small", img_size=32, **TINY)
    with pytest.raises(KeyError, match="unknown backbone 'resnet'; known: vit_tiny, vit_small"):
        get_backbone_spec("resnet")


def test_swin_token_grid_is_the_last_stage():
    # patch 2, 3 stages: 64 / 2 = 32 -> 16 -> 8 tokens a side, width 36 * 2^2
    backbone = build_backbone("swin_tiny", img_size=64, patch_size=2, embed_dim=36, depth=3,
                              num_heads=1, window_size=4)
    tokens = backbone.tokens(torch.rand(2, 3, 64, 64))
    assert tokens.grid == (8, 8) == backbone.token_grid(64)
    assert tokens.patches.shape == (2, 64, 144) and tokens.cls is None


def test_swin_tiny_at_224_has_a_7x7_grid_of_width_768():
    backbone = build_backbone("swin_tiny", img_size=224)
    assert backbone.token_grid(224) == (7, 7) and backbone.embed_dim == 768


def test_vit_positional_embeddings_on_and_off():
    on = build_backbone("vit_small", img_size=16, patch_size=4, pos_embed=True, **TINY)
    off = build_backbone("vit_small", img_size=16, patch_size=4, pos_embed=False, **TINY)
    assert on.vit.pos_embed.shape == (1, 17, 36)
    assert off.vit.pos_embed is None
    # without positional embeddings the encoder is permutation-equivariant (spec §2.2)
    off.eval()
    x = torch.rand(1, 3, 16, 16)
    from relvit.ssl.patches import patchify, permute_patches, unpatchify
    perm = torch.randperm(16)
    shuffled = unpatchify(permute_patches(patchify(x, 4), perm), (4, 4))
    a, b = off.tokens(x).patches, off.tokens(shuffled).patches
    torch.testing.assert_close(b, a[:, perm], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name,size,patch,extra", [
    ("vit_small", 16, 4, TINY),
    ("swin_tiny", 32, 2, dict(embed_dim=12, depth=2, num_heads=1, window_size=4)),
    ("t2t_vit_14", 32, None, TINY),
])
def test_drop_rate_drops_inside_the_blocks(name, size, patch, extra):
    """`model.drop_rate` is the original's `--dropout`: the blocks' outputs, not an unused head,
    and the dropout after the position embedding (spec §4: pos-dropout); attention dropout
    stays 0 and T2T's Performers keep [R]'s own 0.1 (a drop_rate reaching those, or missing the
    position dropout, had passed)."""
    x = torch.rand(2, 3, size, size)

    def two_training_passes(drop_rate):
        torch.manual_seed(0)
        backbone = build_backbone(name, img_size=size, patch_size=patch, drop_rate=drop_rate,
                                  **extra).train()
        return backbone.tokens(x).patches, backbone.tokens(x).patches

    if name != "t2t_vit_14":  # whose Performer keeps [R]'s own dropout 0.1
        first, second = two_training_passes(0.0)
        torch.testing.assert_close(first, second)
    first, second = two_training_passes(0.5)
    assert not torch.allclose(first, second)
    backbone = build_backbone(name, img_size=size, patch_size=patch, drop_rate=0.5, **extra)
    block_dropouts = [m for n, m in backbone.named_modules() if isinstance(m, torch.nn.Dropout)
                      and "block" in n and not n.endswith("attn_drop")]  # `--attn_drop`: 0
    assert block_dropouts and all(m.p == 0.5 for m in block_dropouts)
    dropouts = {n: m.p for n, m in backbone.named_modules() if isinstance(m, torch.nn.Dropout)}
    attn = [p for n, p in dropouts.items() if n.endswith("attn_drop")]
    assert attn and set(attn) == {0}
    # Swin has no absolute position embedding, hence no position dropout
    assert [p for n, p in dropouts.items() if n.endswith("pos_drop")] == (
        [] if name == "swin_tiny" else [0.5])
    performers = [p for n, p in dropouts.items() if n.startswith("tokens_to_token.")]
    assert performers == ([0.1] * 4 if name == "t2t_vit_14" else [])


def test_logits_stay_float32_under_bf16_autocast():
    """CUDA runs train and evaluate under bf16 autocast (here the CPU's): the top-1 is taken
    from float32 logits, whatever the backbone computed in."""
    backbone = build_backbone("vit_small", img_size=16, patch_size=4, **TINY)
    model = RelViT(backbone, 10, SSLTasks(), 16).eval()
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)["logits"]
    assert logits.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(logits, model(x)["logits"], atol=0.1, rtol=0.05)


def test_heads_shapes():
    z = torch.rand(2, 49, 384)
    rel = PairwiseScoreHead(384, 9)
    assert rel.head_dim == 42 and rel(z).shape == (2, 9, 49, 49)
    assert PairwiseScoreHead(384, 1, head_dim=384)(z).shape == (2, 1, 49, 49)
    assert PositionHead(384, 49)(z).shape == (2, 49, 49)
    with pytest.raises(ValueError, match="too small"):
        PairwiseScoreHead(8, 9)


def test_relation_head_is_a_scaled_dot_product_per_class():
    """Spec §1.2/1.4: per class, (z W_q)(z W_k)^T / sqrt(d_h), with bias-free W_q and W_k, also
    for the one-output heads (a key bias had passed)."""
    head = PairwiseScoreHead(18, 9)
    z = torch.rand(1, 5, 18)
    q = head.query(z).view(1, 5, 9, 2)
    k = head.key(z).view(1, 5, 9, 2)
    expected = torch.einsum("bnch,bmch->bcnm", q, k) / 2 ** 0.5
    torch.testing.assert_close(head(z), expected)
    for head in (head, PairwiseScoreHead(18, 1, head_dim=18)):
        assert head.query.bias is None and head.key.bias is None
        assert sum(p.numel() for p in head.parameters()) == \
            2 * 18 * head.num_outputs * head.head_dim


@pytest.mark.parametrize("name,size,patch,ssl_grid", [
    ("vit_small", 32, 4, 8), ("t2t_vit_14", 224, None, 7), ("t2t_vit_14", 64, None, 2),
])
def test_relvit_outputs(name, size, patch, ssl_grid):
    backbone = build_backbone(name, img_size=size, patch_size=patch, **TINY)
    n = ssl_grid * ssl_grid
    model = RelViT(backbone, 10, ALL_TASKS, num_positions=n)
    out = model(torch.rand(2, 3, size, size))
    assert out["logits"].shape == (2, 10)
    assert out["relations"].scores().shape == (2, 9, n, n)
    assert out["positions"].shape == (2, n, n)
    assert out["distances"].shape == out["angles"].shape == (2, 1, n, n)


def test_each_ssl_head_exists_exactly_when_its_task_is_on():
    """RelViT builds and outputs each SSL head for its own task flag only (an angle head made
    for the distance task had passed: every test turned on all four or none)."""
    backbone = build_backbone("vit_small", img_size=16, patch_size=4, **TINY)
    x = torch.rand(1, 3, 16, 16)
    for task in ("relations", "positions", "distances", "angles"):
        model = RelViT(backbone, None, SSLTasks(**{task: True}), num_positions=16)
        with torch.no_grad():
            assert set(model(x)) == {task}, task


@pytest.mark.parametrize("projections", [True, False])
def test_ssl_heads_share_one_matrix_product(projections):
    """`RelViT.ssl_outputs` maps the tokens by all heads' Linears at once (`joint_maps`): the
    outputs and the gradients of each head on its own."""
    torch.manual_seed(0)
    backbone = build_backbone("vit_small", img_size=16, patch_size=4, **TINY)
    # float64: in float32 one joint matmul and four separate ones differ by rounding, which a
    # change to the random draws moved past the tolerance
    model = RelViT(backbone, None, ALL_TASKS, num_positions=16,
                   relation_projections=projections).double()
    z = torch.randn(2, 17, 36, dtype=torch.float64)[:, 1:].requires_grad_()  # strided, as after CLS
    joint = model.ssl_outputs(z)
    alone = {"relations": (model.relation_head.project(z) if projections
                           else model.relation_head(z)),
             "positions": model.position_head(z), "distances": model.distance_head(z),
             "angles": model.angle_head(z)}
    assert joint.keys() == alone.keys()
    params = [z, *model.parameters()]
    grads = []
    for out in (joint, alone):
        rel = out["relations"]
        total = sum((o.sin() * (i + 1)).sum() for i, o in enumerate([
            *(rel if projections else [rel]), out["positions"], out["distances"], out["angles"]]))
        grads.append(torch.autograd.grad(total, params, allow_unused=True))
    for name in alone:
        a, b = joint[name], alone[name]
        for x, y in zip(a if projections and name == "relations" else [a],
                        b if projections and name == "relations" else [b]):
            assert x.shape == y.shape
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    for g_joint, g_alone in zip(*grads):
        if g_alone is None:  # the backbone's own parameters: not on this path
            assert g_joint is None
            continue
        torch.testing.assert_close(g_joint, g_alone, rtol=1e-5, atol=1e-6)


def test_swin_classifier_pools_the_tokens():
    backbone = build_backbone("swin_tiny", img_size=32, patch_size=2, embed_dim=18, depth=2,
                              num_heads=1, window_size=4)
    model = RelViT(backbone, 5, SSLTasks(relations=True), num_positions=0)
    out = model(torch.rand(2, 3, 32, 32))
    assert out["logits"].shape == (2, 5) and out["relations"].scores().shape == (2, 9, 64, 64)


def test_swin_classifier_is_initialised_as_swins_own_head():
    """[R] classifies with Swin's own `head`, which Swin's `_init_weights` draws trunc-normal
    (std 0.02) with zero bias; ViT's and T2T's keep nn.Linear's default, as [R]'s do."""
    torch.manual_seed(0)
    swin = RelViT(build_backbone("swin_tiny", img_size=32, patch_size=2, embed_dim=96, depth=2,
                                 num_heads=1, window_size=4), 100, SSLTasks(relations=True))
    weight = swin.classifier.weight
    assert abs(weight.std().item() - 0.02) < 0.002  # nn.Linear's: 1/sqrt(3 * 192) = 0.042
    assert torch.count_nonzero(swin.classifier.bias) == 0
    vit = RelViT(build_backbone("vit_small", img_size=32, patch_size=4, **TINY), 100,
                 SSLTasks(relations=True))
    assert torch.count_nonzero(vit.classifier.bias) > 0  # nn.Linear's uniform bias


def test_relation_loss_with_and_without_the_diagonal():
    targets = relation_targets(3, 3)
    perfect = torch.nn.functional.one_hot(targets, 9).permute(2, 0, 1)[None].float() * 50
    assert losses.relation_loss(perfect, targets) < 1e-6
    assert losses.relation_accuracy(perfect, targets) == 1.0
    # predicting CC everywhere is right on the diagonal only: 1/9 with it, 0 without it
    centre_only = torch.zeros(1, 9, 9, 9)
    centre_only[:, 4] = 1.0
    assert losses.relation_accuracy(centre_only, targets, include_diagonal=True) == pytest.approx(1 / 9)
    assert losses.relation_accuracy(centre_only, targets) == 0.0
    wrong = torch.log(torch.tensor(torch.e + 8))  # CE of an entry whose class is not CC
    with_diag = losses.relation_loss(centre_only, targets, include_diagonal=True)
    without = losses.relation_loss(centre_only, targets, include_diagonal=False)
    torch.testing.assert_close(without, wrong)
    torch.testing.assert_close(with_diag, (72 * wrong + 9 * (wrong - 1)) / 81)


@pytest.mark.parametrize("model, label", [
    ({"backbone": "swin_tiny", "embed_dim": 24, "num_heads": 1}, "Swin-T (D=24, 1 head)"),
    ({"backbone": "vit_small", "patch_size": 4, "embed_dim": 36, "depth": 1, "num_heads": 3},
     "ViT/4 (D=36, depth 1, 3 heads)"),
    ({"backbone": "vit_small", "patch_size": 4}, "ViT-S/4"),
    ({"backbone": "vit_small", "patch_size": 4, "embed_dim": 384, "depth": 12, "num_heads": 6},
     "ViT-S/4"),  # sizes given at the preset's values
    ({"backbone": "vit_small", "patch_size": 4, "mlp_ratio": 2.0, "embed_dim": 384},
     "ViT/4 (MLP ratio 2)"),
    ({"backbone": "swin_tiny", "embed_dim": 24, "num_heads": 1, "patch_size": 2,
      "window_size": 4}, "Swin-T (D=24, 1 head, patch 2, window 4)"),
    ({"backbone": "swin_tiny", "patch_size": 4, "window_size": 7}, "Swin-T"),
    ({"backbone": "t2t_vit_14", "mlp_ratio": 4.0}, "T2T-ViT-14 (MLP ratio 4)")])
def test_tables_name_a_resized_backbone_by_what_changed(model, label):
    """Table 2 had named the smoke tier's Swin "Swin-T (D=24, 1 heads)"; a changed MLP ratio,
    window or Swin patch had kept the preset's name, and so its table cell; sizes given at the
    preset's values keep the paper's name (a label naming every given size had passed)."""
    from relvit.config import config_from_dict
    from relvit.geometry import backbone_label, run_geometry

    cfg = config_from_dict({"data": {"name": "cifar10"}, "model": model})
    assert backbone_label(cfg, run_geometry(cfg)) == label


def test_position_head_applies_its_linear_per_token():
    """out[:, :, n] is linear(z[:, n]): a reshape in place of the transpose keeps the [B, P, N]
    shape (P == N) but scrambles which token's logits are which."""
    torch.manual_seed(0)
    z = torch.randn(2, 9, 36)
    head = PositionHead(36, 9)
    expected = torch.stack([head.linear(z[:, n]) for n in range(9)], dim=2)
    torch.testing.assert_close(head(z), expected)
    backbone = build_backbone("vit_small", img_size=12, patch_size=4, **TINY)
    model = RelViT(backbone, None, SSLTasks(positions=True), num_positions=9)
    model.position_head.load_state_dict(head.state_dict())
    torch.testing.assert_close(model.ssl_outputs(z)["positions"], expected)


def _t2t_relvit(num_classes=None):
    torch.manual_seed(0)
    backbone = build_backbone("t2t_vit_14", img_size=64, **TINY)
    return RelViT(backbone, num_classes, SSLTasks(positions=True), num_positions=4).eval()


@pytest.mark.parametrize("side", [2, 3, 4, 5, 7, 13, 14, 28])
def test_pooled_side_is_the_t2t_pools_output_side(side):
    """pooled_side(n, f), which the run geometry reads, is the side after log2(f) passes of
    AvgPool2d(3, 2, 1), odd sides rounding up (28 -> 14 -> 7 for f = 4); only T2T's f = 2 on
    even grids had been checked, so rounding down, or a pass too many, had passed."""
    pool = torch.nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)
    x = torch.zeros(1, 1, side, side)
    for factor in (1, 2, 4):
        assert pooled_side(side, factor) == x.shape[-1], factor
        x = pool(x)


def test_t2t_ssl_pooling_excludes_the_padding():
    """Spec §1.1: T2T's 14 -> 7 pooling is AvgPool2d(3, 2, 1, count_include_pad=False): a constant
    token map stays constant, where counting the zero padding would darken the borders."""
    from relvit.models.contract import Tokens

    patches = torch.full((2, 16, 36), 1.5)
    z, grid = _t2t_relvit().ssl_tokens(Tokens(None, patches, (4, 4)))
    assert grid == (2, 2)
    torch.testing.assert_close(z, torch.full((2, 4, 36), 1.5))


def test_t2t_ssl_pooling_pools_each_channel_over_the_token_grid():
    """The [B, N, D] tokens are a [B, D, h, w] map only after a transpose; a bare reshape mixes
    channels and tokens (caught by random tokens on a non-square grid)."""
    from relvit.models.contract import Tokens

    torch.manual_seed(0)
    patches = torch.randn(2, 4 * 6, 36)
    z, grid = _t2t_relvit().ssl_tokens(Tokens(None, patches, (4, 6)))
    pool = torch.nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)
    expected = pool(patches.transpose(1, 2).reshape(2, 36, 4, 6))
    assert grid == (2, 3)
    torch.testing.assert_close(z, expected.flatten(2).transpose(1, 2))


@pytest.mark.parametrize("name,size,patch", [("vit_small", 16, 4), ("t2t_vit_14", 32, None)])
def test_classifier_reads_the_cls_token(name, size, patch):
    """ViT and T2T classify their CLS output (spec §1.7), not the mean of the patch tokens."""
    torch.manual_seed(0)
    backbone = build_backbone(name, img_size=size, patch_size=patch, **TINY)
    model = RelViT(backbone, 5, SSLTasks()).eval()
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        tokens = backbone.tokens(x)
        torch.testing.assert_close(model(x)["logits"], model.classifier(tokens.cls))
        assert not torch.allclose(model(x)["logits"], model.classifier(tokens.patches.mean(1)))


def test_the_classification_loss_trains_the_backbone():
    """Fine-tuning trains the whole backbone (spec §3: no freezing): the classifier's loss must
    reach the backbone's weights (a detached classifier input had passed the other tests)."""
    for name, size, patch, extra in (
            ("vit_small", 16, 4, dict(embed_dim=36, depth=1, num_heads=3)),
            ("swin_tiny", 32, 2, dict(embed_dim=18, depth=2, num_heads=1, window_size=4))):
        torch.manual_seed(0)
        backbone = build_backbone(name, img_size=size, patch_size=patch, **extra)
        model = RelViT(backbone, 5, SSLTasks())
        logits = model(torch.rand(2, 3, size, size))["logits"]
        torch.nn.functional.cross_entropy(logits, torch.tensor([1, 3])).backward()
        grads = [p.grad for p in backbone.parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), name
        assert model.classifier.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name,extra", [
    ("vit_small", {**TINY, "depth": 2}), ("t2t_vit_14", {**TINY, "depth": 2}),
    ("swin_tiny", dict(embed_dim=12, depth=2, num_heads=3, window_size=4)),
])
def test_build_backbone_passes_the_drop_path_rate(name, extra):
    """`model.drop_path_rate` reaches every backbone's blocks: the last block's DropPath has the
    full rate (0.2, not Swin's own default 0.1, nor 0)."""
    backbone = build_backbone(name, img_size=32, patch_size=4 if name == "vit_small" else 2,
                              drop_path_rate=0.2, **extra)
    blocks = {"vit_small": lambda: backbone.vit.blocks, "t2t_vit_14": lambda: backbone.blocks,
              "swin_tiny": lambda: backbone.swin.layers[-1].blocks}[name]()
    assert blocks[-1].drop_path1.drop_prob == pytest.approx(0.2)


@pytest.mark.parametrize("num_heads,expected", [(None, (3, 6, 12, 24)), (2, (2, 4, 8, 16))])
def test_swin_heads_double_each_stage(num_heads, expected):
    """Swin-T has (3, 6, 12, 24) heads (spec §4): the heads double with the width every stage."""
    backbone = build_backbone("swin_tiny", img_size=64, patch_size=2, embed_dim=48 if num_heads
                              else 12, num_heads=num_heads, window_size=4)
    assert tuple(stage.blocks[0].attn.num_heads for stage in backbone.swin.layers) == expected


def test_the_presets_are_the_papers_backbones():
    """Spec §4: ViT-S (D 384, depth 12, 6 heads, MLP 4, qkv bias, CLS drawn with std 0.02),
    Swin-T (depths 2-2-6-2, heads 3-6-12-24, window 7) and T2T-ViT-14 (depth 14, 6 heads, MLP 3)
    as `build_backbone` makes them; every other test resizes them. The specs of vit_tiny
    (D 192, 3 heads) and vit_base (D 768, 12 heads), depth 12, MLP 4, are DeiT's (they had been
    checked by name only)."""
    torch.manual_seed(0)
    vit = build_backbone("vit_small", img_size=32, patch_size=4)
    assert vit.embed_dim == 384 and len(vit.vit.blocks) == 12
    assert all(block.attn.num_heads == 6 and block.mlp.fc1.out_features == 4 * 384
               and block.attn.qkv.bias is not None for block in vit.vit.blocks)
    assert 0.015 < vit.vit.cls_token.std().item() < 0.025  # timm's own: 1e-6
    swin = build_backbone("swin_tiny", img_size=224)
    assert [len(stage.blocks) for stage in swin.swin.layers] == [2, 2, 6, 2]
    assert {tuple(block.window_size) for stage in swin.swin.layers[:3]
            for block in stage.blocks} == {(7, 7)}  # the last stage's grid is 7x7 itself
    t2t = build_backbone("t2t_vit_14", img_size=32)
    assert t2t.embed_dim == 384 and len(t2t.blocks) == 14
    assert all(block.attn.num_heads == 6 and block.mlp.fc1.out_features == 3 * 384
               for block in t2t.blocks)
    small = build_backbone("t2t_vit_14", img_size=32, mlp_ratio=2.0, **TINY)  # a tier's sizes
    assert small.blocks[0].attn.num_heads == 3 and small.blocks[0].mlp.fc1.out_features == 72
    tiny, base = get_backbone_spec("vit_tiny"), get_backbone_spec("vit_base")
    assert (tiny.embed_dim, tiny.depth, tiny.num_heads, tiny.mlp_ratio) == (192, 12, 3, 4.0)
    assert (base.embed_dim, base.depth, base.num_heads, base.mlp_ratio) == (768, 12, 12, 4.0)
    assert token_stride(tiny, 16, None) == 16


def test_ssl_heads_read_the_patch_tokens_only():
    """Spec §1.1: the SSL heads read the patch tokens; the CLS output is not added to them
    (the original's `--add_clf_to_patches` is off in every script). The position head has a
    bias (§1.3)."""
    torch.manual_seed(0)
    backbone = build_backbone("vit_small", img_size=16, patch_size=4, **TINY)
    model = RelViT(backbone, None, SSLTasks(positions=True), num_positions=16).eval()
    assert model.position_head.linear.bias is not None
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        expected = model.position_head(backbone.tokens(x).patches)
        torch.testing.assert_close(model(x)["positions"], expected)


def test_swin_classifier_reads_the_mean_of_its_tokens():
    """Swin has no CLS token: its classifier reads the mean of the last stage's tokens (timm's
    average pool), not one token."""
    torch.manual_seed(0)
    backbone = build_backbone("swin_tiny", img_size=32, patch_size=2, embed_dim=18, depth=2,
                              num_heads=1, window_size=4)
    model = RelViT(backbone, 5, SSLTasks()).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        patches = backbone.tokens(x).patches
        torch.testing.assert_close(model(x)["logits"], model.classifier(patches.mean(1)))

