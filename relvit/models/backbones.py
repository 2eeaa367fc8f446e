"""Backbones behind one contract (`relvit.models.contract.Backbone`): ViT and Swin from timm,
T2T-ViT-14 written here (timm has none). Presets give the paper's sizes; width/depth overrides
give the tiny variants of the smoke tier.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.swin_transformer import (
    SwinTransformer,
    SwinTransformerBlock,
    window_partition,
    window_reverse,
)
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from relvit.models.contract import Backbone, Tokens
from relvit.models.specs import BACKBONES, get_backbone_spec, token_stride

SWIN_TINY_DEPTHS = (2, 2, 6, 2)


class ViTBackbone(Backbone):
    """timm `VisionTransformer` (pre-norm, qkv bias, CLS token, final LayerNorm, eps 1e-6)."""

    def __init__(self, img_size: int, patch_size: int, embed_dim: int, depth: int,
                 num_heads: int, mlp_ratio: float = 4.0, pos_embed: bool = True,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0):
        super().__init__()
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.vit = VisionTransformer(
            img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
            num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, class_token=True,
            pos_embed="learn" if pos_embed else "none", dynamic_img_size=True,
            # timm's `drop_rate` is only the (unused) head's dropout; the original's `--dropout`
            # drops after the position embedding and after attention's and the MLP's outputs
            pos_drop_rate=drop_rate, proj_drop_rate=drop_rate, drop_path_rate=drop_path_rate,
            num_classes=0,
        )
        nn.init.trunc_normal_(self.vit.cls_token, std=0.02)  # as the original ViT (spec §4)

    def tokens(self, images: Tensor) -> Tokens:
        out = self.vit.forward_features(images)
        prefix = self.vit.num_prefix_tokens
        grid = (images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size)
        return Tokens(out[:, 0], out[:, prefix:], grid)

    def token_grid(self, image_size: int) -> tuple[int, int]:
        return image_size // self.patch_size, image_size // self.patch_size


class PadFirstSwinBlock(SwinTransformerBlock):
    """timm's Swin block with the cyclic shift done *after* padding to whole windows.

    timm (1.0.31) rolls the H x W grid, then pads it, then masks the padded grid as if the padded
    grid had been rolled: on a grid that is not a multiple of the window (48² at 192 px) a token
    on one edge attends to the far edge's tokens and not to its own neighbours. The official Swin
    detection code (Swin-Transformer-Object-Detection, `SwinTransformerBlock.forward`) pads first,
    then rolls the padded grid, whose mask then lines up; we do the same. Where the grid is a
    multiple of the window (every grid at 224 px) the padding is empty and the result is
    bit-identical to timm's.
    """

    def _attn(self, x: Tensor) -> Tensor:
        _, h, w, c = x.shape
        wh, ww = self.window_size
        x = F.pad(x, (0, 0, 0, (ww - w % ww) % ww, 0, (wh - h % wh) % wh))
        _, hp, wp, _ = x.shape
        shift = any(self.shift_size)
        if shift:
            x = torch.roll(x, shifts=(-self.shift_size[0], -self.shift_size[1]), dims=(1, 2))
        mask = self.get_attn_mask(x) if self.dynamic_mask else self.attn_mask
        windows = self.attn(window_partition(x, self.window_size).view(-1, self.window_area, c),
                            mask=mask)
        x = window_reverse(windows.view(-1, wh, ww, c), self.window_size, hp, wp)
        if shift:
            x = torch.roll(x, shifts=self.shift_size, dims=(1, 2))
        return x[:, :h, :w, :].contiguous()


class SwinBackbone(Backbone):
    """timm `SwinTransformer`; tokens are the final stage after its LayerNorm (no CLS)."""

    classifier_init_std = 0.02  # Swin's `_init_weights`, which [R]'s head gets

    def __init__(self, img_size: int, patch_size: int, embed_dim: int, depths: tuple[int, ...],
                 num_heads: tuple[int, ...], window_size: int, mlp_ratio: float = 4.0,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.1):
        super().__init__()
        self.swin = SwinTransformer(
            img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depths=depths,
            num_heads=num_heads, window_size=window_size, mlp_ratio=mlp_ratio,
            proj_drop_rate=drop_rate, drop_path_rate=drop_path_rate, num_classes=0,
            dynamic_img_size=True,  # mega-patch inputs are smaller than img_size
        )
        for stage in self.swin.layers:
            for block in stage.blocks:
                block.__class__ = PadFirstSwinBlock  # same parameters, pad-then-shift `_attn`
        self.embed_dim = self.swin.num_features
        self.stride = token_stride(BACKBONES["swin_tiny"], patch_size, len(depths))

    def tokens(self, images: Tensor) -> Tokens:
        out = self.swin.forward_features(images)  # [B, h, w, C]
        b, h, w, c = out.shape
        return Tokens(None, out.reshape(b, h * w, c), (h, w))

    def token_grid(self, image_size: int) -> tuple[int, int]:
        return image_size // self.stride, image_size // self.stride


def build_backbone(name: str, img_size: int, patch_size: int | None = None,
                   embed_dim: int | None = None, depth: int | None = None,
                   num_heads: int | None = None, mlp_ratio: float | None = None,
                   window_size: int | None = None, pos_embed: bool = True,
                   drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> Backbone:
    """Build a backbone from its preset, with any size given here overriding the preset."""
    spec = get_backbone_spec(name)
    dim = embed_dim or spec.embed_dim
    depth = depth or spec.depth
    heads = num_heads or spec.num_heads
    mlp = mlp_ratio or spec.mlp_ratio
    if spec.family == "vit":
        if patch_size is None:
            raise ValueError("a ViT backbone needs a patch size")
        return ViTBackbone(img_size, patch_size, dim, depth, heads, mlp, pos_embed,
                           drop_rate, drop_path_rate)
    if spec.family == "swin":
        depths = tuple(SWIN_TINY_DEPTHS[i] if i < len(SWIN_TINY_DEPTHS) else 2
                       for i in range(depth))
        return SwinBackbone(img_size, patch_size or spec.patch_size, dim, depths,
                            tuple(heads * 2**i for i in range(depth)),
                            window_size or spec.window_size, mlp, drop_rate, drop_path_rate)
    from relvit.models.t2t import T2TViT

    return T2TViT(img_size=img_size, embed_dim=dim, depth=depth, num_heads=heads,
                  mlp_ratio=mlp, drop_rate=drop_rate, drop_path_rate=drop_path_rate)


