"""COCO evaluation: hand-computed AP on constructed cases, and agreement with pycocotools itself.

COCO AP for one category and IoU threshold: detections sorted by score, precision made
non-increasing from the right, then read at the 101 recall thresholds 0, 0.01, ..., 1 (the first
detection whose cumulative recall reaches the threshold; 0 where recall never gets there), and
averaged. mAP averages over categories and the 10 IoU thresholds 0.50, 0.55, ..., 0.95.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval, Params

from relvit.detection.evaluate import STAT_NAMES, coco_evaluate, predictions_to_coco

# pycocotools 2.0.11 decode under numpy 2: a DeprecationWarning about __array__(copy=) per call
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

KEYS = {"mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large", "AR100"}


def gt_dict(boxes_per_image, categories=(1, 2), size=(200, 200), crowd=()):
    """COCO ground truth: boxes_per_image[i] = [(category_id, [x, y, w, h]), ...] for image i+1."""
    height, width = size
    images = [{"id": i + 1, "file_name": f"{i + 1}.png", "width": width, "height": height}
              for i in range(len(boxes_per_image))]
    annotations = []
    for i, boxes in enumerate(boxes_per_image):
        for category, box in boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1,
                                "category_id": category, "bbox": list(map(float, box)),
                                "area": float(box[2] * box[3]),
                                "iscrowd": int(len(annotations) + 1 in crowd)})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": c, "name": f"c{c}"} for c in categories]}


def det(image_id, category_id, box, score):
    return {"image_id": image_id, "category_id": category_id, "bbox": list(map(float, box)),
            "score": float(score)}


# medium-sized boxes (area 50·50 = 2500 in 32²..96²) on two images, two categories
GT_BOXES = [[(1, [10, 10, 50, 50]), (2, [100, 20, 50, 50])],
            [(1, [30, 100, 50, 50]), (1, [120, 120, 50, 50])]]


def test_perfect_detections_give_100():
    gt = gt_dict(GT_BOXES)
    preds = [det(i + 1, c, box, 0.9 - 0.1 * j)
             for i, boxes in enumerate(GT_BOXES) for j, (c, box) in enumerate(boxes)]
    m = coco_evaluate(gt, preds)
    assert set(m) == {"bbox"} and set(m["bbox"]) == KEYS
    for key in ("mAP", "mAP50", "mAP75", "mAP_medium", "AR100"):
        assert m["bbox"][key] == pytest.approx(100.0, abs=1e-9)
    # no ground truth is small or large: COCOeval's -1 becomes None
    assert m["bbox"]["mAP_small"] is None and m["bbox"]["mAP_large"] is None


def test_ar100_counts_more_than_ten_detections_per_image():
    """AR100 is recall at 100 detections per image: with 12 objects found on one image, AR@10
    would be 10/12."""
    boxes = [[(1, [15 * k, 15 * k, 10, 10]) for k in range(12)]]
    preds = [det(1, 1, box, 0.99 - 0.01 * k) for k, (_, box) in enumerate(boxes[0])]
    m = coco_evaluate(gt_dict(boxes, categories=(1,)), preds)
    assert m["bbox"]["AR100"] == pytest.approx(100.0)


def test_iou_exactly_0_6_passes_thresholds_up_to_0_6():
    # a 100×100 box shifted right by 25: IoU = 75·100 / (2·100² − 75·100) = 75/125 = 0.6.
    # pycocotools matches when IoU >= threshold (it skips a pair only if `iou < t`), and both
    # numbers are the same double here, so 0.50, 0.55 and 0.60 pass and 0.65 ... 0.95 fail:
    # mAP = 100 · 3/10. The two preconditions are asserted so that a change in either shows up.
    gt_box, dt_box = [10, 10, 100, 100], [35, 10, 100, 100]
    assert mask_utils.iou([dt_box], [gt_box], [0])[0, 0] == 0.6
    assert Params("bbox").iouThrs[2] == 0.6
    gt = gt_dict([[(1, gt_box)], [(2, gt_box)]])
    preds = [det(1, 1, dt_box, 0.8), det(2, 2, dt_box, 0.7)]
    m = coco_evaluate(gt, preds)["bbox"]
    assert m["mAP50"] == pytest.approx(100.0, abs=1e-9)
    assert m["mAP75"] == pytest.approx(0.0, abs=1e-9)
    assert m["mAP"] == pytest.approx(30.0, abs=1e-9)
    assert m["AR100"] == pytest.approx(30.0, abs=1e-9)  # recall 1 at 3 of 10 thresholds


def test_half_of_the_objects_missed():
    # 2 objects, one found (score 1): recall 0.5 at precision 1, nothing beyond.
    # Precision 1 at the 51 recall thresholds 0, 0.01, ..., 0.50, and 0 at the other 50:
    # AP = 51/101 at every IoU threshold.
    gt = gt_dict([[(1, [10, 10, 50, 50]), (1, [100, 100, 50, 50])]], categories=(1,))
    m = coco_evaluate(gt, [det(1, 1, [10, 10, 50, 50], 1.0)])["bbox"]
    for key in ("mAP", "mAP50", "mAP75", "mAP_medium"):
        assert m[key] == pytest.approx(100 * 51 / 101, abs=1e-9)
    assert m["AR100"] == pytest.approx(50.0, abs=1e-9)


def test_false_positive_ranked_above_a_true_positive():
    # one object, a false positive (0.9) above the true positive (0.8):
    # recall [0, 1], precision [0, 1/2] -> made non-increasing: [1/2, 1/2]; AP = 1/2.
    gt = gt_dict([[(1, [10, 10, 50, 50])]], categories=(1,))
    preds = [det(1, 1, [120, 120, 50, 50], 0.9), det(1, 1, [10, 10, 50, 50], 0.8)]
    assert coco_evaluate(gt, preds)["bbox"]["mAP"] == pytest.approx(50.0, abs=1e-9)

    # two objects; TP (0.9), FP (0.8), TP (0.7): recall [.5, .5, 1], precision [1, 1/2, 2/3]
    # -> non-increasing [1, 2/3, 2/3]. Thresholds 0..0.50 (51) read precision 1, thresholds
    # 0.51..1 (50) read 2/3: AP = (51 + 50·2/3) / 101 = 253/303.
    gt = gt_dict([[(1, [10, 10, 50, 50]), (1, [100, 100, 50, 50])]], categories=(1,))
    preds = [det(1, 1, [10, 10, 50, 50], 0.9), det(1, 1, [10, 120, 40, 40], 0.8),
             det(1, 1, [100, 100, 50, 50], 0.7)]
    m = coco_evaluate(gt, preds)["bbox"]
    for key in ("mAP", "mAP50", "mAP75"):
        assert m[key] == pytest.approx(100 * 253 / 303, abs=1e-9)


def rect_mask(height, width, rows, cols):
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[rows[0]:rows[1], cols[0]:cols[1]] = 1
    return mask


def rle(mask):
    encoded = mask_utils.encode(np.asfortranarray(mask))
    return {"size": [int(s) for s in encoded["size"]], "counts": encoded["counts"].decode()}


def test_segm_on_constructed_masks():
    # 60×60 image. Category 1: a 10×20 rectangle, predicted exactly. Category 2: a 10×20
    # rectangle, predicted shifted 3 columns: mask IoU = 170/230 ≈ 0.739 (thresholds 0.50..0.70
    # pass: 5 of 10 -> AP 1/2), while the predicted *boxes* are exact (bbox AP 1 for both).
    # segm: mAP = (1 + 1/2)/2 = 75, mAP50 = 100, mAP75 = (1 + 0)/2 = 50; bbox: 100.
    h = w = 60
    gt_a, gt_b = rect_mask(h, w, (5, 15), (5, 25)), rect_mask(h, w, (30, 40), (5, 25))
    gt = {"images": [{"id": 7, "file_name": "a.png", "width": w, "height": h}],
          "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
          "annotations": [
              {"id": 1, "image_id": 7, "category_id": 1, "bbox": [5.0, 5.0, 20.0, 10.0],
               "area": 200.0, "iscrowd": 0, "segmentation": rle(gt_a)},
              {"id": 2, "image_id": 7, "category_id": 2, "bbox": [5.0, 30.0, 20.0, 10.0],
               "area": 200.0, "iscrowd": 0, "segmentation": rle(gt_b)}]}
    pred_b = rect_mask(h, w, (30, 40), (8, 28))
    probs = torch.full((2, 1, h, w), 0.2)
    probs[0, 0][torch.from_numpy(gt_a).bool()] = 0.9
    probs[1, 0][torch.from_numpy(pred_b).bool()] = 0.7
    output = {"boxes": torch.tensor([[5.0, 5.0, 25.0, 15.0], [5.0, 30.0, 25.0, 40.0]]),
              "labels": torch.tensor([1, 2]), "scores": torch.tensor([0.9, 0.8]),
              "masks": probs}
    preds = predictions_to_coco([output], [7])
    assert mask_utils.iou([preds[1]["segmentation"]], [gt["annotations"][1]["segmentation"]],
                          [0])[0, 0] == pytest.approx(170 / 230)
    m = coco_evaluate(gt, preds, iou_types=("bbox", "segm"))
    assert m["bbox"]["mAP"] == pytest.approx(100.0, abs=1e-9)
    assert m["segm"]["mAP"] == pytest.approx(75.0, abs=1e-9)
    assert m["segm"]["mAP50"] == pytest.approx(100.0, abs=1e-9)
    assert m["segm"]["mAP75"] == pytest.approx(50.0, abs=1e-9)
    assert m["segm"]["mAP_small"] == pytest.approx(75.0, abs=1e-9)  # areas 200 < 32²
    assert m["segm"]["mAP_medium"] is None and m["segm"]["mAP_large"] is None


def test_segm_detection_areas_come_from_their_masks():
    # a false positive whose mask is small (10x10) and whose box is not (60x60): in segm's
    # "small" range it counts by its mask's area (AP 1/2), not ignored by its box's (AP 1)
    h = w = 200
    gt_mask = rect_mask(h, w, (10, 20), (10, 20))
    gt = {"images": [{"id": 1, "file_name": "a.png", "width": w, "height": h}],
          "categories": [{"id": 1, "name": "a"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
                           "bbox": [10.0, 10.0, 10.0, 10.0], "area": 100.0,
                           "segmentation": rle(gt_mask)}]}
    preds = [{**det(1, 1, [100, 100, 60, 60], 0.9),
              "segmentation": rle(rect_mask(h, w, (100, 110), (100, 110)))},
             {**det(1, 1, [10, 10, 10, 10], 0.5), "segmentation": rle(gt_mask)}]
    m = coco_evaluate(gt, preds, iou_types=("segm",))["segm"]
    assert m["mAP"] == pytest.approx(50.0) and m["mAP_small"] == pytest.approx(50.0)


def test_ground_truth_without_an_area_takes_its_box_area():
    # a 40x10 box: area 400, small (below 32²)
    gt = gt_dict([[(1, [10, 10, 40, 10])]], categories=(1,))
    del gt["annotations"][0]["area"]
    m = coco_evaluate(gt, [det(1, 1, [10, 10, 40, 10], 0.9)])["bbox"]
    assert m["mAP_small"] == pytest.approx(100.0) and m["mAP_medium"] is None


def test_empty_predictions_give_zero():
    gt = gt_dict(GT_BOXES)
    for iou_types in (("bbox",), ("bbox", "segm")):
        if "segm" in iou_types:  # add masks so that segm is possible
            for ann in gt["annotations"]:
                x, y, bw, bh = map(int, ann["bbox"])
                ann["segmentation"] = rle(rect_mask(200, 200, (y, y + bh), (x, x + bw)))
        m = coco_evaluate(gt, [], iou_types=iou_types)
        for metrics in m.values():
            assert metrics["mAP"] == 0.0 and metrics["mAP50"] == 0.0 and metrics["AR100"] == 0.0
            assert metrics["mAP_medium"] == 0.0 and metrics["mAP_small"] is None


def test_inputs_checked_and_not_mutated():
    gt = gt_dict(GT_BOXES)
    preds = [det(1, 1, [10, 10, 50, 50], 0.5)]
    gt_before, preds_before = copy.deepcopy(gt), copy.deepcopy(preds)
    coco_evaluate(gt, preds, iou_types=("bbox",))
    assert gt == gt_before and preds == preds_before
    with pytest.raises(ValueError, match="image_id 99"):
        coco_evaluate(gt, [det(99, 1, [0, 0, 5, 5], 0.5)])
    with pytest.raises(ValueError, match="category_id 3"):
        coco_evaluate(gt, [det(1, 3, [0, 0, 5, 5], 0.5)])
    with pytest.raises(ValueError, match="segmentation"):
        coco_evaluate(gt, preds, iou_types=("segm",))
    with pytest.raises(ValueError, match="iou_types"):
        coco_evaluate(gt, preds, iou_types=("keypoints",))


def test_annotation_id_zero_still_matches():
    # COCOeval records a match by the ground truth's id, so id 0 would count as a miss
    gt = gt_dict([[(1, [10, 10, 50, 50])]], categories=(1,))
    gt["annotations"][0]["id"] = 0
    m = coco_evaluate(gt, [det(1, 1, [10, 10, 50, 50], 0.9)])
    assert m["bbox"]["mAP"] == pytest.approx(100.0, abs=1e-9)


def test_crowd_regions_are_ignored():
    # a detection on a crowd region is neither a true nor a false positive
    gt = gt_dict([[(1, [10, 10, 50, 50]), (1, [100, 100, 80, 80])]], categories=(1,),
                 crowd={2})
    preds = [det(1, 1, [110, 110, 40, 40], 0.99), det(1, 1, [10, 10, 50, 50], 0.5)]
    assert coco_evaluate(gt, preds)["bbox"]["mAP"] == pytest.approx(100.0, abs=1e-9)


def test_predictions_to_coco():
    probs = torch.zeros(2, 1, 4, 6)
    probs[0, 0, 1:3, 2:5] = 0.8
    probs[0, 0, 0, 0] = 0.5  # exactly 0.5 is background (threshold is > 0.5)
    probs[1, 0, 3, 5] = 0.51
    output = {"boxes": torch.tensor([[2.0, 1.0, 5.0, 3.0], [5.0, 3.0, 6.0, 4.0]]),
              "labels": torch.tensor([3, 1]), "scores": torch.tensor([0.75, 0.25]),
              "masks": probs}
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
             "scores": torch.zeros(0), "masks": torch.zeros(0, 1, 4, 6)}
    results = predictions_to_coco([output, empty], [11, 12])
    assert len(results) == 2
    first, second = results
    assert first["image_id"] == 11 and first["category_id"] == 3
    assert first["bbox"] == [2.0, 1.0, 3.0, 2.0] and first["score"] == 0.75
    assert isinstance(first["segmentation"]["counts"], str)
    json.dumps(results)  # plain json types only
    decoded = mask_utils.decode(first["segmentation"])
    assert decoded.shape == (4, 6) and decoded.sum() == 6 and decoded[1:3, 2:5].all()
    assert mask_utils.decode(second["segmentation"]).sum() == 1
    assert list(mask_utils.toBbox(first["segmentation"])) == first["bbox"]

    boxes_only = predictions_to_coco([{k: v for k, v in output.items() if k != "masks"}], [5],
                                     scale=[(2.0, 0.5)])
    assert boxes_only[0]["bbox"] == [4.0, 0.5, 6.0, 1.0]
    assert "segmentation" not in boxes_only[0]
    scaled = predictions_to_coco([output], [5], scale=[(2.0, 2.0)])
    assert scaled[0]["segmentation"]["size"] == [8, 12]
    scaled = predictions_to_coco([output], [5], scale=[(2.0, 0.5)])  # (x, y): columns, rows
    assert scaled[0]["segmentation"]["size"] == [2, 12]
    with pytest.raises(ValueError):
        predictions_to_coco([output], [1, 2])


def random_case(seed, with_masks):
    rng = np.random.default_rng(seed)
    h, w = 120, 160
    categories = [1, 2, 5]
    gt = {"images": [{"id": 100 + i, "file_name": f"{i}.png", "width": w, "height": h}
                     for i in range(6)],
          "categories": [{"id": c, "name": f"c{c}"} for c in categories], "annotations": []}
    preds = []

    def random_box():
        bw, bh = rng.integers(4, 90), rng.integers(4, 70)
        return [int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh)), int(bw), int(bh)]

    def entry(box):
        x, y, bw, bh = box
        out = {"bbox": [float(v) for v in box]}
        if with_masks:
            out["segmentation"] = rle(rect_mask(h, w, (y, y + bh), (x, x + bw)))
        return out

    for image in gt["images"]:
        for _ in range(rng.integers(0, 6)):
            box = random_box()
            ann = {"id": len(gt["annotations"]) + 1, "image_id": image["id"],
                   "category_id": int(rng.choice(categories)), "area": float(box[2] * box[3]),
                   "iscrowd": int(rng.random() < 0.1), **entry(box)}
            gt["annotations"].append(ann)
            if rng.random() < 0.8:  # a jittered detection, sometimes with the wrong category
                jitter = [int(v) for v in rng.integers(-6, 7, size=4)]
                jbox = [max(0, box[0] + jitter[0]), max(0, box[1] + jitter[1]),
                        max(2, box[2] + jitter[2]), max(2, box[3] + jitter[3])]
                jbox[2], jbox[3] = min(jbox[2], w - jbox[0]), min(jbox[3], h - jbox[1])
                category = ann["category_id"] if rng.random() < 0.85 else int(rng.choice(categories))
                preds.append({"image_id": image["id"], "category_id": category,
                              "score": float(rng.random()), **entry(jbox)})
        for _ in range(rng.integers(0, 4)):  # false positives
            preds.append({"image_id": image["id"], "category_id": int(rng.choice(categories)),
                          "score": float(rng.random()), **entry(random_box())})
    return gt, preds


def pycocotools_directly(tmp_path, gt, preds, iou_type):
    """The standard path: COCO(json file), loadRes(json file), COCOeval, summarize."""
    gt_file, res_file = tmp_path / "gt.json", tmp_path / f"res_{iou_type}.json"
    gt_file.write_text(json.dumps(gt))
    # for segm the results carry no box, so that detection areas come from the masks
    results = [{k: v for k, v in p.items() if not (iou_type == "segm" and k == "bbox")}
               for p in preds]
    res_file.write_text(json.dumps(results))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_file))
        coco_dt = coco_gt.loadRes(str(res_file))
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


@pytest.mark.parametrize("seed", [0, 1])
def test_agrees_with_pycocotools_run_directly(tmp_path, seed):
    gt, preds = random_case(seed, with_masks=True)
    assert len(preds) > 10 and len(gt["annotations"]) > 10
    ours = coco_evaluate(gt, preds, iou_types=("bbox", "segm"))
    for iou_type in ("bbox", "segm"):
        stats = pycocotools_directly(tmp_path, gt, preds, iou_type)
        assert 0 < stats[0] < 1
        for name, index in STAT_NAMES.items():
            expected = None if stats[index] < 0 else 100 * stats[index]
            if expected is None:
                assert ours[iou_type][name] is None
            else:
                assert ours[iou_type][name] == pytest.approx(expected, abs=1e-9), (iou_type, name)
