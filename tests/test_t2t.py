"""Tests for the T2T-ViT backbone (relvit.models.t2t)."""

from __future__ import annotations

import math

import pytest
import torch

from relvit.models.contract import Backbone
from relvit.models.specs import T2T_STRIDE
from relvit.models.t2t import T2TViT, TokenPerformer, sinusoid_table, t2t_vit_14

TINY = dict(embed_dim=48, depth=2, num_heads=2, token_dim=16)


def tiny(img_size: int = 32, **kwargs: object) -> T2TViT:
    torch.manual_seed(0)
    return T2TViT(img_size=img_size, **{**TINY, **kwargs})


@pytest.fixture(scope="module")
def vit14() -> T2TViT:
    torch.manual_seed(0)
    return t2t_vit_14().eval()


def test_t2t_vit_14_at_224(vit14: T2TViT) -> None:
    assert isinstance(vit14, Backbone)
    assert vit14.embed_dim == 384 and vit14.ssl_pool == 2
    assert vit14.token_grid(224) == (14, 14)
    with torch.no_grad():
        out = vit14.tokens(torch.randn(1, 3, 224, 224))
    assert out.cls.shape == (1, 384)
    assert out.patches.shape == (1, 196, 384)
    assert out.grid == (14, 14)
    assert torch.isfinite(out.patches).all() and torch.isfinite(out.cls).all()


def test_t2t_vit_14_parameter_count(vit14: T2TViT) -> None:
    n = sum(p.numel() for p in vit14.parameters())
    assert n == sum(p.numel() for p in vit14.parameters() if p.requires_grad)
    assert abs(n - 21.5e6) < 0.5e6
    # The published 21.5 M includes the 1000-way ImageNet head, which this backbone does not own.
    assert abs(n + 384 * 1000 + 1000 - 21.5e6) < 0.1e6


@pytest.mark.parametrize(("size", "grid"), [(16, (1, 1)), (32, (2, 2)), (64, (4, 4)), (224, (14, 14))])
def test_token_grid(size: int, grid: tuple[int, int]) -> None:
    assert tiny().token_grid(size) == grid


@pytest.mark.parametrize(("height", "width"), [(32, 32), (64, 64), (32, 64), (48, 16)])
def test_tokens_shapes_at_small_sizes(height: int, width: int) -> None:
    model = tiny(img_size=32).eval()
    with torch.no_grad():
        out = model.tokens(torch.randn(2, 3, height, width))
    rows, cols = height // 16, width // 16
    assert out.grid == (rows, cols)
    assert out.cls.shape == (2, 48)
    assert out.patches.shape == (2, rows * cols, 48)
    if height == width:
        assert out.grid == model.token_grid(height)


def test_non_divisible_size_raises() -> None:
    """A side that is not a multiple of 16 is refused, naming it; a width off the multiple is
    refused naming both sides (only square inputs had been tried)."""
    model = tiny()
    with pytest.raises(ValueError, match="40"):
        model.token_grid(40)
    with pytest.raises(ValueError, match="40"):
        model.tokens(torch.randn(1, 3, 40, 40))
    with pytest.raises(ValueError, match="32x40"):
        model.tokens(torch.randn(1, 3, 32, 40))
    with pytest.raises(ValueError, match="30"):
        T2TViT(img_size=30, **TINY)


def test_sinusoid_table_values() -> None:
    table = sinusoid_table(5, 8)
    assert table.shape == (5, 8)
    assert torch.equal(table[0], torch.tensor([0.0, 1.0] * 4))
    for pos, i in [(1, 0), (3, 1), (4, 3)]:
        angle = pos / 10000 ** (2 * i / 8)
        assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
        assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_positional_embedding_is_fixed_sinusoid() -> None:
    model = tiny(img_size=32)
    names = {name for name, _ in model.named_parameters()}
    assert not any("pos_embed" in name for name in names)
    assert "pos_embed" not in model.state_dict()
    assert torch.equal(model.pos_embed[0], sinusoid_table(2 * 2 + 1, 48))
    # Larger inputs get a table built for their own grid.
    assert torch.equal(model._pos_embed(17)[0], sinusoid_table(17, 48))


def test_positional_embedding_reaches_output() -> None:
    """The same patch content at different grid positions gives different tokens."""
    model = tiny(img_size=32).eval()
    images = torch.randn(1, 3, 16, 16).repeat(1, 1, 2, 2)  # 2x2 tiling of one 16 px patch
    with torch.no_grad():
        patches = model.tokens(images).patches[0]
    assert not torch.allclose(patches[0], patches[3], atol=1e-4)


def test_gradients_reach_t2t_module() -> None:
    model = tiny(img_size=32).train()
    out = model.tokens(torch.randn(2, 3, 32, 32))
    (out.patches.pow(2).mean() + out.cls.pow(2).mean()).backward()
    t2t_params = list(model.tokens_to_token.named_parameters())
    assert t2t_params
    for name, param in t2t_params:
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
    assert model.tokens_to_token.attention1.kqv.weight.grad.abs().sum() > 0
    assert model.cls_token.grad is not None
    # The Performer random features are a fixed buffer, not a parameter.
    assert "omega" not in {name.split(".")[-1] for name, _ in model.named_parameters()}


def test_token_performer_is_permutation_equivariant() -> None:
    torch.manual_seed(0)
    layer = TokenPerformer(dim=12, emb=8).eval()
    x = torch.randn(2, 10, 12)
    perm = torch.randperm(10)
    with torch.no_grad():
        y, y_perm = layer(x), layer(x[:, perm])
    assert y.shape == (2, 10, 8)
    torch.testing.assert_close(y[:, perm], y_perm)


def test_config_and_init() -> None:
    model = tiny(drop_path_rate=0.2)
    assert isinstance(model.blocks[0].drop_path1, torch.nn.Identity)  # linear 0 -> drop_path_rate
    assert model.blocks[1].drop_path1.drop_prob == pytest.approx(0.2)
    block = model.blocks[0]
    assert block.attn.qkv.bias is None
    assert block.mlp.fc1.out_features == 3 * 48
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert all(m.bias is None or torch.all(m.bias == 0) for m in linears)
    # timm's trunc_normal_(std=0.02) cuts at +-2 absolute, so it is effectively N(0, 0.02^2).
    assert block.mlp.fc1.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert model.tokens_to_token.project.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert 0 < model.cls_token.std().item() < 0.04
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in norms)
    assert t2t_vit_14(depth=2, embed_dim=96, num_heads=2).embed_dim == 96


def test_kernel_attention_is_float32_under_autocast() -> None:
    """The Performer's random features exp(w.x - |x|^2/2) amplify bf16's rounding of w.x: under
    autocast the kernel product stays in float32, as the original (which trains in float32)."""
    torch.manual_seed(0)
    performer = TokenPerformer(dim=27, emb=64)
    k, q, v = (torch.randn(2, 49, 64) for _ in range(3))
    plain = performer.kernel_attention(k, q, v)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = performer.kernel_attention(k, q, v)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, plain, rtol=0, atol=0)


def test_tokens_split_the_final_normed_sequence_at_the_cls_token() -> None:
    """`cls` is the normed sequence's first token and `patches` the rest: slicing off the last
    token instead would feed the CLS output to the SSL heads."""
    model = tiny(img_size=32).eval()
    seen = []
    model.norm.register_forward_hook(lambda _m, _i, out: seen.append(out))
    with torch.no_grad():
        tokens = model.tokens(torch.randn(2, 3, 32, 32))
    (normed,) = seen
    assert normed.shape[1] == 1 + 4
    torch.testing.assert_close(tokens.cls, normed[:, 0])
    torch.testing.assert_close(tokens.patches, normed[:, 1:])


def test_soft_splits_are_the_originals() -> None:
    """The three soft splits are (kernel, stride, padding) (7, 4, 2), (3, 2, 1), (3, 2, 1), as
    [R]'s T2T module: another padding shifts every token's receptive field (and its grid)."""
    t2t = tiny().tokens_to_token
    splits = (t2t.soft_split0, t2t.soft_split1, t2t.soft_split2)
    assert [(s.kernel_size, s.stride, s.padding) for s in splits] == [(7, 4, 2), (3, 2, 1),
                                                                      (3, 2, 1)]
    assert math.prod(s.stride for s in splits) == T2T_STRIDE  # the backbone spec's patch


def test_t2t_module_restructures_tokens_channel_first() -> None:
    """Between soft splits the [B, L, C] tokens become a [B, C, h, w] map by a transpose, on a
    non-square input (a bare reshape, which mixes channels and tokens, had passed)."""
    t2t = tiny().tokens_to_token.eval()
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        y = t2t.attention1(t2t.soft_split0(x).transpose(1, 2))
        y = t2t.soft_split1(y.transpose(1, 2).reshape(1, -1, 8, 12)).transpose(1, 2)
        y = t2t.attention2(y)
        y = t2t.soft_split2(y.transpose(1, 2).reshape(1, -1, 4, 6)).transpose(1, 2)
        torch.testing.assert_close(t2t(x), t2t.project(y))


def test_the_blocks_read_the_cls_token_first_and_dropout_of_the_sum() -> None:
    """The blocks read pos_drop([CLS, patches] + table), as [R]: the CLS token first, plus the
    table's row 0, and the dropout (drop_rate 0.5, training) zeroing about half of the summed
    tokens. A CLS token placed last, or a dropout of the tokens before the table was added,
    had passed."""
    model = tiny(img_size=32, drop_rate=0.5)
    seen = []
    model.blocks.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        model.eval().tokens(x)
        model.train().tokens(x)
    kept, dropped = seen
    expected = model.cls_token[0, 0] + sinusoid_table(1, TINY["embed_dim"])[0]
    torch.testing.assert_close(kept[:, 0], expected.expand(2, -1))
    assert 0.35 < (dropped == 0).float().mean().item() < 0.65


def test_performer_kernel_attention_approximates_softmax_attention() -> None:
    """With many random features exp(w.x - |x|^2/2) / sqrt(m), the kernel product is close to
    softmax(q k^T) v; another norm term reweights the keys by their lengths."""
    torch.manual_seed(0)
    performer = TokenPerformer(dim=8, emb=8, kernel_ratio=16384 / 8)
    k = torch.randn(1, 6, 8) * torch.linspace(0.05, 0.5, 6)[None, :, None]  # keys' norms differ
    q = torch.randn(1, 5, 8) * 0.3
    v = torch.randn(1, 6, 8)
    exact = torch.softmax(q @ k.transpose(1, 2), dim=-1) @ v
    torch.testing.assert_close(performer.kernel_attention(k, q, v), exact, atol=0.1, rtol=0)


def test_performer_attention_adds_its_values_as_residual() -> None:
    """The Performer's attention output is v + proj(kernel attention): its input and output
    widths differ, so the residual is the value projection (as [R]). The layer is pre-norm with
    an MLP residual, a = attention(norm1(x)); a + mlp(norm2(a)), as [R]'s Token_performer (with
    identity-initialised norms, a misplaced or missing norm had passed)."""
    torch.manual_seed(0)
    layer = TokenPerformer(dim=12, emb=8).eval()
    x = torch.randn(2, 10, 12)
    with torch.no_grad():
        k, q, v = layer.kqv(x).split(8, dim=-1)
        expected = v + layer.proj(layer.kernel_attention(k, q, v))
        torch.testing.assert_close(layer.attention(x), expected)
        for p in (layer.norm1.weight, layer.norm1.bias, layer.norm2.weight, layer.norm2.bias):
            p.normal_()  # norms that are not the identity
        x = x * 3 + 1
        a = layer.attention(layer.norm1(x))
        torch.testing.assert_close(layer(x), a + layer.mlp(layer.norm2(a)))


def test_a_smaller_input_reads_the_first_rows_of_the_position_table() -> None:
    """Mega-patch inputs (S cells of a larger model's image, e.g. 192 of 224 px) take the fixed
    table's first rows: the CLS keeps position 0 and token k position k + 1, as in a model
    built for that size."""
    torch.manual_seed(0)
    big = T2TViT(img_size=64, **TINY).eval()
    assert torch.equal(big._pos_embed(5)[0], sinusoid_table(5, TINY["embed_dim"]))
    small = T2TViT(img_size=32, **TINY).eval()
    small.load_state_dict(big.state_dict())
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(big.tokens(x).patches, small.tokens(x).patches)

