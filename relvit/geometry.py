"""Image, token and SSL-grid geometry of a run, derived from the config and the registries."""

from __future__ import annotations

from dataclasses import dataclass

from relvit.config import RunConfig
from relvit.data.registry import get_dataset
from relvit.models.specs import get_backbone_spec, pooled_side, token_stride

# a patch's relation to another (method spec §1.2): Left/Centre/Right x Up/Centre/Down of it
RELATION_NAMES = ("LU", "CU", "RU", "LC", "CC", "RC", "LD", "CD", "RD")
NUM_RELATIONS = len(RELATION_NAMES)  # the relation head's classes


@dataclass(frozen=True)
class Geometry:
    """`cell` is the side in pixels of one SSL grid cell (the unit of jitter and permutation)."""

    image_size: int  # side of the dataset images
    patch_size: int | None  # ViT/Swin patch (None for T2T)
    token_stride: int  # pixels per backbone token
    ssl_pool: int  # T2T: 2 (14x14 tokens -> 7x7 SSL grid)
    ssl_grid: int  # side of the SSL grid on the ordinary image
    cell: int
    megapatch_side: int  # 0: off

    @property
    def num_positions(self) -> int:
        side = self.megapatch_side or self.ssl_grid
        return side * side


def run_geometry(cfg: RunConfig) -> Geometry:
    """Derive the geometry; raises ValueError naming the sizes when they do not fit together."""
    dataset = get_dataset(cfg.data.name)
    spec = get_backbone_spec(cfg.model.backbone)
    image = cfg.data.image_size or dataset.image_size
    patch = cfg.model.patch_size or (dataset.patch_size if spec.family == "vit" else spec.patch_size)
    stride = token_stride(spec, patch, cfg.model.depth)
    pool = spec.ssl_pool  # as the backbone module's Backbone.ssl_pool
    if spec.family == "t2t":
        patch = None
    if image % stride:
        raise ValueError(
            f"{spec.label} has a token stride of {stride} px, which does not divide the image "
            f"size {image} (data.image_size)"
        )
    tokens = image // stride
    ssl_grid = pooled_side(tokens, pool)
    if image % ssl_grid:
        raise ValueError(f"the {ssl_grid}x{ssl_grid} SSL grid does not divide the image size {image}")
    if (image // ssl_grid) % stride:  # T2T: an odd token side pools to cells across tokens
        raise ValueError(
            f"{spec.label}'s {tokens}x{tokens} tokens of {stride} px pool to a {ssl_grid}x"
            f"{ssl_grid} SSL grid whose {image // ssl_grid}-px cells cut across its tokens: "
            f"choose an image size (data.image_size) that is a multiple of {pool * stride}"
        )
    side = cfg.ssl.megapatch_side if cfg.mode == "pretrain" else 0
    if side and side > ssl_grid:
        raise ValueError(f"ssl.megapatch_side: {side} is larger than the base grid side "
                         f"{ssl_grid}")
    return Geometry(image, patch, stride, pool, ssl_grid, image // ssl_grid, side)


def backbone_label(cfg: RunConfig, geo: Geometry) -> str:
    """How tables name the backbone, e.g. "ViT-S/4", or "ViT/4 (D=72, depth 4)" when resized:
    by every size key off its preset (width, depth, heads, MLP ratio; a Swin's patch and
    window), so that a resized model never shares the preset's table cell."""
    spec, model = get_backbone_spec(cfg.model.backbone), cfg.model
    patch = f"/{geo.patch_size}" if spec.family == "vit" else ""
    heads = "{} head" if model.num_heads == 1 else "{} heads"
    resized = [(model.embed_dim, spec.embed_dim, "D={}"), (model.depth, spec.depth, "depth {}"),
               (model.num_heads, spec.num_heads, heads),
               (model.mlp_ratio, spec.mlp_ratio, "MLP ratio {:g}")]
    if spec.family == "swin":  # the only family that reads them
        resized += [(model.patch_size, spec.patch_size, "patch {}"),
                    (model.window_size, spec.window_size, "window {}")]
    changes = [fmt.format(v) for v, preset, fmt in resized if v is not None and v != preset]
    if not changes:
        return spec.label + patch
    family = spec.label.split("-")[0] if spec.family == "vit" else spec.label
    return f"{family}{patch} ({', '.join(changes)})"


def run_identity(cfg: RunConfig) -> dict[str, object]:
    """What names a run's table cell and column, as its metrics.json records it (a finished or
    a failed run's, and a planned config's cell: relvit.report.gather.KEYS)."""
    return {"mode": cfg.mode, "label": cfg.label, "seed": cfg.seed, "dataset": cfg.data.name,
            "dataset_title": get_dataset(cfg.data.name).title, "backbone": cfg.model.backbone,
            "backbone_label": backbone_label(cfg, run_geometry(cfg)), "epochs": cfg.optim.epochs}
