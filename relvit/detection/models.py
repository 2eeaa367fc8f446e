"""Our backbones as torchvision Faster/Mask R-CNN backbones, with optional joint SSL losses.

A `PyramidBackbone` turns a `relvit.models.contract.Backbone` into torchvision's `BackboneWithFPN`
contract: `forward(images) -> OrderedDict` of FPN maps "0".."3" (strides s0 < s1 < s2 < s3, each
twice the previous) plus "pool" (2 * s3, `LastLevelMaxPool`), and an `out_channels` attribute.
The decisions (method spec §6.2 and Q23-Q26) are:

* Swin-T: the four stage outputs *before* patch merging (at 224 px 56²x96, 28²x192, 14²x384,
  7²x768; strides 4, 8, 16, 32). timm applies a stage's patch merging at the start of the *next*
  stage, so the output of `swin.layers[i]` is exactly the pre-merging map of stage i. This fixes
  Q24 (the original reshaped post-merging outputs as if they were pre-merging ones). Each level
  gets its own new LayerNorm, as the original (and the official Swin detection code) did; timm's
  Swin has no per-stage norms, and its final `swin.norm` is used only for `last_tokens` (the SSL
  tokens, so that they equal `Backbone.tokens`).
* ViT and T2T-ViT (plain, single scale): a ViTDet-style simple feature pyramid (Li et al.,
  "Exploring plain vision transformer backbones for object detection", 2022), which shows that the
  last token map suffices. From the final (LayerNorm-ed) patch-token map at stride s (the patch
  size for ViT, 16 for T2T): x4 = ConvTranspose2d(D, D/2, 2, 2) -> LayerNorm2d -> GELU ->
  ConvTranspose2d(D/2, D/4, 2, 2); x2 = ConvTranspose2d(D, D/2, 2, 2); x1 = identity;
  x1/2 = MaxPool2d(2, ceil_mode=True); strides s/4, s/2, s, 2s. The CLS token is discarded. This
  replaces the original's three same-stride maps, where every RoI went to one level (Q25).
  A ViT must have positional embeddings (detection is a downstream task, spec §3):
  `build_pyramid_backbone` refuses one built with `pos_embed=False`; a checkpoint of a pretrain
  run without them still loads (`vit.pos_embed` stays at its fresh init).
* Then torchvision's `FeaturePyramidNetwork(in_channels, fpn_channels, LastLevelMaxPool())`
  (top-down path, 1x1 laterals, 3x3 outputs), default width 256 (the original's 512 is a flag).

`build_detector` decisions:

* Anchors (Q26): one size per level, 8 x its stride by default (the usual FPN 32..512 at strides
  4..64), aspect ratios (0.5, 1, 2): 3 anchors per location instead of the original's 12.
* RoI level assignment (Q25): torchvision's FPN rule k = floor(k0 + log2(sqrt(wh) / c)) with the
  ImageNet-scale default c = 224, k0 = 4 sends almost every box of a 224-px image to the finest
  level (boxes of side 16 and 64 both go to stride 4). We set c = the anchor size of level "3"
  and k0 = log2(stride of level "3"), so a RoI is pooled from the level whose anchors match its
  size (with the default anchors a box of side in [8s, 16s) goes to the level of stride s; at 224 px
  boxes of side 16, 64 and 224 go to strides 4, 8 and 16). Box RoIs: MultiScaleRoIAlign(["0".."3"],
  7, 2); mask RoIs: 14; their scales are set from the strides, not inferred from the first batch
  (`_roi_pool`).
* Resizing (Q23): as the original (`fixed_size=(224, 224)`), every image is stretched to
  image_size x image_size, its aspect ratio lost; torchvision maps the predictions back to the
  image's own size. With `keep_aspect`, torchvision's aspect-preserving resize instead (min_size =
  max_size = image_size: the *longer* side becomes image_size), and every batch is padded to the
  same image_size x image_size canvas (`size_divisible` = image_size). Either way every batch is
  image_size a side, a multiple of level "3"'s stride (ViT 2 x patch size, T2T 32, Swin its last
  stage's stride): every level "0".."3" tiles it exactly, which torchvision's `AnchorGenerator`
  assumes (it takes a level's stride as padded side // grid side), and an image's features do not
  depend on the batch it is in. Padded only to the batch's largest image, a batch of landscape
  images (all of KITTI's, most of SVHN's) had fewer token rows than a mixed one: timm resamples
  the ViT's 14x14 position embedding to the batch's grid, so the same pixel got another position
  code in each batch shape; T2T's 1-D sinusoid index and Swin's padded windows changed with it.
  Stretching keeps more of a wide image's detail: a KITTI image (1242 x 375) keeps 60 % of its
  rows stretched and 18 % with `keep_aspect`: a pedestrian 25 px high becomes 15 px high, or 4.5.
* Normalisation: the dataset's registry statistics (ImageNet's mean/std for every detection
  dataset, as its pretraining normalises) via `image_mean` / `image_std` (the original
  misspelled them, harmlessly, Q23); `box_detections_per_img=100`; RPN proposals per image in
  testing half of training's (`HeadSizes.rpn_test_proposals`: torchvision's 1000 of 2000 by
  default); every other RPN / RoI setting is torchvision's default.
* Precision: anchors, box offsets and scores in float32 under bf16 autocast too
  (`relvit.detection.precision`).

`JointSSLDetector` (the "upstream ✗" rows of Tables 2-3): the detector plus RelViT's relation and
absolute-position heads on the backbone tokens of the (resized, normalised, padded) batch the
detector saw, with the identity-order targets of the original downstream-only mode (spec §3), for
the token grid of each batch (T2T's tokens avg-pooled 2x as in `RelViT.ssl_tokens`).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

from timm.layers import LayerNorm2d
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.poolers import initLevelMapper
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from relvit.config import DetectionConfig
from relvit.data.registry import IMAGENET_STATS
from relvit.detection.precision import Float32Anchors, Float32BoxPredictor, Float32RPNHead
from relvit.models.backbones import SwinBackbone, ViTBackbone
from relvit.models.contract import Backbone, Tokens
from relvit.models.losses import relation_loss, token_classification_loss
from relvit.models.relvit import RelViT, SSLTasks
from relvit.models.specs import T2T_STRIDE, pooled_side
from relvit.models.t2t import T2TViT
from relvit.ssl.targets import position_targets, relation_targets

DEFAULTS = DetectionConfig()  # a run config's defaults: those of the sizes below

LEVELS = ("0", "1", "2", "3")
ASPECT_RATIOS = (0.5, 1.0, 2.0)
ANCHOR_STRIDE_MULTIPLE = 8  # default anchor size of a level = 8 x its stride


class PyramidBackbone(nn.Module):
    """Wraps one of our Backbones; forward(images [B,3,H,W]) -> OrderedDict[str, Tensor] of FPN
    outputs ("0".."3", "pool"), out_channels attribute (torchvision's BackboneWithFPN contract).
    Also keeps the last Tokens it computed in `self.last_tokens` once `keep_tokens()` was
    called (by `JointSSLDetector`, for the joint SSL losses).

    Subclasses build the four input levels (`levels`), and give their channels and strides.
    `last_tokens` is overwritten by every forward; `JointSSLDetector` clears it once read.
    """

    def __init__(self, backbone: Backbone, in_channels: list[int], strides: list[int],
                 fpn_channels: int = DEFAULTS.fpn_channels):
        super().__init__()
        self.backbone = backbone
        self.in_channels = list(in_channels)
        self.strides = list(strides) + [2 * strides[-1]]  # levels "0".."3" and "pool"
        self.fpn = FeaturePyramidNetwork(self.in_channels, fpn_channels,
                                         extra_blocks=LastLevelMaxPool())
        self.out_channels = fpn_channels
        self.last_tokens: Tokens | None = None
        self.tokens_kept = False

    def keep_tokens(self) -> None:
        """Keep each forward's Tokens in `last_tokens`, for the joint SSL losses."""
        self.tokens_kept = True

    def levels(self, images: Tensor) -> tuple[list[Tensor], Tokens]:  # pragma: no cover
        """The four NCHW input maps (finest first) and the backbone's tokens."""
        raise NotImplementedError

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        maps, tokens = self.levels(images)
        self.last_tokens = tokens if self.tokens_kept else None
        return self.fpn(OrderedDict(zip(LEVELS, maps)))


class SwinPyramid(PyramidBackbone):
    """Swin's four pre-merging stage outputs, each with a new LayerNorm, as NCHW maps."""

    def __init__(self, backbone: SwinBackbone, fpn_channels: int = DEFAULTS.fpn_channels):
        info = backbone.swin.feature_info
        if len(info) != len(LEVELS):
            raise ValueError(f"a Swin pyramid needs 4 stages, this backbone has {len(info)}")
        channels = [level["num_chs"] for level in info]
        strides = [level["reduction"] for level in info]
        super().__init__(backbone, channels, strides, fpn_channels)
        self.norms = nn.ModuleList(nn.LayerNorm(c) for c in channels)
        # the final norm serves the SSL tokens alone: without them it would get no gradient,
        # which DistributedDataParallel refuses at a run's second step
        backbone.swin.norm.requires_grad_(False)

    def keep_tokens(self) -> None:
        super().keep_tokens()
        self.backbone.swin.norm.requires_grad_(True)

    def levels(self, images: Tensor) -> tuple[list[Tensor], Tokens | None]:
        swin = self.backbone.swin
        x = swin.patch_embed(images)  # NHWC
        maps = []
        for stage, norm in zip(swin.layers, self.norms):
            x = stage(x)  # this stage's blocks; its merging is the next stage's first step
            maps.append(norm(x).permute(0, 3, 1, 2).contiguous())
        if not self.tokens_kept:
            return maps, None
        last = swin.norm(x)  # exactly Backbone.tokens: the final stage after the final norm
        b, h, w, c = last.shape
        return maps, Tokens(None, last.reshape(b, h * w, c), (h, w))


class SimpleFeaturePyramid(PyramidBackbone):
    """ViTDet's simple pyramid from the last token map (stride s): strides s/4, s/2, s, 2s."""

    def __init__(self, backbone: Backbone, stride: int, fpn_channels: int = DEFAULTS.fpn_channels):
        dim = backbone.embed_dim
        if dim % 4:
            raise ValueError(f"the simple feature pyramid needs a width divisible by 4, got {dim}")
        if stride % 4:
            raise ValueError(f"the simple feature pyramid needs a stride divisible by 4, "
                             f"got {stride}")
        channels = [dim // 4, dim // 2, dim, dim]
        strides = [stride // 4, stride // 2, stride, stride * 2]
        super().__init__(backbone, channels, strides, fpn_channels)
        self.up4 = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 2, 2, stride=2), LayerNorm2d(dim // 2), nn.GELU(),
            nn.ConvTranspose2d(dim // 2, dim // 4, 2, stride=2),
        )
        self.up2 = nn.ConvTranspose2d(dim, dim // 2, 2, stride=2)
        self.down2 = nn.MaxPool2d(2, ceil_mode=True)

    def levels(self, images: Tensor) -> tuple[list[Tensor], Tokens]:
        tokens = self.backbone.tokens(images)  # the CLS output is not used by the pyramid
        b, _, d = tokens.patches.shape
        x = tokens.patches.transpose(1, 2).reshape(b, d, *tokens.grid)
        return [self.up4(x), self.up2(x), x, self.down2(x)], tokens


def build_pyramid_backbone(backbone: Backbone, fpn_channels: int = DEFAULTS.fpn_channels
                           ) -> PyramidBackbone:
    """The feature pyramid + FPN for a ViT, Swin or T2T-ViT backbone (see the module docstring)."""
    if isinstance(backbone, SwinBackbone):
        return SwinPyramid(backbone, fpn_channels)
    if isinstance(backbone, ViTBackbone):
        if backbone.vit.pos_embed is None:
            raise ValueError("a detection ViT needs positional embeddings: build it with "
                             "pos_embed=True (a pretrain checkpoint without them still loads)")
        return SimpleFeaturePyramid(backbone, backbone.patch_size, fpn_channels)
    if isinstance(backbone, T2TViT):
        return SimpleFeaturePyramid(backbone, T2T_STRIDE, fpn_channels)
    raise TypeError(f"no feature pyramid for backbone {type(backbone).__name__}")


def _roi_pool(output_size: int, strides: list[int], canonical_scale: int,
              canonical_level: int) -> MultiScaleRoIAlign:
    """RoIAlign over levels "0".."3", their scales set from the pyramid's strides.

    torchvision infers the scales once, at the first batch, from the feature maps' height over
    the batch's largest unpadded image height, which is wrong for good whenever that batch is
    padded: a first batch of KITTI images, 67 rows on the canvas, gives level "0" scale 1."""
    pool = MultiScaleRoIAlign(list(LEVELS), output_size, 2, canonical_scale=canonical_scale,
                              canonical_level=canonical_level)
    pool.scales = [1.0 / s for s in strides[:len(LEVELS)]]
    pool.map_levels = initLevelMapper(round(math.log2(strides[0])),
                                      round(math.log2(strides[len(LEVELS) - 1])),
                                      canonical_scale=canonical_scale,
                                      canonical_level=canonical_level)
    return pool


@dataclass(frozen=True)
class HeadSizes:
    """R-CNN head sizes and sampling; the defaults (the run config's) are torchvision's and the
    original's."""

    box_representation: int = DEFAULTS.box_representation  # TwoMLPHead width
    mask_head_width: int = DEFAULTS.mask_head_width  # the four mask-head convolutions
    # RoIs sampled per image for the box (and mask) losses; RPN proposals kept per image in
    # training
    roi_batch_size: int = DEFAULTS.roi_batch_size
    rpn_train_proposals: int = DEFAULTS.rpn_train_proposals

    @property
    def rpn_test_proposals(self) -> int:
        """RPN proposals kept per image in testing, before and after its NMS: half as many as in
        training, torchvision's ratio (1000 of 2000, the original's), so that a tier that has
        fewer in training has fewer in testing too (the smoke tier's 200 had kept
        torchvision's 1000 in testing: evaluation 3.5 times slower, mAP no better)."""
        return max(1, self.rpn_train_proposals // 2)


def build_detector(backbone: Backbone, num_classes: int, image_size: int, masks: bool,
                   fpn_channels: int = DEFAULTS.fpn_channels,
                   anchor_sizes: tuple[int, ...] | None = None, heads: HeadSizes = HeadSizes(),
                   keep_aspect: bool = False,
                   stats: tuple[tuple[float, ...], tuple[float, ...]] = IMAGENET_STATS,
                   ) -> GeneralizedRCNN:
    """Mask R-CNN (`masks`) or Faster R-CNN on `backbone`'s pyramid; `num_classes` excludes the
    background. Images are stretched to `image_size` a side, or with `keep_aspect` resized so
    their longer side is `image_size` and padded to that square (module docstring)."""
    pyramid = build_pyramid_backbone(backbone, fpn_channels)
    coarsest = pyramid.strides[len(LEVELS) - 1]  # level "3"'s stride (module docstring)
    if image_size % coarsest:
        raise ValueError(f"image_size {image_size} must be a multiple of {coarsest}, the stride "
                         f"of the backbone's coarsest pyramid level")
    if anchor_sizes is None:
        anchor_sizes = tuple(ANCHOR_STRIDE_MULTIPLE * s for s in pyramid.strides)
    if len(anchor_sizes) != len(pyramid.strides):
        raise ValueError(f"need {len(pyramid.strides)} anchor sizes (one per level), "
                         f"got {len(anchor_sizes)}")
    anchors = Float32Anchors(tuple((int(a),) for a in anchor_sizes),
                             (ASPECT_RATIOS,) * len(anchor_sizes))
    # RoIs the size of level "3"'s anchors are pooled from level "3" (module docstring, Q25).
    scale, level = int(anchor_sizes[len(LEVELS) - 1]), round(math.log2(pyramid.strides[-2]))
    mean, std = stats  # the dataset's, as its pretraining normalises (relvit.data.registry)
    classes = num_classes + 1  # + background
    common = {
        "min_size": image_size, "max_size": image_size,
        "image_mean": list(mean), "image_std": list(std),
        "size_divisible": image_size,  # one image_size x image_size canvas (module docstring)
        "fixed_size": None if keep_aspect else (image_size, image_size),
        "box_detections_per_img": 100, "rpn_anchor_generator": anchors,
        "box_roi_pool": _roi_pool(7, pyramid.strides, scale, level),
        "box_head": TwoMLPHead(fpn_channels * 7 * 7, heads.box_representation),
        "box_predictor": Float32BoxPredictor(heads.box_representation, classes),
        "box_batch_size_per_image": heads.roi_batch_size,
        "rpn_pre_nms_top_n_train": heads.rpn_train_proposals,
        "rpn_post_nms_top_n_train": heads.rpn_train_proposals,
        "rpn_pre_nms_top_n_test": heads.rpn_test_proposals,
        "rpn_post_nms_top_n_test": heads.rpn_test_proposals,
    }
    if masks:
        width = heads.mask_head_width
        common |= {"mask_roi_pool": _roi_pool(14, pyramid.strides, scale, level),
                   "mask_head": MaskRCNNHeads(fpn_channels, (width,) * 4, 1),
                   "mask_predictor": MaskRCNNPredictor(width, width, classes)}
    # made after the heads, as torchvision makes its own: a seed gives the same initial weights
    rpn_head = Float32RPNHead(fpn_channels, len(ASPECT_RATIOS))
    return (MaskRCNN if masks else FasterRCNN)(pyramid, rpn_head=rpn_head, **common)


class JointSSLDetector(nn.Module):
    """A detector plus RelViT's SSL heads on the backbone tokens (the 'upstream ✗' rows of Tables
    2-3: relations + absolute positions trained jointly with the detector, identity targets as in
    the original downstream-only mode). forward(images, targets) in training returns the detector's
    loss dict plus 'loss_rel' and 'loss_pos'; in eval returns the detector's predictions.

    The position head has one class per SSL token of an image_size x image_size input, the size
    of every batch (`build_detector`); targets are built for the grid of the tokens, and a grid
    larger than the head's is refused. With `keep_aspect` the padding's tokens are included.
    All losses are summed unweighted by the caller, as the original sums its terms (spec §1.8).
    """

    def __init__(self, detector: GeneralizedRCNN, image_size: int, include_diagonal: bool = True):
        super().__init__()
        self.detector = detector
        backbone = backbone_of(detector)
        rows, cols = (pooled_side(side, backbone.ssl_pool)
                      for side in backbone.token_grid(image_size))
        self.num_positions = rows * cols
        self.include_diagonal = include_diagonal
        self.ssl = RelViT(backbone, None, SSLTasks(relations=True, positions=True),
                          self.num_positions)
        detector.backbone.keep_tokens()
        # The detector owns the backbone: unregister it from the RelViT (no duplicate state-dict
        # keys) but keep it as a plain attribute, which `RelViT.ssl_tokens` reads.
        del self.ssl._modules["backbone"]
        self.ssl.__dict__["backbone"] = backbone

    def ssl_losses(self, tokens: Tokens) -> dict[str, Tensor]:
        """Relation and absolute-position losses of the identity order on the tokens' SSL grid."""
        z, (h, w) = self.ssl.ssl_tokens(tokens)
        if h * w > self.num_positions:
            raise ValueError(f"SSL grid {h}x{w} has more tokens than the position head's "
                             f"{self.num_positions} classes")
        device = z.device
        out = self.ssl.ssl_outputs(z)
        rel = relation_loss(out["relations"].scores(), relation_targets(h, w).to(device),
                            self.include_diagonal)
        pos = token_classification_loss(out["positions"], position_targets(h * w).to(device))
        return {"loss_rel": rel, "loss_pos": pos}

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
                ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Training: the detector's losses and the SSL losses of the same forward pass, by
        name; evaluation: the detector's detections, one dict per image."""
        out = self.detector(images, targets)
        pyramid = self.detector.backbone
        tokens, pyramid.last_tokens = pyramid.last_tokens, None  # do not hold the graph
        if not self.training:
            return out
        return {**out, **self.ssl_losses(tokens)}


def backbone_of(detector: GeneralizedRCNN | JointSSLDetector) -> Backbone:
    """The inner Backbone, to load a pretrain checkpoint with
    relvit.train.checkpoint.load_backbone."""
    if isinstance(detector, JointSSLDetector):
        detector = detector.detector
    pyramid = detector.backbone
    if not isinstance(pyramid, PyramidBackbone):
        raise TypeError(f"not a detector built by build_detector: backbone is {type(pyramid)}")
    return pyramid.backbone
