"""Backbone presets and token-grid arithmetic: plain data, no torch or timm import, so that
config checks and reports can use them without loading the models."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone family and its preset size; `label` is how tables name it."""

    family: str  # vit | swin | t2t
    label: str
    embed_dim: int
    depth: int  # ViT/T2T: blocks; Swin: stages
    num_heads: int  # Swin: heads of the first stage (doubling per stage)
    mlp_ratio: float
    patch_size: int | None = None  # fixed by the architecture (Swin 4, T2T 16 overall); ViT: data
    window_size: int = 7
    ssl_pool: int = 1  # RelViT average-pools the token grid by this before its SSL heads


T2T_SSL_POOL = 2  # T2T-ViT's 14x14 tokens pooled to a 7x7 SSL grid (method spec, backbones)
T2T_STRIDE = 16  # pixels per T2T-ViT token: its three soft splits have strides 4, 2 and 2

BACKBONES: dict[str, BackboneSpec] = {
    "vit_tiny": BackboneSpec("vit", "ViT-Ti", 192, 12, 3, 4.0),
    "vit_small": BackboneSpec("vit", "ViT-S", 384, 12, 6, 4.0),
    "vit_base": BackboneSpec("vit", "ViT-B", 768, 12, 12, 4.0),
    "swin_tiny": BackboneSpec("swin", "Swin-T", 96, 4, 3, 4.0, patch_size=4, window_size=7),
    "t2t_vit_14": BackboneSpec("t2t", "T2T-ViT-14", 384, 14, 6, 3.0, patch_size=T2T_STRIDE,
                               ssl_pool=T2T_SSL_POOL),
}


def token_stride(spec: BackboneSpec, patch_size: int | None, depth: int | None) -> int:
    """Pixels per output token: the patch (ViT), patch * 2^(stages - 1) (Swin), 16 (T2T)."""
    patch = patch_size or spec.patch_size
    if spec.family == "swin":
        return patch * 2 ** ((depth or spec.depth) - 1)
    return patch


def get_backbone_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise KeyError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}") from None


def pooled_side(side: int, factor: int) -> int:
    """Side after AvgPool2d(kernel 3, stride 2, padding 1) applied log2(factor) times."""
    while factor > 1:
        side = (side + 2 - 3) // 2 + 1
        factor //= 2
    return side
