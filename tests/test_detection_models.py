"""Backbone pyramids, the R-CNNs on them, joint SSL losses, pretrain checkpoints (CPU, tiny)."""

import inspect

import pytest
import torch
from timm.layers import LayerNorm2d
from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.ops import MultiScaleRoIAlign

from relvit.detection.models import (
    HeadSizes,
    JointSSLDetector,
    PyramidBackbone,
    backbone_of,
    build_detector,
    build_pyramid_backbone,
)
from relvit.models.backbones import build_backbone
from relvit.models.losses import relation_loss
from relvit.models.relvit import RelViT, SSLTasks
from relvit.ssl.targets import relation_targets
from relvit.train.checkpoint import CheckpointError, load_backbone

SIZE = 64
FPN = 16
CLASSES = 3
LEVELS = ["0", "1", "2", "3", "pool"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_backbone(family: str, size: int = SIZE, **overrides):
    """Tiny ViT (patch 8), Swin (patch 2, 4 stages, window 2) and T2T at `size`; the paper's
    strides (ViT patch 16, Swin patch 4, window 7) with `paper=True` at 224 px."""
    paper = overrides.pop("paper", False)
    if family == "vit":
        kw = {"embed_dim": 36, "depth": 1, "num_heads": 3, "patch_size": 16 if paper else 8}
        return build_backbone("vit_small", size, **{**kw, **overrides})
    if family == "swin":
        kw = {"embed_dim": 12, "depth": 4, "num_heads": 1, "patch_size": 4 if paper else 2,
                  "window_size": 7 if paper else 2}
        return build_backbone("swin_tiny", size, **{**kw, **overrides})
    return build_backbone("t2t_vit_14", size, embed_dim=36, depth=1, num_heads=3, **overrides)


STRIDES = {"vit": [2, 4, 8, 16, 32], "swin": [2, 4, 8, 16, 32], "t2t": [4, 8, 16, 32, 64]}
CHANNELS = {"vit": [9, 18, 36, 36], "swin": [12, 24, 48, 96], "t2t": [9, 18, 36, 36]}


@pytest.mark.parametrize("family", ["vit", "swin", "t2t"])
def test_pyramid_levels_shapes_and_strides(family):
    pyramid = build_pyramid_backbone(tiny_backbone(family), FPN)
    assert isinstance(pyramid, PyramidBackbone) and pyramid.out_channels == FPN
    assert pyramid.strides == STRIDES[family] and pyramid.in_channels == CHANNELS[family]
    out = pyramid(torch.rand(2, 3, SIZE, SIZE))
    assert list(out) == LEVELS
    for name, stride in zip(LEVELS, STRIDES[family]):
        assert out[name].shape == (2, FPN, SIZE // stride, SIZE // stride), name
    assert pyramid.last_tokens is None  # kept for the joint SSL losses only
    pyramid.keep_tokens()
    pyramid(torch.rand(2, 3, SIZE, SIZE))
    tokens = pyramid.last_tokens  # the backbone's own tokens, for the SSL heads
    assert tokens is not None
    expected = pyramid.backbone.tokens(torch.rand(2, 3, SIZE, SIZE))
    assert tokens.grid == expected.grid and tokens.patches.shape == expected.patches.shape


def test_swin_levels_are_the_pre_merging_stage_outputs():
    backbone = tiny_backbone("swin")
    pyramid = build_pyramid_backbone(backbone, FPN)
    images = torch.rand(1, 3, SIZE, SIZE)
    x = backbone.swin.patch_embed(images)
    stages = []
    for stage in backbone.swin.layers:
        x = stage(x)
        stages.append(x)
    assert [s.shape[1:] for s in stages] == [(32, 32, 12), (16, 16, 24), (8, 8, 48), (4, 4, 96)]
    maps, tokens = pyramid.levels(images)
    for stage, norm, level in zip(stages, pyramid.norms, maps):
        torch.testing.assert_close(level, norm(stage).permute(0, 3, 1, 2))
    assert tokens is None  # the final norm runs for the joint SSL losses only
    pyramid.keep_tokens()
    _, tokens = pyramid.levels(images)
    torch.testing.assert_close(tokens.patches, backbone.tokens(images).patches)


def _batch(masks: bool, seed: int = 0):
    """Two images of different aspect ratios (the detector resizes them), 2 objects each."""
    gen = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, 64, 48, generator=gen), torch.rand(3, 40, 64, generator=gen)]
    targets = []
    for image in images:
        target = {"boxes": torch.tensor([[4.0, 6.0, 30.0, 34.0], [20.0, 10.0, 40.0, 38.0]]),
                  "labels": torch.tensor([1, 3])}
        if masks:
            m = torch.zeros(2, *image.shape[1:], dtype=torch.uint8)
            m[0, 6:34, 4:30] = 1
            m[1, 10:38, 20:40] = 1
            target["masks"] = m
        targets.append(target)
    return images, targets


@pytest.mark.parametrize("masks", [False, True], ids=["faster", "mask"])
@pytest.mark.parametrize("family", ["vit", "swin", "t2t"])
def test_training_step_and_eval(family, masks):
    torch.manual_seed(0)
    detector = build_detector(tiny_backbone(family), CLASSES, SIZE, masks, fpn_channels=FPN)
    assert isinstance(detector, MaskRCNN if masks else FasterRCNN)
    assert detector.roi_heads.box_predictor.cls_score.out_features == CLASSES + 1
    images, targets = _batch(masks)
    optimizer = torch.optim.SGD(detector.parameters(), lr=0.01)
    detector.train()
    losses = detector(images, targets)
    expected = {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert set(losses) == expected | ({"loss_mask"} if masks else set())
    assert all(torch.isfinite(v) for v in losses.values())
    before = backbone_of(detector).state_dict()
    before = {k: v.clone() for k, v in before.items()}
    sum(losses.values()).backward()
    optimizer.step()
    after = backbone_of(detector).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)

    detector.eval()
    with torch.no_grad():
        predictions = detector(images)
    assert len(predictions) == 2
    for image, pred in zip(images, predictions):
        keys = {"boxes", "labels", "scores"} | ({"masks"} if masks else set())
        assert set(pred) == keys
        n = len(pred["scores"])
        assert pred["boxes"].shape == (n, 4) and pred["labels"].shape == (n,) and n <= 100
        if masks:
            assert pred["masks"].shape == (n, 1, *image.shape[1:])  # back at the input size


@pytest.mark.parametrize("joint", [False, True], ids=["plain", "ssl_joint"])
@pytest.mark.parametrize("family", ["vit", "swin", "t2t"])
def test_every_trainable_parameter_gets_a_gradient(family, joint):
    """DistributedDataParallel refuses a step in which a trainable parameter got no gradient:
    Swin's final norm, which serves the SSL tokens alone, had stopped every multi-GPU Swin
    detection run without joint SSL at its second step."""
    torch.manual_seed(0)
    detector = build_detector(tiny_backbone(family), CLASSES, SIZE, masks=True, fpn_channels=FPN)
    model = JointSSLDetector(detector, SIZE) if joint else detector
    model.train()
    sum(model(*_batch(masks=True)).values()).backward()
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    assert frozen == ([] if joint or family != "swin" else
                      ["backbone.backbone.swin.norm.weight", "backbone.backbone.swin.norm.bias"])


@pytest.mark.parametrize("keep_aspect", [False, True])
def test_detector_resize_and_normalisation(keep_aspect):
    detector = build_detector(tiny_backbone("vit"), CLASSES, SIZE, masks=False, fpn_channels=FPN,
                              keep_aspect=keep_aspect)
    transform = detector.transform
    assert transform.image_mean == [0.485, 0.456, 0.406]
    assert transform.image_std == [0.229, 0.224, 0.225]
    assert detector.roi_heads.detections_per_img == 100
    boxes = torch.tensor([[10.0, 20.0, 40.0, 80.0]])
    batch, targets = transform([torch.rand(3, 100, 50), torch.rand(3, 30, 120)],
                               [{"boxes": boxes, "labels": torch.tensor([1])}] * 2)
    if keep_aspect:  # longer side = SIZE
        assert batch.image_sizes == [(64, 32), (16, 64)]
        torch.testing.assert_close(targets[0]["boxes"], boxes * 0.64)
    else:  # stretched, as the original's fixed_size (Q23)
        assert batch.image_sizes == [(SIZE, SIZE)] * 2
        torch.testing.assert_close(targets[0]["boxes"], boxes * torch.tensor([1.28, 0.64] * 2))
    assert batch.tensors.shape[-2:] == (SIZE, SIZE)  # one canvas
    # predictions go back to each image's own size
    detections = [{"boxes": torch.tensor([[0.0, 0.0, SIZE, SIZE]]), "labels": torch.tensor([1]),
                   "scores": torch.tensor([0.9])} for _ in range(2)]
    back = transform.eval().postprocess(detections, batch.image_sizes, [(100, 50), (30, 120)])
    sides = [(box[3] - box[1], box[2] - box[0]) for box in (d["boxes"][0] for d in back)]
    expected = [(100.0, 50.0), (30.0, 120.0)] if not keep_aspect else [(100.0, 100.0),
                                                                          (120.0, 120.0)]
    assert [tuple(map(float, side)) for side in sides] == expected
    # one anchor size per level, 3 aspect ratios
    assert detector.rpn.anchor_generator.sizes == ((16,), (32,), (64,), (128,), (256,))
    assert detector.rpn.head.cls_logits.out_channels == 3


@pytest.mark.parametrize("family", ["vit", "t2t"])
def test_simple_pyramid_branches_are_vitdet(family):
    """ViTDet's simple feature pyramid (module docstring): x4 = deconv, LayerNorm2d, GELU,
    deconv; x2 = deconv; x1 = identity; x1/2 = max-pool. Without the LayerNorm2d every shape
    still fit, and no test saw it gone."""
    pyramid = build_pyramid_backbone(tiny_backbone(family), FPN)
    dim = pyramid.backbone.embed_dim
    assert [type(m) for m in pyramid.up4] == [nn.ConvTranspose2d, LayerNorm2d, nn.GELU,
                                              nn.ConvTranspose2d]
    first, norm, _, last = pyramid.up4
    assert (first.in_channels, first.out_channels, last.out_channels) == (dim, dim // 2, dim // 4)
    assert first.stride == last.stride == first.kernel_size == last.kernel_size == (2, 2)
    assert norm.normalized_shape == (dim // 2,)
    assert type(pyramid.up2) is nn.ConvTranspose2d and pyramid.up2.stride == (2, 2)
    assert (pyramid.up2.in_channels, pyramid.up2.out_channels) == (dim, dim // 2)
    assert type(pyramid.down2) is nn.MaxPool2d and pyramid.down2.ceil_mode
    assert pyramid.down2.kernel_size == pyramid.down2.stride == 2
    images = torch.rand(1, 3, SIZE, SIZE)
    with torch.no_grad():
        maps, tokens = pyramid.levels(images)
        x = tokens.patches.transpose(1, 2).reshape(1, dim, *tokens.grid)
        torch.testing.assert_close(maps[0], pyramid.up4(x))
        torch.testing.assert_close(maps[2], x)  # x1: the token map itself


@pytest.mark.parametrize("family", ["vit", "swin", "t2t"])
def test_anchors_have_three_aspect_ratios_on_every_level(family):
    """One anchor size per level x ratios (0.5, 1, 2) (Q26, method spec §6): with (0.5, 1, 1)
    the RPN head still had 3 anchors a location, so the anchor count alone did not tell."""
    detector = build_detector(tiny_backbone(family), CLASSES, SIZE, masks=False,
                              fpn_channels=FPN)
    generator = detector.rpn.anchor_generator
    assert generator.aspect_ratios == ((0.5, 1.0, 2.0),) * 5
    assert generator.num_anchors_per_location() == [3] * 5
    for size, cell in zip(generator.sizes, generator.cell_anchors):
        # torchvision rounds the corners to whole pixels: a 16-px anchor of ratio 0.5 is 22 x 12
        h, w = cell[:, 3] - cell[:, 1], cell[:, 2] - cell[:, 0]
        torch.testing.assert_close(h / w, torch.tensor([0.5, 1.0, 2.0]), rtol=0.1, atol=0)
        torch.testing.assert_close((h * w).sqrt(), torch.full((3,), float(size[0])),
                                   rtol=0.1, atol=0)


@pytest.mark.parametrize("family", ["vit", "swin", "t2t"])
def test_anchors_sit_at_each_level_stride_on_landscape_batches(family):
    """torchvision's AnchorGenerator takes a level's stride as padded side // grid side: each
    level "0".."3" must tile the padded batch exactly. A batch of landscape images (VOC's 4:3)
    padded to the token stride only gave ViT's ceil-mode level "3" a rounded-up grid: 176 rows
    of 16-px tokens, 6 rows of "32-px" cells, anchors 29 px apart."""
    size = 224
    detector = build_detector(tiny_backbone(family, size, paper=True), CLASSES, size,
                              masks=False, fpn_channels=FPN, keep_aspect=True)
    detector.eval()
    with torch.no_grad():
        batch, _ = detector.transform([torch.rand(3, 375, 500), torch.rand(3, 300, 500)])
        features = detector.backbone(batch.tensors)
        anchors = detector.rpn.anchor_generator(batch, list(features.values()))[0]
    assert batch.image_sizes == [(168, 224), (134, 224)]
    assert batch.tensors.shape[-2:] == (size, size)  # the canvas
    offset = 0
    for name, stride in zip(LEVELS[:4], detector.backbone.strides):
        rows, cols = features[name].shape[-2:]
        assert (rows * stride, cols * stride) == tuple(batch.tensors.shape[-2:]), name
        count = rows * cols * 3  # 3 aspect ratios per location
        centres = anchors[offset:offset + count].view(rows, cols, 3, 4)
        centres = (centres[..., :2] + centres[..., 2:]) / 2
        assert torch.allclose(centres[1:, :, :, 1] - centres[:-1, :, :, 1],
                              torch.tensor(float(stride))), name
        offset += count


@pytest.mark.parametrize("keep_aspect", [False, True])
@pytest.mark.parametrize("family", ["vit", "swin", "t2t"])
def test_an_image_gets_the_same_features_in_any_batch(family, keep_aspect):
    """Every batch is padded to one canvas. Padded to its largest image only, a batch of KITTI
    images had 6 ViT token rows and a mixed one 14, and timm resampled the position embedding to
    each: the same image's features depended on its batch mates, and on the evaluation batch."""
    size = 224
    torch.manual_seed(0)
    detector = build_detector(tiny_backbone(family, size, paper=True), CLASSES, size,
                              masks=False, fpn_channels=FPN, keep_aspect=keep_aspect).eval()
    kitti, portrait = torch.rand(3, 375, 1242), torch.rand(3, 500, 375)
    with torch.no_grad():
        alone, _ = detector.transform([kitti])
        mixed, _ = detector.transform([kitti, portrait])
        features_alone = detector.backbone(alone.tensors)
        features_mixed = detector.backbone(mixed.tensors)
    assert alone.tensors.shape[-2:] == mixed.tensors.shape[-2:] == (size, size)
    for name in features_alone:
        torch.testing.assert_close(features_alone[name][0], features_mixed[name][0],
                                   msg=f"level {name}")


@pytest.mark.parametrize("family", ["vit", "swin", "t2t"])
@pytest.mark.parametrize("keep_aspect", [False, True])
def test_roi_scales_do_not_depend_on_the_first_batch(family, keep_aspect):
    """torchvision infers RoIAlign's scales once, from the first batch's largest unpadded image:
    a first KITTI image (67 rows, padded to 96) gave every level twice its scale for good. It is
    padded with `keep_aspect` (stretched to the square without)."""
    size = 224
    detector = build_detector(tiny_backbone(family, size, paper=True), CLASSES, size,
                              masks=True, fpn_channels=FPN, keep_aspect=keep_aspect).eval()
    with torch.no_grad():
        detector([torch.rand(3, 375, 1242)])
    for pool in (detector.roi_heads.box_roi_pool, detector.roi_heads.mask_roi_pool):
        assert [1 / s for s in pool.scales] == [4, 8, 16, 32]
        assert (pool.map_levels.k_min, pool.map_levels.k_max) == (2, 5)


@pytest.mark.parametrize("masks", [False, True], ids=["faster", "mask"])
def test_boxes_and_scores_stay_float32_under_bf16_autocast(masks):
    """Detection trains and predicts under bf16 autocast on CUDA (here the CPU's). torchvision
    makes anchors in the features' dtype and decodes boxes in the offsets' dtype: bf16 boxes sit
    on a 1-2 px grid at 224 px, 4-8 px once scaled back to a KITTI image."""
    torch.manual_seed(0)
    detector = build_detector(tiny_backbone("vit"), CLASSES, SIZE, masks=masks, fpn_channels=FPN)
    images, targets = _batch(masks)
    proposals = []
    detector.rpn.register_forward_hook(lambda module, args, out: proposals.append(out[0]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        detector.train()
        losses = detector(images, targets)
        detector.eval()
        with torch.no_grad():
            features = detector.backbone(torch.rand(2, 3, SIZE, SIZE))
            predictions = detector(images)
    assert features["0"].dtype == torch.bfloat16  # the backbone and FPN do run in bf16
    assert all(torch.isfinite(v) for v in losses.values())
    assert [p.dtype for batch in proposals for p in batch] == [torch.float32] * 4
    for prediction in predictions:
        assert prediction["boxes"].dtype == prediction["scores"].dtype == torch.float32
    # without autocast the float32 layers are torchvision's own: same weights, same keys
    assert "rpn.head.bbox_pred.weight" in detector.state_dict()
    assert "roi_heads.box_predictor.bbox_pred.weight" in detector.state_dict()


def test_testing_keeps_half_the_training_proposals_as_torchvision_does():
    """torchvision's defaults are the original's: 2000 RPN proposals per image in training,
    1000 in testing. A smaller count in training (the smoke and CI tiers') halves testing's
    with it."""
    defaults = inspect.signature(MaskRCNN).parameters
    paper = build_detector(tiny_backbone("vit"), CLASSES, SIZE, masks=True, fpn_channels=FPN)
    assert HeadSizes().rpn_train_proposals == defaults["rpn_pre_nms_top_n_train"].default
    for key in ("pre_nms_top_n", "post_nms_top_n"):
        assert getattr(paper.rpn, f"_{key}") == {
            "training": defaults[f"rpn_{key}_train"].default,
            "testing": defaults[f"rpn_{key}_test"].default}
    smoke = build_detector(tiny_backbone("vit"), CLASSES, SIZE, masks=False, fpn_channels=FPN,
                           heads=HeadSizes(rpn_train_proposals=200))
    smoke.eval()
    assert (smoke.rpn.pre_nms_top_n(), smoke.rpn.post_nms_top_n()) == (100, 100)
    smoke.train()
    assert (smoke.rpn.pre_nms_top_n(), smoke.rpn.post_nms_top_n()) == (200, 200)


def test_build_refusals():
    with pytest.raises(ValueError, match="positional embeddings"):
        build_detector(tiny_backbone("vit", pos_embed=False), CLASSES, SIZE, masks=False)
    with pytest.raises(ValueError, match="multiple"):
        build_detector(tiny_backbone("t2t"), CLASSES, 72, masks=False)
    with pytest.raises(ValueError, match="one per level"):
        build_detector(tiny_backbone("vit"), CLASSES, SIZE, masks=False, anchor_sizes=(8, 16))


@pytest.mark.parametrize("family", ["vit", "swin", "t2t"])
def test_roi_sizes_reach_different_levels(family):
    size = 224
    detector = build_detector(tiny_backbone(family, size, paper=True), CLASSES, size, masks=True,
                              fpn_channels=FPN)
    assert detector.backbone.strides == [4, 8, 16, 32, 64]
    with torch.no_grad():
        features = detector.backbone(torch.rand(1, 3, size, size))
    boxes = torch.tensor([[100.0, 100.0, 116.0, 116.0], [80.0, 80.0, 144.0, 144.0],
                          [0.0, 0.0, 224.0, 224.0]])  # sides 16, 64, 224
    for pool in (detector.roi_heads.box_roi_pool, detector.roi_heads.mask_roi_pool):
        pool(features, [boxes], [(size, size)])
        assert [1 / s for s in pool.scales] == [4, 8, 16, 32]
        assert pool.map_levels([boxes]).tolist() == [0, 1, 2]  # strides 4, 8, 16
    # torchvision's default canonical 224 / level 4 would pool the 16- and 64-px boxes alike
    default = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    default(features, [boxes], [(size, size)])
    assert default.map_levels([boxes]).tolist() == [0, 0, 2]


@pytest.mark.parametrize("family", ["vit", "swin", "t2t"])
def test_joint_ssl_detector(family):
    torch.manual_seed(0)
    detector = build_detector(tiny_backbone(family), CLASSES, SIZE, masks=False, fpn_channels=FPN)
    joint = JointSSLDetector(detector, SIZE)
    backbone = backbone_of(joint)
    assert backbone is backbone_of(detector)
    # ViT: 8x8 tokens; Swin: 4x4 final stage; T2T: 4x4 tokens avg-pooled to 2x2
    assert joint.num_positions == {"vit": 64, "swin": 16, "t2t": 4}[family]
    assert not any(k.startswith("ssl.backbone.") for k in joint.state_dict())
    images, targets = _batch(masks=False)
    joint.train()
    losses = joint(images, targets)
    assert {"loss_rel", "loss_pos", "loss_classifier", "loss_objectness"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    (losses["loss_rel"] + losses["loss_pos"]).backward()  # the SSL terms alone
    for head in (joint.ssl.relation_head, joint.ssl.position_head):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    grads = [p.grad for p in backbone.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    assert detector.backbone.last_tokens is None  # released after use

    joint.eval()
    with torch.no_grad():
        predictions = joint(images)
    assert set(predictions[0]) == {"boxes", "labels", "scores"}


def test_joint_ssl_targets_cover_the_whole_canvas():
    torch.manual_seed(0)
    detector = build_detector(tiny_backbone("vit"), CLASSES, SIZE, masks=False, fpn_channels=FPN)
    joint = JointSSLDetector(detector, SIZE).train()
    images = [torch.rand(3, 48, 64), torch.rand(3, 30, 64)]  # landscape, on the 64 x 64 canvas
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 30.0, 20.0]]), "labels": torch.tensor([2])}] * 2
    seen = {}
    original = joint.ssl_losses

    def spy(tokens):
        seen["grid"] = tokens.grid
        return original(tokens)

    joint.ssl_losses = spy
    losses = joint(images, targets)
    assert seen["grid"] == (8, 8) and torch.isfinite(losses["loss_pos"])


def test_load_pretrain_checkpoint(tmp_path):
    geometry = {"embed_dim": 36, "depth": 1, "num_heads": 3, "patch_size": 8}
    pretrain = RelViT(build_backbone("vit_small", SIZE, pos_embed=False, **geometry), None,
                      SSLTasks(relations=True, positions=True), 64)
    path = tmp_path / "best.pt"
    torch.save({"model": pretrain.state_dict(), "epoch": 3, "backbone_name": "vit_small",
                "mode": "pretrain", "config": {}}, path)

    detector = build_detector(build_backbone("vit_small", SIZE, **geometry), CLASSES, SIZE,
                              masks=True, fpn_channels=FPN)
    fresh = load_backbone(backbone_of(detector), path, "vit_small")
    assert fresh == ["vit.pos_embed"]  # the pretrain ViT had none; detection keeps its own
    loaded = detector.backbone.backbone.vit.blocks[0].attn.qkv.weight
    torch.testing.assert_close(loaded, pretrain.backbone.vit.blocks[0].attn.qkv.weight)

    wider = build_backbone("vit_small", SIZE, **{**geometry, "embed_dim": 48})
    with pytest.raises(CheckpointError, match="does not fit"):
        load_backbone(backbone_of(build_detector(wider, CLASSES, SIZE, masks=False)), path,
                      "vit_small")
    with pytest.raises(CheckpointError, match="holds backbone"):
        load_backbone(backbone_of(detector), path, "t2t_vit_14")


@pytest.mark.parametrize("mode, said", [("pretrain", None), ("supervised", "'supervised'"),
                                        (None, "none recorded")])
def test_an_init_checkpoint_not_of_a_pretrain_run_is_said(tmp_path, caplog, mode, said):
    """A supervised run's best.pt as --init had been taken without a word: the run's numbers
    then stand in a RelViT cell."""
    geometry = {"embed_dim": 36, "depth": 1, "num_heads": 3, "patch_size": 8}
    backbone = build_backbone("vit_small", SIZE, **geometry)
    path = tmp_path / "best.pt"
    config = {"mode": mode} if mode else {}
    torch.save({"model": {f"backbone.{k}": v for k, v in backbone.state_dict().items()},
                "backbone_name": "vit_small", "config": config}, path)
    with caplog.at_level("WARNING", logger="relvit"):
        load_backbone(build_backbone("vit_small", SIZE, **geometry), path, "vit_small")
    if said is None:
        assert "not a pretrain run's" not in caplog.text
    else:
        assert f"not a pretrain run's best.pt (its run's mode: {said})" in caplog.text


@pytest.mark.parametrize("family", ["vit", "swin", "t2t"])
def test_joint_ssl_relation_loss_follows_include_diagonal(family):
    """`ssl.relation_diagonal: false` reaches JointSSLDetector as include_diagonal=False; a
    relation loss that ignored it (always the diagonal) trained a joint run on the N trivial
    pairs it was told to leave out."""
    torch.manual_seed(0)
    detector = build_detector(tiny_backbone(family), CLASSES, SIZE, masks=False, fpn_channels=FPN)
    images = torch.rand(2, 3, SIZE, SIZE)
    losses = {}
    for diagonal in (False, True):
        joint = JointSSLDetector(detector, SIZE, include_diagonal=diagonal).eval()
        with torch.no_grad():
            tokens = backbone_of(joint).tokens(images)
            losses[diagonal] = joint.ssl_losses(tokens)["loss_rel"]
            z, (h, w) = joint.ssl.ssl_tokens(tokens)
            scores = joint.ssl.ssl_outputs(z)["relations"].scores()
            expected = relation_loss(scores, relation_targets(h, w), diagonal)
            other = relation_loss(scores, relation_targets(h, w), not diagonal)
        torch.testing.assert_close(losses[diagonal], expected)
        assert not torch.allclose(losses[diagonal], other), diagonal
