"""The detection datasets: COCO-format representation, real-layout converters, digit-scenes."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from fixtures import detection as F
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from relvit.data.formats import DatasetLayoutError
from relvit.detection import datasets as D
from relvit.detection.coco import CocoDataset, check
from relvit.detection.scenes import write_digit_scenes
from relvit.layout import READY


def _objects(ds: CocoDataset, image_id: int) -> list[tuple[str, list[float]]]:
    names = {c["id"]: c["name"] for c in ds.categories}
    return [(names[a["category_id"]], a["bbox"]) for a in ds.annotations_by_image()[image_id]]


# --- VOC 2007 --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return F.write_voc2007(tmp_path_factory.mktemp("voc"))


def test_voc_boxes_categories_and_difficult(voc):
    root = voc["base"].parent.parent
    for split in ("trainval", "test"):
        ds = D.read_voc2007(root, split)
        stems = sorted(voc["splits"][split])
        assert [img["id"] for img in ds.images] == [int(s) for s in stems]
        assert [img["file_name"] for img in ds.images] == [f"{s}.jpg" for s in stems]
        assert ds.image_root == voc["base"] / "JPEGImages"
        assert ds.class_names == D.VOC_CLASSES and ds.class_names[0] == "aeroplane"
        assert [c["id"] for c in ds.categories] == list(range(1, 21))
        for stem in stems:
            img = next(i for i in ds.images if i["id"] == int(stem))
            assert (img["width"], img["height"]) == voc["sizes"][stem]
            # VOC 1-based inclusive -> x = xmin - 1, w = xmax - xmin + 1 (exact)
            expected = [(name, box) for name, box, _ in voc["objects"][stem]]
            assert _objects(ds, int(stem)) == expected
            anns = ds.annotations_by_image()[int(stem)]
            assert [a["difficult"] for a in anns] == [d for _, _, d in voc["objects"][stem]]
            assert all(a["iscrowd"] == 0 for a in anns)
        assert [a["id"] for a in ds.annotations] == list(range(1, len(ds.annotations) + 1))
        assert not ds.has_masks
    ds = D.read_voc2007(root, "trainval")
    assert _objects(ds, 5)[1] == ("aeroplane", [0.0, 0.0, 40.0, 30.0])  # the whole 40x30 image
    assert _objects(ds, 7) == [("person", [1.0, 2.0, 1.0, 1.0])]          # a single pixel
    assert ds.annotations_by_image()[5][0]["category_id"] == D.VOC_CLASSES.index("chair") + 1


def test_voc_keep_difficult_false_drops_them(voc):
    root = voc["base"].parent.parent
    ds = D.read_voc2007(root, "trainval", keep_difficult=False)
    assert [name for name, _ in _objects(ds, 5)] == ["chair", "aeroplane"]
    assert _objects(ds, 12) == []                      # its only object was difficult
    assert [img["id"] for img in ds.images] == [5, 7, 12]  # the image stays, as a negative
    assert all(a["difficult"] == 0 for a in ds.annotations)


def test_voc_errors(voc, tmp_path):
    with pytest.raises(DatasetLayoutError, match="(?s)VOC2007.*folder missing.*ImageSets"):
        D.read_voc2007(tmp_path / "nowhere", "trainval")
    with pytest.raises(DatasetLayoutError, match="not allowed"):
        D.read_voc2007(voc["base"].parent.parent, "training")
    fresh = F.write_voc2007(tmp_path / "broken")
    xml = fresh["base"] / "Annotations" / "000007.xml"
    xml.write_text(xml.read_text().replace("</object>", "</objekt>", 1))
    with pytest.raises(DatasetLayoutError) as e:
        D.read_voc2007(tmp_path / "broken", "trainval")
    assert f"{xml}:" in str(e.value) and "line" in str(e.value)
    xml.write_text(F.voc_xml("000007.jpg", 36, 24, [("pedestrian", 0, (2, 3, 4, 5))]))
    with pytest.raises(DatasetLayoutError, match="'pedestrian' is not one of the 20"):
        D.read_voc2007(tmp_path / "broken", "trainval")
    for box in ((2, 3, 40, 5), (2, 3, 4, 40)):  # past the right edge, past the bottom
        xml.write_text(F.voc_xml("000007.jpg", 36, 24, [("person", 0, box)]))
        with pytest.raises(DatasetLayoutError, match="outside the 36x24 image"):
            D.read_voc2007(tmp_path / "broken", "trainval")
    xml.write_text(F.voc_xml("000007.jpg", 36, 24, [("person", 0, (2, 3, 37, 5))]))
    ds = D.read_voc2007(tmp_path / "broken", "trainval")  # 1 px out: clipped to the image
    assert _objects(ds, 7) == [("person", [1.0, 2.0, 35.0, 3.0])]
    (fresh["base"] / "JPEGImages" / "000012.jpg").unlink()
    with pytest.raises(DatasetLayoutError, match="000012.jpg: file missing"):
        D.read_voc2007(tmp_path / "broken", "trainval")


# --- COCO 2017 -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return F.write_coco2017(tmp_path_factory.mktemp("coco"))


def test_coco_categories_remapped_with_original_id(coco):
    ds = D.read_coco2017(coco["root"], "val")
    assert [(c["id"], c["name"], c["coco_id"]) for c in ds.categories] == [
        (1, "person", 1), (2, "car", 3), (3, "dog", 18), (4, "toothbrush", 90)]
    assert ds.image_root == coco["root"] / "val2017"


def test_a_dataset_of_other_categories_than_the_registrys_is_refused(coco):
    """COCO's categories come from its annotation file: one of another category set (here the
    fixture's 4) would have trained a detector of 4 classes for Table 3's 80, unseen."""
    from relvit.data.registry import DATASETS
    from relvit.detection.data import read_detection

    with pytest.raises(DatasetLayoutError, match=rf"{coco['root']} \(val split\): 4 object "
                                                 r"categories, where COCO mini-val has 80"):
        read_detection(DATASETS["coco2017"], coco["root"], "val")
    fewer = dataclasses.replace(DATASETS["coco2017"], num_classes=3)  # more than it expects too
    with pytest.raises(DatasetLayoutError, match="4 object categories, where COCO mini-val has 3"):
        read_detection(fewer, coco["root"], "val")


def test_coco_train_drops_empty_and_thin_boxes(coco):
    ds = D.read_coco2017(coco["root"], "train")
    assert [img["id"] for img in ds.images] == [9, 42]  # 25 (empty) and 30 (crowd only) dropped
    assert [a["id"] for a in ds.annotations] == [500, 501, 700]  # 701 (w = 0.5) dropped
    assert [a["category_id"] for a in ds.annotations] == [F.COCO_CONTIGUOUS[c] for c in (1, 3, 90)]
    assert ds.annotations[0]["bbox"] == [10.0, 5.0, 20.0, 20.0]
    assert ds.has_masks
    kept = D.read_coco2017(coco["root"], "train", drop_empty=False)
    assert [img["id"] for img in kept.images] == [9, 25, 30, 42]
    crowd = [a for a in kept.annotations if a["iscrowd"]]
    assert [a["id"] for a in crowd] == [900000600]
    assert mask_utils.area(crowd[0]["segmentation"]) == coco["crowd_area"][900000600]


def test_coco_polygons_become_rle(coco):
    ds = D.read_coco2017(coco["root"], "train")
    by_id = {a["id"]: a for a in ds.annotations}
    for aid in (500, 501, 700):
        rle = by_id[aid]["segmentation"]
        assert isinstance(rle["counts"], str)
        img = next(i for i in ds.images if i["id"] == by_id[aid]["image_id"])
        assert rle["size"] == [img["height"], img["width"]]
        polygon_area = sum(F.polygon_area(p) for p in coco["polygons"][aid])
        assert abs(float(mask_utils.area(rle)) - polygon_area) <= 0.1 * polygon_area + 5
    assert mask_utils.area(by_id[500]["segmentation"]) == 400  # the 20 x 20 rectangle
    two = mask_utils.decode(by_id[501]["segmentation"])        # both polygons, merged
    assert two[35, 45] and two[35, 60] and not two[35, 56]


def test_coco_val_keeps_crowd_and_empty_images(coco):
    ds = D.read_coco2017(coco["root"], "val")
    assert [img["id"] for img in ds.images] == [139, 285]
    assert [(a["id"], a["iscrowd"]) for a in ds.annotations] == [(100, 0), (900000100, 1)]
    crowd = ds.annotations[1]
    assert crowd["category_id"] == 2 and crowd["bbox"] == [30.0, 20.0, 25.0, 15.0]
    assert mask_utils.area(crowd["segmentation"]) == coco["crowd_area"][900000100]
    tri = ds.annotations[0]
    assert abs(mask_utils.area(tri["segmentation"]) - 600) < 40
    assert tri["area"] == 600.0  # COCO's own area is kept (COCOeval's area ranges use it)


def test_coco_errors(coco, tmp_path):
    with pytest.raises(DatasetLayoutError, match="(?s)instances_val2017.json: file missing.*"
                                                 "expected layout for coco2017"):
        D.read_coco2017(tmp_path, "val")
    root = tmp_path / "c"
    F.write_coco2017(root)
    (root / "val2017" / "000000000285.jpg").unlink()
    with pytest.raises(DatasetLayoutError, match="000000000285.jpg: image file missing"):
        D.read_coco2017(root, "val")


# --- KITTI -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kitti(tmp_path_factory):
    return F.write_kitti(tmp_path_factory.mktemp("kitti"))


def test_kitti_split(kitti):
    root = kitti["base"].parent
    train, val = D.read_kitti(root, "train"), D.read_kitti(root, "val")
    train_ids = [img["id"] for img in train.images]
    val_ids = [img["id"] for img in val.images]
    assert len(val_ids) == 2 and len(train_ids) == 6  # round(0.25 * 8)
    assert train_ids == sorted(set(train_ids)) and val_ids == sorted(set(val_ids))
    assert not set(train_ids) & set(val_ids)
    assert set(train_ids) | set(val_ids) == set(range(8))
    assert [img["id"] for img in D.read_kitti(root, "val").images] == val_ids  # deterministic
    order = np.random.default_rng(12345).permutation(8)
    assert val_ids == sorted(order[:2].tolist())
    other = {tuple(img["id"] for img in D.read_kitti(root, "val", seed=s).images)
             for s in range(6)}
    assert len(other) > 1  # the seed matters
    half = D.read_kitti(root, "val", val_fraction=0.5)
    assert len(half.images) == 4
    assert len(D.read_kitti(root, "val", val_fraction=0.35).images) == 3  # round(2.8), not 2


def test_kitti_boxes_classes_and_dontcare(kitti):
    root = kitti["base"].parent
    ds = {}
    for split in ("train", "val"):
        part = D.read_kitti(root, split)
        assert part.class_names == ["Car", "Van", "Truck", "Pedestrian", "Person_sitting",
                                    "Cyclist", "Tram", "Misc"]
        for img in part.images:
            ds[img["id"]] = (part, img)
    for image_id, objects in kitti["objects"].items():
        part, img = ds[image_id]
        assert img["file_name"] == f"{image_id:06d}.png"
        assert (img["width"], img["height"]) == kitti["sizes"][image_id]
        plain = [a for a in part.annotations_by_image()[image_id] if not a["iscrowd"]]
        names = {c["id"]: c["name"] for c in part.categories}
        # exact x1, y1, x2-x1, y2-y1
        assert [(names[a["category_id"]], a["bbox"]) for a in plain] == objects
    part, _ = ds[3]
    assert [a["category_id"] for a in part.annotations_by_image()[3]] == [8, 2]  # Misc, Van
    # DontCare: no class, an ignore region (iscrowd) for each of the 8 classes
    part, _ = ds[2]
    regions = part.annotations_by_image()[2]  # only DontCare
    assert [a["category_id"] for a in regions] == list(range(1, 9))
    assert all(a["iscrowd"] == 1 and a["bbox"] == [1.0, 1.0, 4.0, 4.0] for a in regions)
    part, _ = ds[1]
    assert sum(a["iscrowd"] for a in part.annotations_by_image()[1]) == 8  # beside a Car


def test_kitti_detections_in_dontcare_regions_are_not_false_positives(kitti):
    """KITTI's benchmark ignores detections in DontCare regions; here they had counted as false
    positives (the regions were dropped)."""
    import torch

    from relvit.detection.evaluate import coco_evaluate, predictions_to_coco
    from relvit.detection.loader import ground_truth

    part = next(p for p in (D.read_kitti(kitti["base"].parent, s) for s in ("train", "val"))
                if any(img["id"] == 1 for img in p.images))
    one = CocoDataset([img for img in part.images if img["id"] == 1],
                      part.annotations_by_image()[1], part.categories, part.image_root)
    car, truck = (D.KITTI_CLASSES.index(name) + 1 for name in ("Car", "Truck"))
    # the Car and the Truck found, and a Car "found" at a higher score in the DontCare region
    outputs = [{"boxes": torch.tensor([[42.0, 3.0, 58.0, 9.0], [0.0, 3.0, 30.5, 19.0],
                                       [31.0, 1.0, 62.0, 18.5]]),
                "labels": torch.tensor([car, car, truck]),
                "scores": torch.tensor([0.95, 0.9, 0.9])}]
    metrics = coco_evaluate(ground_truth(one), predictions_to_coco(outputs, [1]))
    assert metrics["bbox"]["mAP"] == pytest.approx(100.0)


def test_kitti_errors(tmp_path):
    with pytest.raises(DatasetLayoutError, match="(?s)training: folder missing.*label_2"):
        D.read_kitti(tmp_path, "train")
    fixture = F.write_kitti(tmp_path / "k")
    label = fixture["base"] / "label_2" / "000006.txt"
    lines = label.read_text().splitlines()
    label.write_text(lines[0] + "\n" + " ".join(lines[1].split()[:10]) + "\n")
    with pytest.raises(DatasetLayoutError, match=f"{label}:2: malformed label line"):
        for split in ("train", "val"):
            D.read_kitti(tmp_path / "k", split)
    label.write_text(F.kitti_line("Bus", (1, 1, 5, 5)) + "\n")
    with pytest.raises(DatasetLayoutError, match=f"{label}:1: class 'Bus'"):
        for split in ("train", "val"):
            D.read_kitti(tmp_path / "k", split)
    label.write_text(F.kitti_line("Car", (1, 1, 70, 5)) + "\n")
    with pytest.raises(DatasetLayoutError, match=f"{label}:1: .*outside the 61x19 image"):
        for split in ("train", "val"):
            D.read_kitti(tmp_path / "k", split)


# --- SVHN format 1 ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def svhn(tmp_path_factory):
    root = tmp_path_factory.mktemp("svhn")
    return root, F.write_svhn_detection(root)


def test_svhn_detection(svhn):
    root, fixture = svhn
    for split in ("train", "test"):
        ds = D.read_svhn_detection(root, split)
        records = fixture[split]["records"]
        assert [img["id"] for img in ds.images] == list(range(1, len(records) + 1))
        assert [img["file_name"] for img in ds.images] == [name for name, _ in records]
        assert ds.class_names == [str(d) for d in range(10)]
        assert ds.image_root == root / split
        by_image = ds.annotations_by_image()
        for image_id, (name, digits) in enumerate(records, start=1):
            img = ds.images[image_id - 1]
            assert (img["width"], img["height"]) == fixture[split]["sizes"][name]
            anns = by_image[image_id]
            assert len(anns) == len(digits)
            for ann, digit in zip(anns, digits):
                assert ann["category_id"] == int(digit["label"]) % 10 + 1
                if digit["top"] >= 0:
                    assert ann["bbox"] == [digit["left"], digit["top"], digit["width"],
                                           digit["height"]]
    train = D.read_svhn_detection(root, "train")
    first = train.annotations_by_image()[1][0]
    assert first["category_id"] == 1 and train.class_names[0] == "0"  # label 10 -> "0"
    crossing = train.annotations_by_image()[2][0]
    digit = fixture["train"]["records"][1][1][0]
    assert crossing["bbox"] == [digit["left"], 0.0, digit["width"], digit["height"] - 2]
    single = [k for k, (_, d) in enumerate(fixture["train"]["records"], start=1) if len(d) == 1]
    multi = [k for k, (_, d) in enumerate(fixture["train"]["records"], start=1) if len(d) == 3]
    assert single and multi  # both the scalar and the reference layout were read


def test_svhn_errors(tmp_path):
    with pytest.raises(DatasetLayoutError, match="(?s)train: folder missing.*digitStruct"):
        D.read_svhn_detection(tmp_path, "train")
    F.write_digit_struct(tmp_path / "train" / "digitStruct.mat",
                         [("1.png", [{"label": 11.0, "left": 1.0, "top": 1.0, "width": 3.0,
                                      "height": 4.0}])])
    F.write_image(tmp_path / "train" / "1.png", 20, 20)
    with pytest.raises(DatasetLayoutError, match="label 11, expected 1..10"):
        D.read_svhn_detection(tmp_path, "train")
    (tmp_path / "train" / "digitStruct.mat").write_text("not hdf5")
    with pytest.raises(DatasetLayoutError, match="not an HDF5"):
        D.read_svhn_detection(tmp_path, "train")


# --- CocoDataset -----------------------------------------------------------------------------


def _tiny(image_root: Path) -> CocoDataset:
    return CocoDataset(
        images=[{"id": 3, "file_name": "a.png", "width": 20, "height": 10},
                {"id": 7, "file_name": "b.png", "width": 20, "height": 10}],
        annotations=[{"id": 1, "image_id": 3, "category_id": 2, "bbox": [1.0, 2.0, 3.0, 4.0],
                      "area": 12.0, "iscrowd": 0},
                     {"id": 2, "image_id": 7, "category_id": 1, "bbox": [0.0, 0.0, 20.0, 10.0],
                      "area": 200.0, "iscrowd": 0}],
        categories=[{"id": 1, "name": "x"}, {"id": 2, "name": "y"}],
        image_root=image_root,
    )


def test_save_load_round_trip_and_subset(tmp_path):
    ds = _tiny(tmp_path / "images" / "train")
    ds.save(tmp_path / "ann" / "train.json")
    stored = json.loads((tmp_path / "ann" / "train.json").read_text())
    assert stored["image_root"] == "../images/train"
    back = CocoDataset.load(tmp_path / "ann" / "train.json")
    assert back.to_dict() == ds.to_dict()
    assert back.image_root.resolve() == ds.image_root.resolve()
    moved = CocoDataset.load(tmp_path / "ann" / "train.json", image_root=tmp_path)
    assert moved.image_root == tmp_path
    part = ds.subset([7])
    assert [i["id"] for i in part.images] == [7] and [a["id"] for a in part.annotations] == [2]
    assert part.categories == ds.categories and part.image_root == ds.image_root
    with pytest.raises(ValueError, match="not in the dataset"):
        ds.subset([4])
    assert COCO(str(tmp_path / "ann" / "train.json")).getAnnIds(imgIds=[3]) == [1]


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.images.append(dict(d.images[0])), "duplicate image id 3"),
    (lambda d: d.annotations.append(dict(d.annotations[0])), "duplicate annotation id 1"),
    (lambda d: d.annotations[0].update(image_id=4), "unknown image 4"),
    (lambda d: d.annotations[0].update(category_id=3), "unknown category 3"),
    (lambda d: d.annotations[0].update(bbox=[1.0, 2.0, 0.0, 4.0]), "w or h <= 0"),
    (lambda d: d.annotations[0].update(bbox=[1.0, 2.0, 3.0, -1.0]), "w or h <= 0"),
    (lambda d: d.annotations[1].update(bbox=[0.0, 0.0, 21.5, 10.0]), "outside its image 7"),
    (lambda d: d.annotations[1].update(bbox=[-1.5, 0.0, 5.0, 5.0]), "outside its image 7"),
    (lambda d: d.annotations[1].update(bbox=[0.0, 0.0, 5.0, 11.5]), "outside its image 7"),
    (lambda d: d.categories[1].update(id=3), "not contiguous 1..K"),
    (lambda d: d.annotations[0].update(iscrowd=2), "iscrowd 2"),
    (lambda d: d.annotations[0].update(segmentation={"size": [20, 10], "counts": "0"}),
     r"RLE size \[20, 10\] differs"),
    # json values of the wrong type: named, not a TypeError from a comparison
    (lambda d: d.images[0].update(width="20"), "image 3 has size '20' x 10, not numbers"),
    (lambda d: d.images[1].update(id=[7]), r"image #1 has id \[7\], not an integer or string"),
    (lambda d: d.annotations[0].update(image_id=[3]), r"unknown image \[3\]"),
    (lambda d: d.annotations[0].update(area="big"), "annotation 1 has area 'big', not a number"),
    (lambda d: d.annotations[0].update(bbox=["a", 2.0, 3.0, 4.0]),
     r"annotation 1 has bbox \['a', 2.0, 3.0, 4.0\], expected 4 numbers"),
    # masks are all or nothing (has_masks): one missing had made the run a Faster R-CNN's
    (lambda d: d.annotations[1].update(
        segmentation={"size": [10, 20], "counts": mask_utils.encode(
            np.ones((10, 20), dtype=np.uint8, order="F"))["counts"].decode()}),
     "annotation 1 has no segmentation, while 1 others have one"),
])
def test_check_errors(tmp_path, edit, message):
    ds = _tiny(tmp_path)
    check(ds)
    ds.annotations[1]["bbox"] = [-0.5, 0.0, 20.5, 10.5]  # within 1 px: fine
    check(ds)
    ds.annotations[1]["bbox"] = [0.0, 0.0, 20.0, 10.0]
    broken = copy.deepcopy(ds)
    edit(broken)
    with pytest.raises(DatasetLayoutError, match=message):
        check(broken)
    if "duplicate image" not in message:
        broken.save(tmp_path / "bad.json")
        with pytest.raises(DatasetLayoutError, match="bad.json"):
            CocoDataset.load(tmp_path / "bad.json")


# --- digit-scenes ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    return root, write_digit_scenes(root / "a", n_train=24, n_val=10, seed=3)


def test_a_full_disk_names_the_scene_image_it_could_not_write(tmp_path, monkeypatch):
    """PIL's error named no file ("[Errno 28] No space left on device")."""
    import errno

    from PIL import Image

    def full(self, fp, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    with pytest.raises(OSError, match=r"cannot write .*train/000001\.png \(No space left"):
        write_digit_scenes(tmp_path / "a", n_train=2, n_val=1, seed=3)


def test_digit_scenes_deterministic(scenes, tmp_path):
    root, paths = scenes
    again = write_digit_scenes(tmp_path / "b", n_train=24, n_val=10, seed=3)
    files_a = sorted(p.relative_to(root / "a") for p in (root / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*")
                     if p.is_file())
    assert files_a == files_b and len(files_a) == 24 + 10 + 2
    for rel in files_a:
        assert (root / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert set(again) == {"train", "val"}
    other = write_digit_scenes(tmp_path / "c", n_train=24, n_val=10, seed=4)
    assert other["train"].read_bytes() != paths["train"].read_bytes()
    fewer = write_digit_scenes(tmp_path / "d", n_train=5, n_val=10, seed=3)
    assert fewer["val"].read_bytes() == paths["val"].read_bytes()  # val independent of n_train


def test_digit_scenes_masks_boxes_categories(scenes):
    from PIL import Image

    _, paths = scenes
    for split, n in (("train", 24), ("val", 10)):
        ds = CocoDataset.load(paths[split])
        assert ds.image_root.resolve() == (paths[split].parent / split).resolve()
        assert [i["id"] for i in ds.images] == list(range(1, n + 1))
        assert [(c["id"], c["name"]) for c in ds.categories] == [
            (d + 1, str(d)) for d in range(10)]
        assert ds.has_masks
        counts = []
        for image_id, anns in ds.annotations_by_image().items():
            assert 1 <= len(anns) <= 4
            counts.append(len(anns))
            pixels = np.asarray(Image.open(ds.image_root / f"{image_id:06d}.png"))
            assert pixels.shape == (64, 64, 3)
            union = np.zeros((64, 64), dtype=np.int64)
            for ann in anns:
                assert 1 <= ann["category_id"] <= 10 and ann["iscrowd"] == 0
                m = mask_utils.decode(ann["segmentation"]).astype(bool)
                union += m
                assert ann["area"] == m.sum() >= 8
                assert list(mask_utils.toBbox(ann["segmentation"])) == ann["bbox"]  # tight
                ys, xs = np.nonzero(m)
                assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1,
                                       ys.max() - ys.min() + 1]
                assert pixels[m].max(axis=1).min() > 0  # every mask pixel is painted
            assert union.max() <= 1  # masks are disjoint after overwriting
        assert len(set(counts)) > 1


def test_digit_scenes_accepted_by_pycocotools(scenes):
    _, paths = scenes
    gt = COCO(str(paths["val"]))
    assert sorted(gt.getCatIds()) == list(range(1, 11)) and len(gt.getImgIds()) == 10
    for iou_type in ("bbox", "segm"):
        dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                 "segmentation": a["segmentation"], "score": 1.0}
                for a in gt.dataset["annotations"]]
        evaluator = COCOeval(gt, gt.loadRes(copy.deepcopy(dets)), iou_type)
        evaluator.params.areaRng = [[0, 1e10]] * 4  # every scene object is "small" in COCO terms
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        assert evaluator.stats[0] == pytest.approx(1.0)


def test_digit_scenes_use_the_classification_split():
    """Val scenes hold the classification test split's digits, in its order: unseen in training."""
    from relvit.data.digits import load_digits_splits
    from relvit.detection import scenes

    pools = scenes._digit_pools()
    assert len(pools["train"][0]) == 1437 and len(pools["val"][0]) == 360
    splits = load_digits_splits(8)  # the 8x8 digits themselves
    for pool, split in ((pools["train"], splits.train), (pools["val"], splits.evals["test"])):
        assert np.array_equal(pool[1], split.labels.numpy())
        assert np.allclose(pool[0], split.images[:, 0].numpy(), atol=1e-6)


def test_prepare_data_writes_digit_scenes_anew_after_an_interrupted_run(tmp_path, monkeypatch):
    """A run killed after train.json (or inside a json write, which is atomic) left scenes that
    every later prepare-data refused; val.json, written last, now says they are complete."""
    from relvit.data.prepare import prepare_dataset
    from relvit.detection import data as detection_data

    monkeypatch.setitem(detection_data.SCENES, "n_train", 6)
    monkeypatch.setitem(detection_data.SCENES, "n_val", 4)
    def files(folder: Path) -> dict[Path, bytes]:  # the ready marker's time stamp aside
        return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != READY}

    record = prepare_dataset("digit_scenes", tmp_path)
    folder = Path(record["folder"])
    complete = files(folder)
    (folder / "val.json").unlink()  # killed before val.json
    (folder / "train.json").write_text('{"images": [')  # and, say, this one rewritten halfway
    assert prepare_dataset("digit_scenes", tmp_path)["splits"] == record["splits"]
    assert files(folder) == complete


def test_coco_json_entries_without_their_keys_are_named(tmp_path):
    root = tmp_path / "c"
    F.write_coco2017(root)
    ann_file = root / "annotations" / "instances_val2017.json"
    data = json.loads(ann_file.read_text())
    for what, key, value, message in (
            ("annotations", "bbox", None, r'"annotations" entry 0 \(id \d+\) lacks bbox'),
            ("images", "file_name", None, r'"images" entry 0 \(id \d+\) lacks file_name'),
            ("categories", "name", None, r'"categories" entry 0 \(id \d+\) lacks name'),
            ("annotations", "bbox", [1, 2, 3], r"bbox \[1, 2, 3\] is not 4 numbers"),
            ("annotations", "bbox", ["a", 2, 3, 4], r"bbox \['a', 2, 3, 4\] is not 4 numbers"),
            # values of the wrong type had raised a bare TypeError or ValueError
            ("annotations", "id", None, r'"annotations" entry 0 lacks id'),
            ("images", "width", "abc", r"\"images\" entry 0: width 'abc' is not an integer"),
            ("categories", "id", "1", r"\"categories\" entry 0: id '1' is not an integer"),
            ("annotations", "image_id", [139], r"points at unknown image \[139\]"),
            # corrupt, not thin: it had been dropped as a box under 1 px is
            ("annotations", "bbox", [44, 4, -40, 30], "has a negative width or height"),
            ("annotations", "iscrowd", "yes", r"area .* and iscrowd 'yes' are not a number"),
            ("annotations", "area", "big", r"area 'big' and iscrowd .* are not a number"),
            ("annotations", "segmentation", [["a", 1, 2, 3, 4, 5]],
             "a polygon holds a value that is not a number"),
            ("annotations", "segmentation", [[1, 2, 3, 4, 5, None]],
             "a polygon holds a value that is not a number")):
        broken = json.loads(json.dumps(data))
        if value is None:
            del broken[what][0][key]
        else:
            broken[what][0][key] = value
        ann_file.write_text(json.dumps(broken))
        with pytest.raises(DatasetLayoutError, match=f"{ann_file}: .*{message}"):
            D.read_coco2017(root, "val")


def test_rle_counts_read_as_pycocotools_writes_them():
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (7, 5), (40, 60), (3, 200)]:
        mask = np.asfortranarray(rng.random(shape) < rng.random())
        flat = mask.flatten(order="F")
        edges = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
        runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
        if flat[0]:  # RLE counts begin with a run of zeros
            runs = [0] + runs
        counts = mask_utils.encode(mask.astype(np.uint8))["counts"].decode()
        assert D._rle_counts(counts) == runs
        assert D._rle_fits(counts, *shape) and D._rle_fits(runs, *shape)
    assert not D._rle_fits([3, -1, 4], 2, 3) and not D._rle_fits([True, 5], 2, 3)


@pytest.mark.parametrize("counts", ["!!!zz", "", "0", "1a", [5, 7]])
def test_rles_that_pycocotools_would_misread_are_named(tmp_path, counts):
    """A compressed RLE pycocotools cannot read ("!!!zz") had passed the reader and failed
    training without a name; one it misreads ("", "0") decoded garbage or aborted the process."""
    root = tmp_path / "c"
    F.write_coco2017(root)
    ann_file = root / "annotations" / "instances_val2017.json"
    data = json.loads(ann_file.read_text())
    crowd = next(a for a in data["annotations"] if a["id"] == 900000100)
    crowd["segmentation"] = {"size": crowd["segmentation"]["size"], "counts": counts}
    ann_file.write_text(json.dumps(data))
    h, w = crowd["segmentation"]["size"]
    with pytest.raises(DatasetLayoutError, match=f"annotation 900000100: its RLE's counts do "
                                                 f"not describe a {h}x{w} mask"):
        D.read_coco2017(root, "val")


def test_coco_objects_need_all_a_mask_or_none(tmp_path):
    root = tmp_path / "c"
    F.write_coco2017(root)
    ann_file = root / "annotations" / "instances_train2017.json"
    data = json.loads(ann_file.read_text())
    del next(a for a in data["annotations"] if a["id"] == 501)["segmentation"]
    ann_file.write_text(json.dumps(data))
    with pytest.raises(DatasetLayoutError, match="annotation 501 has no segmentation, while 2 "
                                                 "others have one"):
        D.read_coco2017(root, "train")


def test_text_files_that_are_not_utf8_are_named(tmp_path):
    fixture = F.write_kitti(tmp_path / "k")
    label = fixture["base"] / "label_2" / "000006.txt"
    label.write_bytes("Caf\xe9".encode("latin-1"))
    with pytest.raises(DatasetLayoutError, match=f"{label}: not UTF-8 text"):
        for split in ("train", "val"):
            D.read_kitti(tmp_path / "k", split)


def test_voc_box_past_the_bottom_only_is_an_error(tmp_path):
    """A box below a wide image's bottom (but within its width) is refused, not clipped."""
    F.write_voc2007(tmp_path)
    xml = tmp_path / "VOCdevkit" / "VOC2007" / "Annotations" / "000007.xml"
    xml.write_text(F.voc_xml("000007.jpg", 36, 24, [("person", 0, (2, 3, 4, 30))]))  # y+h = 30
    with pytest.raises(DatasetLayoutError, match="outside the 36x24 image"):
        D.read_voc2007(tmp_path, "trainval")


def test_voc_difficult_other_than_0_or_1_is_an_error(tmp_path):
    F.write_voc2007(tmp_path)
    xml = tmp_path / "VOCdevkit" / "VOC2007" / "Annotations" / "000007.xml"
    xml.write_text(F.voc_xml("000007.jpg", 36, 24, [("person", 2, (2, 3, 4, 5))]))
    with pytest.raises(DatasetLayoutError, match="<difficult> is 2, expected 0|1"):
        D.read_voc2007(tmp_path, "trainval")


def test_box_readers_area_is_the_box_area(tmp_path):
    """COCOeval's small/medium/large ranges use "area": for box-only datasets it is w * h."""
    F.write_voc2007(tmp_path / "voc")
    F.write_kitti(tmp_path / "kitti")
    parts = [D.read_voc2007(tmp_path / "voc", s) for s in ("trainval", "test")]
    parts += [D.read_kitti(tmp_path / "kitti", s) for s in ("train", "val")]
    anns = [a for ds in parts for a in ds.annotations]
    assert any(a["bbox"][2] != a["bbox"][3] for a in anns)
    for a in anns:
        assert a["area"] == pytest.approx(a["bbox"][2] * a["bbox"][3])




def test_image_ids_of_colliding_or_non_numeric_stems_are_1_based_positions():
    assert D._image_ids(["000005", "000012"]) == [5, 12]
    assert D._image_ids(["5", "005"]) == [2, 1]   # both are 5: positions in sorted order
    assert D._image_ids(["b", "a", "c"]) == [2, 1, 3]




def test_kitti_dontcare_is_clipped_and_an_empty_one_left_out(tmp_path):
    fixture = F.write_kitti(tmp_path)
    label = fixture["base"] / "label_2" / "000002.txt"  # a 60x18 image
    label.write_text(F.kitti_line("DontCare", (50.0, 1.0, 70.0, 5.0)) + "\n"   # 10 px out
                     + F.kitti_line("DontCare", (-1.0, -1.0, -1.0, -1.0)) + "\n"  # empty
                     + F.kitti_line("Car", (1.0, 1.0, 5.0, 5.0)) + "\n")
    part = next(p for p in (D.read_kitti(tmp_path, s) for s in ("train", "val"))
                if any(img["id"] == 2 for img in p.images))
    anns = part.annotations_by_image()[2]
    crowd = [a for a in anns if a["iscrowd"]]
    assert [a["category_id"] for a in crowd] == list(range(1, 9))
    assert all(a["bbox"] == [50.0, 1.0, 10.0, 4.0] for a in crowd)
    assert [(a["category_id"], a["bbox"]) for a in anns if not a["iscrowd"]] == [
        (1, [1.0, 1.0, 4.0, 4.0])]


def test_kitti_split_ids_do_not_depend_on_the_input_order():
    ids = list(range(0, 40, 3))
    shuffled = list(np.random.default_rng(0).permutation(ids))
    for split in ("train", "val"):
        assert D.kitti_split_ids(shuffled, split) == D.kitti_split_ids(ids, split)




def _rewrite_coco(root: Path, split: str, edit) -> None:
    path = root / "annotations" / f"instances_{split}2017.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_coco_box_slightly_outside_is_clipped_and_dropped_if_then_thin(tmp_path):
    F.write_coco2017(tmp_path)

    def edit(data):
        ann = next(a for a in data["annotations"] if a["id"] == 100)  # on 139, 60x40
        ann["bbox"] = [-0.5, 10.0, 60.0, 30.6]                          # 0.5 px left, 0.6 below

    _rewrite_coco(tmp_path, "val", edit)
    ds = D.read_coco2017(tmp_path, "val")
    ann = next(a for a in ds.annotations if a["id"] == 100)
    assert ann["bbox"] == pytest.approx([0.0, 10.0, 59.5, 30.0])

    def thin_once_clipped(data):  # 1.5 px wide as given, 0.6 px inside the image
        next(a for a in data["annotations"] if a["id"] == 100)["bbox"] = [-0.9, 10.0, 1.5, 5.0]

    def on_the_edge(data):  # 1 px wide, on the right edge: within tolerance, 0 px inside
        next(a for a in data["annotations"] if a["id"] == 100)["bbox"] = [60.0, 10.0, 1.0, 5.0]

    for edit in (thin_once_clipped, on_the_edge):  # the edge box had refused the whole file
        _rewrite_coco(tmp_path, "val", edit)
        assert 100 not in [a["id"] for a in D.read_coco2017(tmp_path, "val").annotations]

    def beyond(data):  # past the tolerance: a damaged file, not a thin box
        next(a for a in data["annotations"] if a["id"] == 100)["bbox"] = [100.0, 10.0, 5.0, 5.0]

    _rewrite_coco(tmp_path, "val", beyond)
    with pytest.raises(DatasetLayoutError, match="lies outside the 60x40 image"):
        D.read_coco2017(tmp_path, "val")


def test_coco_two_point_polygon_is_an_empty_mask_not_a_box(tmp_path):
    F.write_coco2017(tmp_path)

    def edit(data):
        ann = next(a for a in data["annotations"] if a["id"] == 100)
        ann["segmentation"] = [[10.0, 10.0, 30.0, 30.0]]  # 4 numbers: pycocotools reads a box

    _rewrite_coco(tmp_path, "val", edit)
    ds = D.read_coco2017(tmp_path, "val")
    ann = next(a for a in ds.annotations if a["id"] == 100)
    assert mask_utils.area(ann["segmentation"]) == 0


def test_coco_annotations_follow_image_order_then_id(tmp_path):
    F.write_coco2017(tmp_path)

    def edit(data):
        extra = dict(next(a for a in data["annotations"] if a["id"] == 500), id=800)
        data["annotations"].append(extra)  # on image 9, with an id after image 42's 700

    _rewrite_coco(tmp_path, "train", edit)
    ds = D.read_coco2017(tmp_path, "train")
    assert [img["id"] for img in ds.images] == [9, 42]
    assert [a["id"] for a in ds.annotations] == [500, 501, 800, 700]


def test_coco_missing_area_defaults_to_the_box_area(tmp_path):
    F.write_coco2017(tmp_path)

    def edit(data):
        del next(a for a in data["annotations"] if a["id"] == 100)["area"]

    _rewrite_coco(tmp_path, "val", edit)
    ds = D.read_coco2017(tmp_path, "val")
    ann = next(a for a in ds.annotations if a["id"] == 100)
    assert ann["area"] == pytest.approx(ann["bbox"][2] * ann["bbox"][3])




def test_class_names_are_in_id_order_and_has_masks_ignores_crowds():
    images = [{"id": 1, "file_name": "a.png", "width": 10, "height": 20}]
    cats = [{"id": 2, "name": "b"}, {"id": 1, "name": "a"}]
    assert CocoDataset(images, [], cats).class_names == ["a", "b"]
    assert not CocoDataset(images, [], cats).has_masks  # no object at all: no masks
    rle = {"size": [20, 10], "counts": "0"}
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2], "area": 4.0,
             "iscrowd": 0, "segmentation": rle},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [0, 0, 2, 2], "area": 4.0,
             "iscrowd": 1}]  # a crowd region without a mask does not take the masks away
    assert CocoDataset(images, anns, cats).has_masks
