"""T2T-ViT backbone (Yuan et al., "Tokens-to-Token ViT", ICCV 2021) as used by RelViT.

A Performer-based tokens-to-token (T2T) module turns the image into an (H/16)x(W/16) token grid,
then a CLS token, a fixed sinusoidal positional embedding and a stack of pre-norm ViT blocks follow.
RelViT uses T2T-ViT-14 (D 384, depth 14, 6 heads, MLP ratio 3, token dim 64); it average-pools the
14x14 token map to 7x7 for its SSL heads, which the caller does (see `Backbone.ssl_pool`).
"""

from __future__ import annotations

import math

import torch
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from relvit.models.contract import Backbone, Tokens
from relvit.models.specs import T2T_SSL_POOL, T2T_STRIDE

__all__ = ["T2TViT", "T2TModule", "TokenPerformer", "sinusoid_table", "t2t_vit_14"]


def sinusoid_table(n_position: int, dim: int) -> Tensor:
    """The [n_position, dim] sinusoid table: sin(p / 10000^(2i/dim)) on channel 2i, cos on 2i+1."""
    position = torch.arange(n_position, dtype=torch.float64)[:, None]
    channel = torch.arange(dim)
    angle = position / torch.pow(10000.0, (2 * (channel // 2)).double() / dim)
    return torch.where(channel % 2 == 0, angle.sin(), angle.cos()).float()


class TokenPerformer(nn.Module):
    """One T2T layer: single-head Performer attention (positive random features) plus an MLP.

    Input width `dim` differs from output width `emb`, so the attention residual is taken from the
    value projection. The random-feature matrix is fixed (a buffer, never trained).
    """

    def __init__(
        self, dim: int, emb: int, kernel_ratio: float = 0.5, drop: float = 0.1, eps: float = 1e-8
    ) -> None:
        super().__init__()
        self.emb = emb
        self.num_features = int(emb * kernel_ratio)
        self.eps = eps
        self.norm1 = nn.LayerNorm(dim)
        self.kqv = nn.Linear(dim, 3 * emb)
        self.proj = nn.Linear(emb, emb)
        self.proj_drop = nn.Dropout(drop)
        self.norm2 = nn.LayerNorm(emb)
        self.mlp = nn.Sequential(nn.Linear(emb, emb), nn.GELU(), nn.Linear(emb, emb), nn.Dropout(drop))
        omega = nn.init.orthogonal_(torch.empty(self.num_features, emb)) * math.sqrt(self.num_features)
        self.register_buffer("omega", omega)

    def _kernel_features(self, x: Tensor) -> Tensor:
        """Positive random features exp(w.x - |x|^2 / 2) / sqrt(m) of [B, T, emb] -> [B, T, m] (fp32)."""
        x = x.float()
        wx = x @ self.omega.float().t()
        return torch.exp(wx - x.pow(2).sum(-1, keepdim=True) / 2) / math.sqrt(self.num_features)

    def kernel_attention(self, k: Tensor, q: Tensor, v: Tensor) -> Tensor:
        """The softmax-kernel product of [B, T, emb] keys, queries and values, in float32 under
        autocast too (the exp of the features would amplify bf16's rounding of w.x; the
        original computes in float32)."""
        with torch.autocast(k.device.type, enabled=False):
            kp, qp = self._kernel_features(k), self._kernel_features(q)
            normaliser = qp @ kp.sum(dim=1).unsqueeze(-1)  # [B, T, 1]
            return qp @ (kp.transpose(1, 2) @ v.float()) / (normaliser + self.eps)

    def attention(self, x: Tensor) -> Tensor:
        """Linear-time softmax-kernel attention; [B, T, dim] -> [B, T, emb]."""
        k, q, v = self.kqv(x).split(self.emb, dim=-1)
        y = self.kernel_attention(k, q, v)  # [B, T, emb]
        return v + self.proj_drop(self.proj(y.to(v.dtype)))

    def forward(self, x: Tensor) -> Tensor:
        x = self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class T2TModule(nn.Module):
    """Tokens-to-token module: soft split, Performer, re-structurise, repeated; stride 16 overall."""

    def __init__(
        self, in_chans: int = 3, embed_dim: int = 384, token_dim: int = 64, kernel_ratio: float = 0.5
    ) -> None:
        super().__init__()
        self.soft_split0 = nn.Unfold(kernel_size=7, stride=4, padding=2)
        self.soft_split1 = nn.Unfold(kernel_size=3, stride=2, padding=1)
        self.soft_split2 = nn.Unfold(kernel_size=3, stride=2, padding=1)
        self.attention1 = TokenPerformer(in_chans * 7 * 7, token_dim, kernel_ratio)
        self.attention2 = TokenPerformer(token_dim * 3 * 3, token_dim, kernel_ratio)
        self.project = nn.Linear(token_dim * 3 * 3, embed_dim)

    @staticmethod
    def _split(split: nn.Unfold, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Soft split a [B, C, H, W] map into [B, L, C*k*k] tokens and return their (rows, cols)."""
        k, s, p = split.kernel_size, split.stride, split.padding
        rows, cols = ((size + 2 * p - k) // s + 1 for size in x.shape[-2:])
        return split(x).transpose(1, 2), (rows, cols)

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, H, W] images -> [B, (H/16)(W/16), embed_dim] tokens (row-major)."""
        x, grid = self._split(self.soft_split0, x)
        for attention, split in ((self.attention1, self.soft_split1), (self.attention2, self.soft_split2)):
            x = attention(x)
            x, grid = self._split(split, x.transpose(1, 2).unflatten(2, grid))
        return self.project(x)


class T2TViT(Backbone):
    """T2T-ViT with Performer T2T module, CLS token and fixed sinusoidal positional embedding."""

    ssl_pool = T2T_SSL_POOL

    def __init__(
        self,
        img_size: int = 224,
        in_chans: int = 3,
        embed_dim: int = 384,
        depth: int = 14,
        num_heads: int = 6,
        mlp_ratio: float = 3.0,
        token_dim: int = 64,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.img_size = img_size
        self.tokens_to_token = T2TModule(in_chans, embed_dim, token_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        rows, cols = self.token_grid(img_size)
        pos_embed = sinusoid_table(rows * cols + 1, embed_dim).unsqueeze(0)
        self.register_buffer("pos_embed", pos_embed, persistent=False)  # fixed, never trained
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()  # stochastic depth decay rule
        self.blocks = nn.Sequential(*[
            Block(
                embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=False, proj_drop=drop_rate,
                drop_path=dpr[i], norm_layer=nn.LayerNorm,
            )
            for i in range(depth)
        ])
        self.norm = nn.LayerNorm(embed_dim)

        trunc_normal_(self.cls_token, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @staticmethod
    def _grid(height: int, width: int) -> tuple[int, int]:
        if height % T2T_STRIDE or width % T2T_STRIDE:
            raise ValueError(
                f"T2T-ViT needs image sides divisible by {T2T_STRIDE}, got {height}x{width}"
            )
        return height // T2T_STRIDE, width // T2T_STRIDE

    def token_grid(self, image_size: int) -> tuple[int, int]:
        """(rows, cols) = (image_size // 16,) * 2; ValueError if `image_size` is not a multiple of 16."""
        return self._grid(image_size, image_size)

    def _pos_embed(self, num_positions: int) -> Tensor:
        """The [1, num_positions, D] sinusoid table (CLS at position 0), cached for `img_size`."""
        if num_positions <= self.pos_embed.shape[1]:  # a 1-D table's rows do not depend on its length
            return self.pos_embed[:, :num_positions]
        table = sinusoid_table(num_positions, self.embed_dim).unsqueeze(0)
        return table.to(device=self.pos_embed.device, dtype=self.pos_embed.dtype)

    def tokens(self, images: Tensor) -> Tokens:
        """Final-normed CLS output [B, D], patch tokens [B, N, D] and their (H/16, W/16) grid."""
        grid = self._grid(*images.shape[-2:])
        x = self.tokens_to_token(images)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.pos_drop(x + self._pos_embed(x.shape[1]).to(x.dtype))
        x = self.norm(self.blocks(x))
        return Tokens(cls=x[:, 0], patches=x[:, 1:], grid=grid)

    def forward(self, images: Tensor) -> Tokens:
        return self.tokens(images)


def t2t_vit_14(**overrides: object) -> T2TViT:
    """T2T-ViT-14 (D 384, depth 14, 6 heads, MLP ratio 3, token dim 64); keyword overrides allowed."""
    config: dict = dict(embed_dim=384, depth=14, num_heads=6, mlp_ratio=3.0, token_dim=64)
    return T2TViT(**{**config, **overrides})
