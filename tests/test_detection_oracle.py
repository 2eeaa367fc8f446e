"""The detection loop against an oracle: a model that answers every evaluation image with that
image's own ground truth must score mAP 100 through `DetectionRun.evaluation`, and the model
must receive the images as float32 in [0, 1].

The oracle knows an image by its pixels, looked up in the PNG files and the annotation json of
the scenes (not through the loader or `ground_truth`), so an evaluation that pairs predictions
with the wrong image ids scores below 100 however it iterates its batches.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torch import nn

from fixtures.runs import TINY_DETECTOR
from relvit.detection.scenes import write_digit_scenes
from relvit.detection.train import DetectionRun


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    write_digit_scenes(root, n_train=4, n_val=6, canvas=64, seed=0)
    return root


@pytest.fixture
def make_run(tiny_config, scenes, tmp_path):
    """`make_run(masks)` -> a DetectionRun of a tiny detector on the scenes (batches of 4)."""

    def make(masks: bool = True) -> DetectionRun:
        cfg = tiny_config("detect", data={"name": "digit_scenes", "folder": str(scenes),
                                          "workers": 0},
                          model={"patch_size": 8}, detection={**TINY_DETECTOR, "masks": masks},
                          optim={"epochs": 1, "batch_size": 4, "lr": 1e-3,
                                 "schedule": "step", "clip_grad": 0.0})
        return DetectionRun(cfg, tmp_path / f"run-masks{masks}")

    return make


def _pixel_key(image_chw_uint8: torch.Tensor) -> bytes:
    return image_chw_uint8.contiguous().numpy().tobytes()


def val_truth(scenes) -> dict[bytes, dict]:
    """{pixels of a val image: its id and objects}, read from the files the scenes wrote."""
    data = json.loads((scenes / "val.json").read_text())
    truth = {}
    for image in data["images"]:
        with Image.open(scenes / "val" / image["file_name"]) as picture:
            pixels = torch.from_numpy(np.asarray(picture.convert("RGB")).copy()).permute(2, 0, 1)
        anns = [a for a in data["annotations"] if a["image_id"] == image["id"]]
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)],
                             dtype=torch.float32).reshape(-1, 4)
        height, width = image["height"], image["width"]
        masks = torch.zeros(len(anns), 1, height, width)
        for i, a in enumerate(anns):
            masks[i, 0] = torch.from_numpy(mask_utils.decode(a["segmentation"]).astype(np.float32))
        truth[_pixel_key(pixels)] = {
            "id": image["id"], "boxes": boxes, "masks": masks,
            "labels": torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)}
    assert len(truth) == len(data["images"]), "two val scenes have the same pixels"
    return truth


class Oracle(nn.Module):
    """In eval mode: per input image (float in [0, 1]), that image's ground truth, score 1.

    `shift` moves every box right and down by `shift` times its own width and height."""

    def __init__(self, truth: dict[bytes, dict], masks: bool, shift: float = 0.0):
        super().__init__()
        self.truth, self.masks, self.shift = truth, masks, shift
        self.seen: list[int] = []  # image ids of the images received, in order

    def forward(self, images, targets=None):
        assert not self.training, "the oracle only predicts"
        outputs = []
        for image in images:
            low, high = float(image.min()), float(image.max())
            assert image.dtype == torch.float32 and 0 <= low and high <= 1, \
                f"model input {image.dtype} in [{low}, {high}], not float32 in [0, 1]"
            key = _pixel_key((image * 255).round().to(torch.uint8).cpu())
            assert key in self.truth, "the model received an image that is no val scene"
            gt = self.truth[key]
            self.seen.append(gt["id"])
            boxes = gt["boxes"].clone()
            size = boxes[:, 2:] - boxes[:, :2]
            boxes += self.shift * torch.cat([size, size], dim=1)
            out = {"boxes": boxes, "labels": gt["labels"].clone(),
                   "scores": torch.ones(len(boxes))}
            if self.masks:
                out["masks"] = gt["masks"].clone()
            outputs.append(out)
        return outputs


@pytest.mark.parametrize("masks", [True, False], ids=["mask-rcnn", "faster-rcnn"])
def test_ground_truth_predictions_score_100(make_run, scenes, masks):
    """Guards the pairing of each prediction with its image id in `evaluation`: ground-truth
    answers for every image give box (and mask) mAP, mAP50, mAP75 of exactly 100."""
    run = make_run(masks)
    truth = val_truth(scenes)
    assert run.masks is masks and len(run._images_dataset(False)) == len(truth) == 6
    assert all(len(gt["labels"]) for gt in truth.values()), "a val scene without objects"
    run.model = Oracle(truth, masks)
    scores = run.evaluation(epoch=0)
    assert sorted(run.model.seen) == sorted(gt["id"] for gt in truth.values())
    kinds = ("bbox", "segm") if masks else ("bbox",)
    assert set(scores) == {f"val_{k}_{n}" for k in kinds for n in ("mAP", "mAP50", "mAP75")}
    for name, value in scores.items():
        assert value == pytest.approx(100.0, abs=1e-9), (name, value)


def test_shifted_boxes_score_far_below_100(make_run, scenes):
    """Negative control: the same oracle with every box moved by half its size (IoU 1/7 with
    its ground truth) scores box mAP 0, while its unmoved masks still score 100."""
    run = make_run(True)
    run.model = Oracle(val_truth(scenes), True, shift=0.5)
    scores = run.evaluation(epoch=0)
    assert scores["val_bbox_mAP"] < 1 and scores["val_bbox_mAP50"] < 1
    assert scores["val_segm_mAP"] == pytest.approx(100.0, abs=1e-9)


def test_to_device_gives_float32_in_0_1(make_run):
    """Guards the scaling of `_to_device`: uint8 loader images become float32 image / 255."""
    run = make_run(True)
    images, targets = next(run.eval_batches())
    assert all(image.dtype == torch.uint8 for image in images)
    moved, moved_targets = run._to_device(images, targets)
    assert len(moved) == len(images) and len(moved_targets) == len(targets)
    for raw, image in zip(images, moved):
        assert image.dtype == torch.float32 and image.device.type == run.device.type
        assert 0 <= float(image.min()) and float(image.max()) <= 1
        assert torch.equal(image, raw.float() / 255)
    assert max(image.max() for image in moved) > 0.9  # the digits are bright: not all near 0
    assert torch.equal(images[0], next(run.eval_batches())[0][0])  # loader's left intact


def test_training_batches_reach_the_model_in_0_1(make_run):
    """Guards `train_loss`: the training model receives float32 images in [0, 1] (image / 255)
    and the targets of those images."""
    run = make_run(True)
    received = []

    class Recorder(nn.Module):
        def forward(self, images, targets=None):
            received.append((images, targets))
            return {"loss_fake": torch.zeros((), requires_grad=True)}

    run.train_model = Recorder()
    images, targets = next(iter(run.train_batches(0)))
    loss, stats, count = run.train_loss((images, targets), torch.Generator())
    assert count == len(images) and set(stats) == {"loss_fake", "loss"}
    (seen, seen_targets), = received
    for raw, image, target, seen_target in zip(images, seen, targets, seen_targets):
        assert image.dtype == torch.float32
        assert 0 <= float(image.min()) and float(image.max()) <= 1
        assert torch.equal(image, raw.float() / 255)
        assert seen_target["image_id"] == target["image_id"]
        assert torch.equal(seen_target["boxes"], target["boxes"])
