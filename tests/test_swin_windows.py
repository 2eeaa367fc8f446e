"""Swin's shifted windows on grids that are not a multiple of the window (`PadFirstSwinBlock`).

timm shifts before padding, which on such grids (48² at 192 px) lets an edge token attend to the
far edge; our blocks pad first, as the official Swin detection code does.
"""

import copy

import pytest
import torch
from timm.models.swin_transformer import SwinTransformerBlock

from relvit.models.backbones import PadFirstSwinBlock, build_backbone

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# the paper's Swin geometry (patch 4, window 7) at a tiny width: stage grids 56/28/14/7 at 224 px
PAPER = {"patch_size": 4, "window_size": 7, "embed_dim": 12, "depth": 4, "num_heads": 1}


def paper_swin():
    torch.manual_seed(0)
    return build_backbone("swin_tiny", img_size=224, **PAPER).double().eval()


def timm_swin(backbone):
    """The same weights in timm's own blocks."""
    swin = copy.deepcopy(backbone.swin)
    for stage in swin.layers:
        for block in stage.blocks:
            block.__class__ = SwinTransformerBlock
    return swin


def test_every_block_is_patched():
    blocks = [b for stage in paper_swin().swin.layers for b in stage.blocks]
    assert blocks and all(type(b) is PadFirstSwinBlock for b in blocks)


@pytest.mark.parametrize("size", [(224, 224), (224, 448)])  # every grid a multiple of 7
def test_same_as_timm_where_the_grid_is_a_multiple_of_the_window(size):
    backbone = paper_swin()
    images = torch.randn(2, 3, *size, dtype=torch.float64)
    with torch.no_grad():
        ours = backbone.swin.forward_features(images)
        theirs = timm_swin(backbone).forward_features(images)
    assert torch.equal(ours, theirs)


def changed(block, x, index, dim):
    """Rows (dim 1) or columns (dim 2) of the block's output moved by perturbing token `index`."""
    bumped = x.clone()
    bumped[(0, *index)] += torch.randn(x.shape[-1], dtype=x.dtype)  # not a constant: LayerNorm
    with torch.no_grad():
        diff = (block(bumped) - block(x)).abs()
    other = tuple(d for d in (1, 2, 3) if d != dim)
    return (diff.amax(dim=(0, *other)) > 1e-12).nonzero().flatten().tolist()


@pytest.mark.parametrize("grid", [(48, 48), (48, 56), (56, 48)])
def test_a_shifted_window_never_wraps_to_the_far_edge(grid):
    """Stage 0 of a 192-px input (48²) or of a padded 224x192 batch: an edge token reaches its
    own shifted window (rows 0-2), as on the 56² grid; timm's order reached rows 0, 45, 46, 47."""
    block = paper_swin().swin.layers[0].blocks[1]
    assert block.shift_size == (3, 3) and block.window_size == (7, 7)
    x = torch.randn(1, *grid, 12, dtype=torch.float64)
    assert changed(block, x, (0, 10), dim=1) == [0, 1, 2]
    assert changed(block, x, (10, 0), dim=2) == [0, 1, 2]
    last = changed(block, x, (grid[0] - 1, 10), dim=1)  # the bottom edge: its own rows only
    assert min(last) >= grid[0] - 7 and set(last) >= {grid[0] - 3, grid[0] - 2, grid[0] - 1}


def reference_attention(block, x):
    """One block's (shifted) window attention written out densely, without windows or rolls.

    The input is zero-padded to whole windows; two tokens attend to each other iff, once the
    padded grid is rolled by the shift, they fall in the same window and the roll did not wrap
    between them (their rolled offset is their true offset). Relative position bias by offset."""
    b, h, w, c = x.shape
    (wh, ww), (sh, sw) = block.window_size, block.shift_size
    hp, wp = -(-h // wh) * wh, -(-w // ww) * ww
    padded = x.new_zeros(b, hp, wp, c)
    padded[:, :h, :w] = x
    ys, xs = torch.meshgrid(torch.arange(hp), torch.arange(wp), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    ry, rx = (ys - sh) % hp, (xs - sw) % wp  # where each token sits after the roll
    dy, dx = ry[:, None] - ry[None], rx[:, None] - rx[None]
    allowed = ((ry[:, None] // wh == ry[None] // wh) & (rx[:, None] // ww == rx[None] // ww)
               & (dy == ys[:, None] - ys[None]) & (dx == xs[:, None] - xs[None]))
    attn = block.attn
    offset = torch.where(allowed, (dy + wh - 1) * (2 * ww - 1) + dx + ww - 1, 0)
    bias = attn.relative_position_bias_table[offset]
    q, k, v = attn.qkv(padded.reshape(b, hp * wp, c)).reshape(b, -1, 3, attn.num_heads,
                                                             c // attn.num_heads).unbind(2)
    logits = torch.einsum("bihd,bjhd->bhij", q, k) * attn.scale + bias.permute(2, 0, 1)
    weights = logits.masked_fill(~allowed, float("-inf")).softmax(-1)
    out = attn.proj(torch.einsum("bhij,bjhd->bihd", weights, v).reshape(b, hp * wp, c))
    return out.reshape(b, hp, wp, c)[:, :h, :w]


@pytest.mark.parametrize("index", [0, 1])  # plain and shifted windows
def test_matches_a_plain_reference_on_a_grid_of_partial_windows(index):
    torch.manual_seed(1)
    backbone = build_backbone("swin_tiny", img_size=32, patch_size=2, embed_dim=12, depth=2,
                              num_heads=2, window_size=4).double().eval()
    block = backbone.swin.layers[0].blocks[index]  # 16² grid: window 4, shift 0 / 2
    assert block.shift_size == ((2, 2) if index else (0, 0))
    with torch.no_grad():
        block.attn.relative_position_bias_table.normal_()  # a bias that matters
        x = torch.randn(2, 10, 13, 12, dtype=torch.float64)  # 3x4 windows, the last ones partial
        ours = block._attn(x)
        torch.testing.assert_close(ours, reference_attention(block, x), rtol=1e-10, atol=1e-12)
        if index:  # timm's order does not (the test can tell the two apart)
            theirs = SwinTransformerBlock._attn(block, x)
            assert not torch.allclose(theirs, reference_attention(block, x), atol=1e-6)
