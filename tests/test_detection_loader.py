"""DetectionImages / collate / ground_truth on a tiny COCO dataset written to tmp_path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torch.utils.data import DataLoader
from torchvision import tv_tensors

from relvit.data.formats import DatasetLayoutError
from relvit.detection.coco import CocoDataset
from relvit.detection.evaluate import coco_evaluate, predictions_to_coco
from relvit.detection.loader import DetectionImages, collate, ground_truth

# pycocotools 2.0.11 decode under numpy 2: a DeprecationWarning about __array__(copy=) per call
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SIZES = {1: (40, 30), 2: (32, 48), 3: (50, 50)}  # image id -> (width, height)


def rect_rle(width, height, box):
    """RLE of the integer box [x, y, w, h] filled, on a height × width image."""
    x, y, w, h = box
    mask = np.zeros((height, width), dtype=np.uint8, order="F")
    mask[y:y + h, x:x + w] = 1
    rle = mask_utils.encode(mask)
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def annotation(ann_id, image_id, category, box, crowd=0, masks=True):
    width, height = SIZES[image_id]
    ann = {"id": ann_id, "image_id": image_id, "category_id": category,
           "bbox": [float(v) for v in box], "area": float(box[2] * box[3]), "iscrowd": crowd}
    if masks:
        ann["segmentation"] = rect_rle(width, height, [int(v) for v in box])
    return ann


def write_images(root, seed=0):
    rng = np.random.default_rng(seed)
    pixels = {}
    for image_id, (width, height) in SIZES.items():
        pixels[image_id] = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels[image_id]).save(root / f"img{image_id}.png")
    return pixels


@pytest.fixture
def tiny(tmp_path):
    """3 PNGs; image 1: two objects + a crowd region, image 2: one object + a degenerate box,
    image 3: only a crowd region. Integer boxes whose masks fill them exactly."""
    root = tmp_path / "images"
    root.mkdir()
    pixels = write_images(root)
    images = [{"id": i, "file_name": f"img{i}.png", "width": w, "height": h}
              for i, (w, h) in SIZES.items()]
    annotations = [
        annotation(11, 1, 1, [2, 3, 10, 8]),
        annotation(12, 1, 2, [20, 5, 15, 20]),
        annotation(13, 1, 1, [0, 0, 40, 30], crowd=1),
        annotation(21, 2, 2, [4, 6, 20, 30]),
        {**annotation(22, 2, 1, [10, 10, 1, 1]), "bbox": [10.0, 10.0, 0.0, 5.0]},  # degenerate
        annotation(31, 3, 1, [5, 5, 30, 30], crowd=1),
    ]
    categories = [{"id": 1, "name": "one"}, {"id": 2, "name": "two"}]
    return CocoDataset(images=images, annotations=annotations, categories=categories,
                       image_root=root), pixels


def mask_box(mask):
    """xyxy of the pixels set in an [H, W] mask (pixel i covers [i, i + 1))."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]


def check_consistent(image, target):
    """Types, shapes and masks that match their boxes."""
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8
    height, width = image.shape[-2:]
    boxes = target["boxes"]
    assert isinstance(boxes, tv_tensors.BoundingBoxes) and boxes.dtype == torch.float32
    assert boxes.format == tv_tensors.BoundingBoxFormat.XYXY
    assert tuple(boxes.canvas_size) == (height, width)
    n = boxes.shape[0]
    assert target["labels"].dtype == torch.int64 and target["labels"].shape == (n,)
    assert target["iscrowd"].dtype == torch.int64 and target["iscrowd"].shape == (n,)
    assert not target["iscrowd"].any()
    masks = target["masks"]
    assert isinstance(masks, tv_tensors.Mask) and masks.dtype == torch.uint8
    assert masks.shape == (n, height, width)
    for box, mask in zip(boxes.tolist(), masks.numpy()):
        assert mask_box(mask) == box


def test_eval_items(tiny):
    dataset, pixels = tiny
    data = DetectionImages(dataset, train=False)
    assert len(data) == 3  # evaluation keeps every image
    image, target = data[0]
    assert image.shape == (3, 30, 40)
    assert torch.equal(image, torch.from_numpy(pixels[1]).permute(2, 0, 1))
    assert target["image_id"] == 1 and isinstance(target["image_id"], int)
    # crowd (13) excluded; xywh -> xyxy exactly
    assert target["boxes"].tolist() == [[2.0, 3.0, 12.0, 11.0], [20.0, 5.0, 35.0, 25.0]]
    assert target["labels"].tolist() == [1, 2]
    check_consistent(image, target)

    image, target = data[1]  # degenerate box dropped
    assert image.shape == (3, 48, 32)
    assert target["boxes"].tolist() == [[4.0, 6.0, 24.0, 36.0]] and target["labels"].tolist() == [2]
    check_consistent(image, target)

    image, target = data[2]  # only a crowd region: an empty target
    assert target["boxes"].shape == (0, 4) and target["masks"].shape == (0, 50, 50)
    assert target["labels"].shape == (0,)


def test_train_skips_images_without_objects_and_is_eval_without_augmentation(tiny):
    dataset, _ = tiny
    plain = DetectionImages(dataset, train=False)
    train = DetectionImages(dataset, train=True, flip=False)
    assert len(train) == 2 and [im["id"] for im in train.images] == [1, 2]
    for i in range(2):
        (a, ta), (b, tb) = plain[i], train[i]
        assert torch.equal(a, b)
        for key in ("boxes", "labels", "masks", "iscrowd"):
            assert torch.equal(ta[key], tb[key])


def test_flip_moves_boxes_and_masks_together(tiny):
    dataset, _ = tiny
    plain = DetectionImages(dataset, train=False)
    train = DetectionImages(dataset, train=True, flip=True)
    torch.manual_seed(0)
    seen = set()
    for _ in range(20):
        for i in range(len(train)):
            image, target = train[i]
            ref_image, ref = plain[i]
            check_consistent(image, target)
            width = image.shape[-1]
            if torch.equal(image, ref_image):
                seen.add("kept")
                assert torch.equal(target["boxes"], ref["boxes"])
                assert torch.equal(target["masks"], ref["masks"])
            else:
                seen.add("flipped")
                assert torch.equal(image, ref_image.flip(-1))
                x1, y1, x2, y2 = ref["boxes"].unbind(-1)
                expected = torch.stack([width - x2, y1, width - x1, y2], dim=-1)
                assert torch.equal(target["boxes"].as_subclass(torch.Tensor), expected)
                assert torch.equal(target["masks"], ref["masks"].flip(-1))
            assert torch.equal(target["labels"], ref["labels"])
    assert seen == {"kept", "flipped"}


def test_flip_draws_come_from_torch_global_rng(tiny):
    dataset, _ = tiny
    train = DetectionImages(dataset, train=True, flip=True)

    def run(seed):
        torch.manual_seed(seed)
        return [train[i % 2][1]["boxes"].tolist() for i in range(16)]

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_iou_crop_keeps_boxes_masks_and_labels_together(tiny):
    dataset, _ = tiny
    train = DetectionImages(dataset, train=True, flip=True, iou_crop=True)
    plain = DetectionImages(dataset, train=False)
    torch.manual_seed(1)
    cropped = False
    for _ in range(30):
        for i in range(len(train)):
            image, target = train[i]
            check_consistent(image, target)  # masks still fill their boxes exactly
            assert image.shape[-2:] == target["masks"].shape[-2:]
            if image.shape != plain[i][0].shape:
                cropped = True
            assert set(target["labels"].tolist()) <= set(plain[i][1]["labels"].tolist())
            boxes = target["boxes"]
            assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert cropped


def test_ground_truth_is_the_training_targets_plus_crowd(tiny):
    dataset, _ = tiny
    gt = ground_truth(dataset)
    assert gt["categories"] == dataset.categories
    assert [im["id"] for im in gt["images"]] == [1, 2, 3]
    by_id = {a["id"]: a for a in gt["annotations"]}
    assert sorted(by_id) == [11, 12, 13, 21, 31]  # degenerate 22 dropped, crowd kept
    assert by_id[13]["iscrowd"] == 1 and by_id[31]["iscrowd"] == 1
    assert all(by_id[i]["iscrowd"] == 0 for i in (11, 12, 21))
    assert by_id[12]["bbox"] == [20.0, 5.0, 15.0, 20.0] and by_id[12]["area"] == 300.0
    assert by_id[12]["segmentation"] == dataset.annotations[1]["segmentation"]
    # the non-crowd objects are exactly the eval targets, box for box
    data = DetectionImages(dataset, train=False)
    for image, target in (data[i] for i in range(len(data))):
        objects = [a for a in gt["annotations"]
                   if a["image_id"] == target["image_id"] and not a["iscrowd"]]
        xyxy = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in objects)]
        assert xyxy == target["boxes"].tolist()
        assert [a["category_id"] for a in objects] == target["labels"].tolist()
    # the targets fed back as predictions score 100 against it, boxes and masks
    outputs = [{"boxes": t["boxes"], "labels": t["labels"],
                "scores": torch.ones(len(t["labels"])), "masks": t["masks"][:, None].float()}
               for _, t in (data[i] for i in range(len(data)))]
    preds = predictions_to_coco(outputs, [int(im["id"]) for im in data.images])
    metrics = coco_evaluate(gt, preds, iou_types=("bbox", "segm"))
    assert metrics["bbox"]["mAP"] == pytest.approx(100.0) and metrics["segm"]["mAP"] == 100.0


def test_ground_truth_without_an_area_takes_its_mask_area(tmp_path):
    """An object without an area gets its mask's (16 px), not its box's (10 x 8), as COCO
    sizes objects for the small/medium/large APs."""
    ann = {**annotation(11, 1, 1, [2, 3, 10, 8]), "segmentation": rect_rle(40, 30, [2, 3, 4, 4])}
    del ann["area"]
    dataset = CocoDataset(images=[{"id": 1, "file_name": "img1.png", "width": 40, "height": 30}],
                          annotations=[ann], categories=[{"id": 1, "name": "one"}],
                          image_root=tmp_path)
    assert ground_truth(dataset)["annotations"][0]["area"] == 16.0


def test_voc_difficult_objects_are_trained_on_and_ignored_by_the_evaluation(tmp_path):
    """VOC's evaluation ignores `difficult` objects; they had counted as missed when undetected
    (the original trains on them, which stays; it never evaluated VOC)."""
    write_images(tmp_path)
    images = [{"id": 1, "file_name": "img1.png", "width": 40, "height": 30}]
    easy, hard = (annotation(1, 1, 1, [2.0, 3.0, 10.0, 8.0], masks=False),
                  {**annotation(2, 1, 1, [20.0, 10.0, 12.0, 12.0], masks=False), "difficult": 1})
    dataset = CocoDataset(images=images, annotations=[{**easy, "difficult": 0}, hard],
                          categories=[{"id": 1, "name": "one"}], image_root=tmp_path)
    _, target = DetectionImages(dataset, train=False)[0]
    assert target["boxes"].shape[0] == 2  # trained on
    gt = ground_truth(dataset)
    assert [a["iscrowd"] for a in gt["annotations"]] == [0, 1]
    found_easy_only = [{"boxes": torch.tensor([[2.0, 3.0, 12.0, 11.0]]),
                        "labels": torch.tensor([1]), "scores": torch.tensor([0.9])}]
    metrics = coco_evaluate(gt, predictions_to_coco(found_easy_only, [1]))
    assert metrics["bbox"]["mAP"] == pytest.approx(100.0)


def test_voc_difficult_objects_ignore_detections_by_their_iou(tmp_path):
    """A detection on a difficult object is ignored when its IoU with it reaches the threshold,
    as in VOC's evaluation, however many there are; a small one inside its box (IoU 0.04) is a
    false positive. pycocotools' crowd overlap, intersection over the detection's area (1.0
    here), had ignored it too."""
    write_images(tmp_path)
    images = [{"id": 1, "file_name": "img1.png", "width": 40, "height": 30}]
    easy, hard = (annotation(1, 1, 1, [2.0, 3.0, 10.0, 8.0], masks=False),
                  {**annotation(2, 1, 1, [20.0, 10.0, 12.0, 12.0], masks=False), "difficult": 1})
    gt = ground_truth(CocoDataset(images=images, annotations=[easy, hard],
                                  categories=[{"id": 1, "name": "one"}], image_root=tmp_path))
    assert [a.get("difficult", 0) for a in gt["annotations"]] == [0, 1]

    def box_map50(boxes, scores):
        outputs = [{"boxes": torch.tensor(boxes), "labels": torch.ones(len(boxes), dtype=int),
                    "scores": torch.tensor(scores)}]
        return coco_evaluate(gt, predictions_to_coco(outputs, [1]))["bbox"]["mAP50"]

    easy_box = [2.0, 3.0, 12.0, 11.0]
    inside_hard = [24.0, 14.0, 26.4, 16.4]  # 2.4 x 2.4 in the 12 x 12 object
    on_hard, also_on_hard = [20.0, 10.0, 32.0, 21.0], [21.0, 10.0, 32.0, 22.0]
    assert box_map50([inside_hard, easy_box], [0.9, 0.5]) == pytest.approx(50.0)
    assert box_map50([on_hard, also_on_hard, easy_box], [0.9, 0.8, 0.5]) == pytest.approx(100.0)


def test_boxes_only_dataset_float_boxes_and_clamping(tmp_path):
    write_images(tmp_path)
    images = [{"id": 1, "file_name": "img1.png", "width": 40, "height": 30}]
    annotations = [annotation(1, 1, 1, [2.25, 3.5, 10.125, 7.75], masks=False),
                   annotation(2, 1, 1, [-0.5, 20.0, 10.0, 10.75], masks=False)]  # sticks out
    del annotations[0]["area"]  # no area and no mask: the box's
    dataset = CocoDataset(images=images, annotations=annotations,
                          categories=[{"id": 1, "name": "one"}], image_root=tmp_path)
    _, target = DetectionImages(dataset, train=False)[0]
    assert "masks" not in target
    assert target["boxes"].tolist() == [[2.25, 3.5, 12.375, 11.25], [0.0, 20.0, 9.5, 30.0]]
    gt = ground_truth(dataset)
    assert [a["bbox"] for a in gt["annotations"]] == [[2.25, 3.5, 10.125, 7.75],
                                                      [0.0, 20.0, 9.5, 10.0]]
    assert [a["area"] for a in gt["annotations"]] == [10.125 * 7.75, 10.0 * 10.75]
    assert "segmentation" not in gt["annotations"][0]
    _, target = DetectionImages(dataset, train=True, iou_crop=True)[0]
    assert "masks" not in target and target["boxes"].shape[0] == target["labels"].shape[0]


def test_corrupt_or_wrongly_sized_image_names_the_file(tiny):
    dataset, _ = tiny
    bad = dataset.image_root / "img2.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    data = DetectionImages(dataset, train=False)
    data[0]
    with pytest.raises(DatasetLayoutError, match="img2.png"):
        data[1]
    Image.new("RGB", (10, 10)).save(bad)
    with pytest.raises(DatasetLayoutError, match="img2.png.*10x10"):
        data[1]
    bad.unlink()
    with pytest.raises(DatasetLayoutError, match="img2.png"):
        data[1]


def test_collate_and_a_two_worker_loader(tiny):
    dataset, _ = tiny
    data = DetectionImages(dataset, train=False)
    images, targets = collate([data[0], data[1]])
    assert isinstance(images, list) and isinstance(targets, list) and len(images) == 2
    assert images[1].shape == (3, 48, 32) and targets[1]["image_id"] == 2

    loader = DataLoader(data, batch_size=2, num_workers=2, collate_fn=collate)
    batches = list(loader)
    assert [len(b[0]) for b in batches] == [2, 1]
    flat = [(im, t) for ims, ts in batches for im, t in zip(ims, ts)]
    for i, (image, target) in enumerate(flat):
        ref_image, ref = data[i]
        assert isinstance(image, tv_tensors.Image) and torch.equal(image, ref_image)
        assert target["image_id"] == ref["image_id"]
        assert isinstance(target["boxes"], tv_tensors.BoundingBoxes)
        assert torch.equal(target["boxes"], ref["boxes"]) and torch.equal(target["masks"],
                                                                          ref["masks"])
