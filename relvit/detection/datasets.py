"""Readers of the detection datasets' real on-disk layouts, each returning a `CocoDataset`.

Conventions shared by every reader:

* boxes are COCO [x, y, w, h] floats; pixel i covers [i, i + 1), so a box over pixels
  x0..x1 (inclusive, 0-based) is [x0, ., x1 - x0 + 1, .];
* category ids are contiguous 1..K in the order of the reader's `*_CLASSES` list (0 is left to
  the R-CNN background);
* images are sorted by image id; the image id is the file stem as an integer (VOC "000005" -> 5,
  KITTI "000123" -> 123, SVHN "7.png" -> 7) and COCO's own id for COCO;
* annotation ids run 1..N in image order (COCO keeps its own ids);
* a box sticking out of its image by at most 1 px is clipped to the image; further out is a
  `DatasetLayoutError` (SVHN excepted, see `read_svhn_detection`);
* a missing root or file, a malformed XML / label line (file and line named), an unknown class
  name and a box outside the image raise `DatasetLayoutError` naming the path and showing
  `DETECTION_LAYOUT[key]`.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from relvit.data import formats
from relvit.detection.coco import (BOX_TOLERANCE, NUMBER_TYPES, CocoDataset, check,
                                   is_one_of)

DETECTION_LAYOUT: dict[str, str] = {
    "voc2007": """\
<root>/VOCdevkit/VOC2007/          (VOCtrainval_06-Nov-2007.tar, VOCtest_06-Nov-2007.tar)
    Annotations/<id>.xml           <size><width/><height/></size>, <object><name/><difficult/>
                                   <bndbox><xmin/><ymin/><xmax/><ymax/></bndbox></object>...
                                   (1-based inclusive pixel coordinates)
    JPEGImages/<id>.jpg
    ImageSets/Main/{train,val,trainval,test}.txt   one image id per line""",
    "coco2017": """\
<root>/                            (annotations_trainval2017.zip, train2017.zip, val2017.zip)
    annotations/instances_train2017.json   COCO json: images, annotations (polygon or RLE
    annotations/instances_val2017.json     segmentation, bbox xywh, iscrowd), 80 categories
    train2017/<12-digit id>.jpg
    val2017/<12-digit id>.jpg""",
    "kitti": """\
<root>/training/                   (data_object_image_2.zip + data_object_label_2.zip)
    image_2/<6-digit id>.png
    label_2/<6-digit id>.txt       one object per line, 15 space-separated fields:
                                   type truncated occluded alpha x1 y1 x2 y2 h w l x y z ry
                                   type in Car Van Truck Pedestrian Person_sitting Cyclist Tram
                                   Misc DontCare""",
    "svhn_detection": """\
<root>/                            (SVHN format 1: train.tar.gz, test.tar.gz, extra.tar.gz)
    {train,test,extra}/<n>.png     1.png, 2.png, ...
    {train,test,extra}/digitStruct.mat   MATLAB v7.3 (HDF5): digitStruct/name, digitStruct/bbox
                                   (object references; bbox fields height left top width label,
                                   label 10 = digit 0)""",
    "digit_scenes": """\
<root>/                            (written by relvit.detection.scenes.write_digit_scenes)
    train.json, val.json           COCO json (CocoDataset.save), image_root relative to the json
    train/<6-digit id>.png, val/<6-digit id>.png""",
}

VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor"]
KITTI_CLASSES = ["Car", "Van", "Truck", "Pedestrian", "Person_sitting", "Cyclist", "Tram", "Misc"]
KITTI_IGNORED = "DontCare"
SVHN_CLASSES = [str(d) for d in range(10)]  # category id d + 1 is digit d


# --- shared helpers --------------------------------------------------------------------------


# The classification readers' error helpers, with the detection layouts.
_error = partial(formats.layout_error, layouts=DETECTION_LAYOUT)
_check_split = partial(formats.check_split, layouts=DETECTION_LAYOUT)
_require_dir = partial(formats.require_dir, layouts=DETECTION_LAYOUT)
_require_file = partial(formats.require_file, layouts=DETECTION_LAYOUT)


def _categories(names: list[str]) -> list[dict]:
    return [{"id": i, "name": name} for i, name in enumerate(names, start=1)]


def _image_ids(stems: list[str]) -> list[int]:
    """The stems as integers when all are numeric, else 1-based positions in sorted order."""
    if all(s.isdigit() for s in stems):
        ids = [int(s) for s in stems]
        if len(set(ids)) == len(ids):
            return ids
    order = {s: i for i, s in enumerate(sorted(stems), start=1)}
    return [order[s] for s in stems]


def _image_size(key: str, path: Path) -> tuple[int, int]:
    """(width, height) from the image header."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except Exception as e:  # PIL raises several types for a broken file
        raise _error(key, path, f"not a readable image ({e!r})") from e


def _fit_box(key: str, where: str, box: tuple[float, float, float, float], width: int,
             height: int, clip_any: bool = False, drop_under: float | None = None
             ) -> list[float] | None:
    """[x, y, w, h] clipped to the image; empty or (beyond tolerance) outside is an error.
    With `drop_under`, None for a box within tolerance that is thinner than that once clipped
    (e.g. one lying on the image's edge)."""
    x, y, w, h = box
    if not (w > 0 and h > 0):
        raise _error(key, where, f"empty box [x, y, w, h] = {[x, y, w, h]} (w or h <= 0)")
    t = BOX_TOLERANCE
    refused = not clip_any and (x < -t or y < -t or x + w > width + t or y + h > height + t)
    x0, y0 = max(x, 0.0), max(y, 0.0)
    x1, y1 = min(x + w, float(width)), min(y + h, float(height))
    if drop_under is not None and not refused and min(x1 - x0, y1 - y0) < drop_under:
        return None
    if refused or x1 <= x0 or y1 <= y0:
        raise _error(key, where, f"box [x, y, w, h] = {[x, y, w, h]} lies outside the "
                                 f"{width}x{height} image")
    return [x0, y0, x1 - x0, y1 - y0]


def _box_annotation(ann_id: int, image_id: int, category_id: int, bbox: list[float],
                    crowd: bool = False) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": category_id,
            "bbox": [float(v) for v in bbox], "area": float(bbox[2] * bbox[3]),
            "iscrowd": int(crowd)}


def _sorted_by_id(images: list[dict], annotations: list[dict]) -> tuple[list[dict], list[dict]]:
    images = sorted(images, key=lambda img: img["id"])
    rank = {img["id"]: i for i, img in enumerate(images)}
    annotations = sorted(annotations, key=lambda a: (rank[a["image_id"]], a["id"]))
    return images, annotations


# --- VOC 2007 --------------------------------------------------------------------------------


def _xml_text(key: str, path: Path, node: ET.Element, tag: str, what: str) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise _error(key, path, f"malformed annotation: {what} has no <{tag}>")
    return child.text.strip()


def _xml_number(key: str, path: Path, node: ET.Element, tag: str, what: str) -> float:
    text = _xml_text(key, path, node, tag, what)
    try:
        return float(text)
    except ValueError:
        raise _error(key, path, f"malformed annotation: <{tag}> of {what} is {text!r}, "
                                "not a number") from None


def _voc_annotations(key: str, path: Path, keep_difficult: bool,
                     ) -> tuple[int, int, list[tuple[int, list[float], int]]]:
    """(width, height, [(category id, bbox xywh, difficult)]) of one VOC XML file."""
    try:
        tree = ET.parse(path)
    except ET.ParseError as e:
        line, column = e.position
        raise _error(key, f"{path}:{line}", f"malformed XML at line {line}, column {column} "
                                            f"({e})") from None
    root = tree.getroot()
    size = root.find("size")
    if size is None:
        raise _error(key, path, "malformed annotation: no <size>")
    width = int(_xml_number(key, path, size, "width", "<size>"))
    height = int(_xml_number(key, path, size, "height", "<size>"))
    if width <= 0 or height <= 0:
        raise _error(key, path, f"image size {width}x{height} in <size>")
    objects = []
    for k, obj in enumerate(root.findall("object"), start=1):
        what = f"<object> #{k}"
        name = _xml_text(key, path, obj, "name", what)
        if name not in VOC_CLASSES:
            raise _error(key, path, f"{what}: class {name!r} is not one of the 20 VOC classes")
        difficult_node = obj.find("difficult")
        difficult = 0
        if difficult_node is not None and difficult_node.text and difficult_node.text.strip():
            difficult = _xml_number(key, path, obj, "difficult", what)
            if difficult not in (0, 1):
                raise _error(key, path, f"{what}: <difficult> is {difficult:g}, expected 0|1")
        box = obj.find("bndbox")
        if box is None:
            raise _error(key, path, f"malformed annotation: {what} has no <bndbox>")
        xmin, ymin, xmax, ymax = (_xml_number(key, path, box, t, f"{what} <bndbox>")
                                  for t in ("xmin", "ymin", "xmax", "ymax"))
        # 1-based inclusive pixel coordinates -> 0-based top-left corner, width in pixels
        xywh = (xmin - 1.0, ymin - 1.0, xmax - xmin + 1.0, ymax - ymin + 1.0)
        bbox = _fit_box(key, f"{path} ({what})", xywh, width, height)
        if difficult and not keep_difficult:
            continue
        objects.append((VOC_CLASSES.index(name) + 1, bbox, 1 if difficult else 0))
    return width, height, objects


def read_voc2007(root: Path, split: str, keep_difficult: bool = True) -> CocoDataset:
    """PASCAL VOC 2007, split train | val | trainval | test.

    Categories 1..20 = `VOC_CLASSES` (the standard alphabetical order). VOC boxes are 1-based
    inclusive pixel coordinates: x = xmin - 1, y = ymin - 1, w = xmax - xmin + 1,
    h = ymax - ymin + 1. `difficult` objects: keep_difficult=True (default, as the original)
    makes them ordinary annotations (iscrowd 0); False drops them. Either way every annotation
    carries "difficult": 0|1 so that a VOC-style evaluation can still ignore them. Images left
    without objects stay (negatives).
    """
    key = "voc2007"
    _check_split(key, split, ("train", "val", "trainval", "test"))
    base = _require_dir(key, Path(root) / "VOCdevkit" / "VOC2007")
    list_file = base / "ImageSets" / "Main" / f"{split}.txt"
    lines = [ln.strip() for ln in formats.read_text(key, list_file, DETECTION_LAYOUT).splitlines()]
    stems = [ln for ln in lines if ln]
    if not stems:
        raise _error(key, list_file, "lists no image ids")
    if len(set(stems)) != len(stems):
        raise _error(key, list_file, "lists an image id twice")
    for n, stem in enumerate(lines, start=1):
        if stem and len(stem.split()) != 1:
            raise _error(key, f"{list_file}:{n}", f"line {stem!r} is not a single image id")
    ann_dir = _require_dir(key, base / "Annotations")
    jpg_dir = _require_dir(key, base / "JPEGImages")
    images, annotations = [], []
    for stem, image_id in sorted(zip(stems, _image_ids(stems)), key=lambda p: p[1]):
        _require_file(key, jpg_dir / f"{stem}.jpg")
        width, height, objects = _voc_annotations(
            key, _require_file(key, ann_dir / f"{stem}.xml"), keep_difficult)
        images.append({"id": image_id, "file_name": f"{stem}.jpg", "width": width,
                       "height": height})
        for category_id, bbox, difficult in objects:
            ann = _box_annotation(len(annotations) + 1, image_id, category_id, bbox)
            ann["difficult"] = difficult
            annotations.append(ann)
    ds = CocoDataset(images, annotations, _categories(VOC_CLASSES), jpg_dir)
    check(ds, where=base)
    return ds


# --- COCO 2017 -------------------------------------------------------------------------------


def _rle_counts(text: str) -> list[int] | None:
    """The run lengths of a compressed RLE's `counts` (pycocotools' `rleFrString`), or None
    if `text` is not one: pycocotools reads such a string without a word, decodes garbage from
    it or aborts the process."""
    counts: list[int] = []
    value = shift = 0
    for char in text:
        code = ord(char) - 48
        if not 0 <= code < 64:
            return None
        value |= (code & 0x1F) << shift
        shift += 5
        if code & 0x20:  # more 5-bit groups follow
            continue
        if code & 0x10:  # negative: sign-extend
            value -= 1 << shift
        if len(counts) > 2:  # from the third count on, a difference to the one two before
            value += counts[-2]
        counts.append(value)
        value = shift = 0
    return counts if shift == 0 else None


def _rle_fits(counts: object, height: int, width: int) -> bool:
    """Whether an RLE's `counts` (compressed str, or a list of run lengths) covers an
    height x width mask exactly, with no negative run."""
    runs = _rle_counts(counts) if isinstance(counts, str) else counts
    if not isinstance(runs, list) or not all(type(r) is int and r >= 0 for r in runs):
        return False
    return sum(runs) == height * width


def _rle_from_segmentation(key: str, path: Path, seg: Any, height: int, width: int,
                           ann_id: Any) -> dict:
    """Polygons / uncompressed RLE / compressed RLE -> compressed RLE with a str `counts`."""
    from pycocotools import mask as mask_utils

    if isinstance(seg, list):
        # polygons with fewer than 3 points have no area (and 4 numbers would be read as a box)
        polygons = [p for p in seg if isinstance(p, list) and len(p) >= 6]
        # pycocotools fails on a string without naming it, and on None takes all memory
        if not all(type(v) in NUMBER_TYPES for p in polygons for v in p):
            raise _error(key, path, f"annotation {ann_id}: a polygon holds a value that is not "
                                    "a number")
        if polygons:
            rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
        else:
            rle = mask_utils.encode(np.zeros((height, width), dtype=np.uint8, order="F"))
    elif isinstance(seg, dict) and "counts" in seg and "size" in seg:
        if list(seg["size"]) != [height, width]:
            raise _error(key, path, f"annotation {ann_id}: RLE size {seg['size']} differs from "
                                    f"its image's [h, w] = {[height, width]}")
        if not _rle_fits(seg["counts"], height, width):
            raise _error(key, path, f"annotation {ann_id}: its RLE's counts do not describe a "
                                    f"{height}x{width} mask")
        if isinstance(seg["counts"], list):
            rle = mask_utils.frPyObjects(seg, height, width)
        else:
            rle = {"size": [height, width], "counts": seg["counts"]}
    else:
        raise _error(key, path, f"annotation {ann_id}: segmentation is neither polygons nor RLE")
    counts = rle["counts"]
    return {"size": [height, width],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def read_coco2017(root: Path, split: str, drop_empty: bool | None = None) -> CocoDataset:
    """COCO 2017 instances, split train | val.

    All 80 categories are kept; the sparse COCO ids (1..90) are remapped to contiguous 1..80 in
    id order, each category keeping its original id as "coco_id" (and its "supercategory").
    Annotation ids, image ids and "area" (the segment area that COCOeval's area ranges use) are
    COCO's own. Polygon and uncompressed-RLE segmentations become compressed RLE (polygons of one
    object merged; polygons with fewer than 3 points dropped, an object left without any gets an
    empty mask). Annotations whose box has w or h < 1 are dropped. Crowd annotations stay with
    iscrowd=1: COCOeval ignores them and training must not use them as objects.
    drop_empty (default True for train, False for val): drop images without any non-crowd
    annotation, as torchvision's detection reference does for training (the reference tests
    before removing crowds, so it keeps crowd-only images with empty targets; here they go).
    """
    key = "coco2017"
    _check_split(key, split, ("train", "val"))
    if drop_empty is None:
        drop_empty = split == "train"
    root = _require_dir(key, Path(root))
    ann_file = _require_file(key, root / "annotations" / f"instances_{split}2017.json")
    image_dir = _require_dir(key, root / f"{split}2017")
    try:
        data = json.loads(ann_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _error(key, ann_file, f"not a readable json ({e})") from None
    if not isinstance(data, dict):
        raise _error(key, ann_file, "does not hold a json object")
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise _error(key, ann_file, f"lacks keys {missing}")

    for what, fields in (("categories", ("id", "name")),
                         ("images", ("id", "file_name", "width", "height")),
                         ("annotations", ("id", "bbox"))):
        _require_fields(key, ann_file, what, data[what], fields)
    for what, fields in (("categories", ("id",)), ("images", ("id", "width", "height")),
                         ("annotations", ("id",))):
        _require_integers(key, ann_file, what, data[what], fields)
    raw_categories = sorted(data["categories"], key=lambda c: c["id"])
    if len({c["id"] for c in raw_categories}) != len(raw_categories):
        raise _error(key, ann_file, "a category id is listed twice")
    remap = {c["id"]: i for i, c in enumerate(raw_categories, start=1)}
    categories = [{"id": remap[c["id"]], "name": c["name"], "coco_id": c["id"],
                   **({"supercategory": c["supercategory"]} if "supercategory" in c else {})}
                  for c in raw_categories]

    present = {p.name for p in image_dir.iterdir()}
    images = {}
    for img in data["images"]:
        if img["file_name"] not in present:
            raise _error(key, image_dir / img["file_name"], "image file missing")
        if img["id"] in images:
            raise _error(key, ann_file, f"image id {img['id']} listed twice")
        images[img["id"]] = {"id": img["id"], "file_name": img["file_name"],
                             "width": int(img["width"]), "height": int(img["height"])}

    annotations = []
    for ann in data["annotations"]:
        aid = ann.get("id")
        if not is_one_of(ann.get("image_id"), images):
            raise _error(key, ann_file, f"annotation {aid} points at unknown image "
                                        f"{ann.get('image_id')!r}")
        if not is_one_of(ann.get("category_id"), remap):
            raise _error(key, ann_file, f"annotation {aid}: category {ann.get('category_id')!r}"
                                        " is not one of the listed categories")
        x, y, w, h = _coco_box(key, ann_file, ann["bbox"], aid)
        if w < 0 or h < 0:  # corrupt, not a thin box
            raise _error(key, ann_file, f"annotation {aid}: bbox {ann['bbox']} has a negative "
                                        "width or height")
        if w < 1 or h < 1:
            continue
        img = images[ann["image_id"]]
        bbox = _fit_box(key, f"{ann_file} (annotation {aid})", (x, y, w, h),
                        img["width"], img["height"], drop_under=1.0)
        if bbox is None:  # thin once clipped to the image
            continue
        area, crowd = ann.get("area", w * h), ann.get("iscrowd", 0)
        if type(area) not in NUMBER_TYPES or crowd not in (0, 1):
            raise _error(key, ann_file, f"annotation {aid}: area {area!r} and iscrowd {crowd!r}"
                                        " are not a number and 0 or 1")
        out = {"id": aid, "image_id": ann["image_id"], "category_id": remap[ann["category_id"]],
               "bbox": bbox, "area": float(area), "iscrowd": int(crowd)}
        if "segmentation" in ann:
            out["segmentation"] = _rle_from_segmentation(
                key, ann_file, ann["segmentation"], img["height"], img["width"], aid)
        annotations.append(out)

    if drop_empty:
        keep = {a["image_id"] for a in annotations if not a["iscrowd"]}
        images = {i: img for i, img in images.items() if i in keep}
        annotations = [a for a in annotations if a["image_id"] in keep]
    image_list, annotations = _sorted_by_id(list(images.values()), annotations)
    ds = CocoDataset(image_list, annotations, categories, image_dir)
    check(ds, where=ann_file)
    return ds


# --- KITTI 2D object -------------------------------------------------------------------------


KITTI_VAL_FRACTION, KITTI_SPLIT_SEED = 0.25, 12345  # the paper's 75/25 train/val split


def kitti_split_ids(image_ids: list[int], split: str, val_fraction: float = KITTI_VAL_FRACTION,
                    seed: int = KITTI_SPLIT_SEED) -> list[int]:
    """Sorted ids of one split: a seeded permutation of the sorted ids; the first
    round(val_fraction * N) are val, the rest train (disjoint, duplicate-free)."""
    ids = np.asarray(sorted(image_ids), dtype=np.int64)
    if len(np.unique(ids)) != len(ids):
        raise ValueError("duplicate image ids")
    order = np.random.default_rng(seed).permutation(len(ids))
    n_val = round(val_fraction * len(ids))
    chosen = order[:n_val] if split == "val" else order[n_val:]
    return sorted(int(i) for i in ids[chosen])


def _require_fields(key: str, ann_file: Path, what: str, records: object,
                    fields: tuple[str, ...]) -> None:
    """Every entry of the json's list `what` is an object with `fields`, else an error naming
    the entry and the key."""
    if not isinstance(records, list):
        raise _error(key, ann_file, f'"{what}" holds a {type(records).__name__}, not a list')
    for n, record in enumerate(records):
        missing = [f for f in fields if f not in record] if isinstance(record, dict) else fields
        if missing:
            name = f" (id {record['id']!r})" if isinstance(record, dict) and "id" in record else ""
            raise _error(key, ann_file, f'"{what}" entry {n}{name} lacks {", ".join(missing)}')


def _require_integers(key: str, ann_file: Path, what: str, records: list[dict],
                      fields: tuple[str, ...]) -> None:
    """The `fields` of every entry of the json's list `what` are integers, else an error naming
    the entry, the key and the value."""
    for n, record in enumerate(records):
        for field in fields:
            value = record[field]
            if type(value) is not int:  # nor a bool
                raise _error(key, ann_file, f'"{what}" entry {n}: {field} {value!r} is not an '
                                            "integer")


def _coco_box(key: str, ann_file: Path, bbox: object, aid: object
              ) -> tuple[float, float, float, float]:
    """An annotation's [x, y, w, h], else an error naming the annotation and the value."""
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise _error(key, ann_file, f"annotation {aid}: bbox {bbox!r} is not 4 numbers "
                                    "[x, y, width, height]") from None
    return x, y, w, h


def _kitti_labels(key: str, path: Path, width: int, height: int,
                  ) -> list[tuple[int | None, list[float]]]:
    """(category id, [x, y, w, h]) of each object of a label file; category None: a DontCare
    region (clipped to the image; an empty one is left out)."""
    objects: list[tuple[int | None, list[float]]] = []
    for n, line in enumerate(formats.read_text(key, path, DETECTION_LAYOUT).splitlines(),
                             start=1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        fields = line.split()
        if len(fields) != 15:
            raise _error(key, where, f"malformed label line ({len(fields)} fields, expected 15: "
                                     "type truncated occluded alpha x1 y1 x2 y2 h w l x y z ry)")
        name = fields[0]
        try:
            x1, y1, x2, y2 = (float(v) for v in fields[4:8])
            [float(v) for v in fields[1:4] + fields[8:]]
        except ValueError:
            raise _error(key, where, f"malformed label line: non-numeric field in {line!r}"
                         ) from None
        if name == KITTI_IGNORED:
            try:
                objects.append((None, _fit_box(key, where, (x1, y1, x2 - x1, y2 - y1), width,
                                               height, clip_any=True)))
            except formats.DatasetLayoutError:
                pass  # an empty region ignores nothing
            continue
        if name not in KITTI_CLASSES:
            raise _error(key, where,
                         f"class {name!r} is not one of {KITTI_CLASSES + [KITTI_IGNORED]}")
        # KITTI boxes are 0-based pixel coordinates (left, top, right, bottom) as floats
        bbox = _fit_box(key, where, (x1, y1, x2 - x1, y2 - y1), width, height)
        objects.append((KITTI_CLASSES.index(name) + 1, bbox))
    return objects


def read_kitti(root: Path, split: str, val_fraction: float = KITTI_VAL_FRACTION,
               seed: int = KITTI_SPLIT_SEED) -> CocoDataset:
    """KITTI 2D object `training/` split into train | val (the test set has no labels).

    Categories 1..8 = Car, Van, Truck, Pedestrian, Person_sitting, Cyclist, Tram, Misc.
    DontCare boxes are no class (the original renamed Misc to DontCare and trained it as class 8,
    method spec Q29): they mark unlabelled regions, kept as one iscrowd annotation per category,
    so that training leaves them out and the evaluation ignores detections of any class there,
    as KITTI's benchmark does. Boxes: x = x1, y = y1,
    w = x2 - x1, h = y2 - y1 (KITTI's 0-based float coordinates). Split: sorted image ids,
    permuted with numpy default_rng(seed); the first round(val_fraction * N) are val, the rest
    train (the paper's 75/25; the original drew 1000 val indices with replacement, ~88/12).
    """
    key = "kitti"
    _check_split(key, split, ("train", "val"))
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), not {val_fraction}")
    base = _require_dir(key, Path(root) / "training")
    image_dir = _require_dir(key, base / "image_2")
    label_dir = _require_dir(key, base / "label_2")
    pngs = sorted(p for p in image_dir.iterdir() if p.suffix.lower() == ".png")
    if not pngs:
        raise _error(key, image_dir, "holds no .png images")
    stems = [p.stem for p in pngs]
    by_id = dict(zip(_image_ids(stems), pngs))
    images, annotations = [], []
    for image_id in kitti_split_ids(list(by_id), split, val_fraction, seed):
        png = by_id[image_id]
        width, height = _image_size(key, png)
        label_file = _require_file(key, label_dir / f"{png.stem}.txt")
        images.append({"id": image_id, "file_name": png.name, "width": width, "height": height})
        for category_id, bbox in _kitti_labels(key, label_file, width, height):
            for category in [category_id] if category_id else range(1, len(KITTI_CLASSES) + 1):
                annotations.append(_box_annotation(len(annotations) + 1, image_id, category,
                                                   bbox, crowd=category_id is None))
    ds = CocoDataset(images, annotations, _categories(KITTI_CLASSES), image_dir)
    check(ds, where=base)
    return ds


# --- SVHN format 1 (full numbers with digit boxes) -------------------------------------------


def _h5_values(key: str, path: Path, f: Any, dataset: Any, what: str) -> list[float]:
    """A digitStruct field: a scalar dataset (one digit) or references to scalars (several)."""
    import h5py

    if dataset.dtype == h5py.ref_dtype or dataset.dtype.kind == "O":
        values = []
        for ref in np.asarray(dataset).ravel():
            if not ref:
                raise _error(key, path, f"{what}: null object reference")
            values.append(float(np.asarray(f[ref]).ravel()[0]))
        return values
    return [float(v) for v in np.asarray(dataset).ravel()]


def _h5_string(key: str, path: Path, f: Any, ref: Any, what: str) -> str:
    if not ref:
        raise _error(key, path, f"{what}: null object reference")
    codes = np.asarray(f[ref]).ravel()
    try:
        return "".join(chr(int(c)) for c in codes)
    except (TypeError, ValueError):
        raise _error(key, path, f"{what}: not a MATLAB char array") from None


def read_svhn_detection(root: Path, split: str) -> CocoDataset:
    """SVHN format 1 (house numbers with per-digit boxes), split train | test | extra.

    digitStruct.mat is MATLAB v7.3 (HDF5): digitStruct/name and digitStruct/bbox hold object
    references, one per image; each bbox group has fields height, left, top, width, label, each a
    scalar dataset (one digit) or an array of references to scalars (several digits). Labels
    1..9 are digits 1..9 and 10 is digit 0; category id = digit + 1 (names "0".."9" in order,
    so label 10 -> id 1 "0", label d -> id d + 1). Boxes: x = left, y = top, w = width,
    h = height, as stored. SVHN boxes are known to cross the image border sometimes: they are
    clipped to the image; only a box wholly outside is an error.
    """
    import h5py

    key = "svhn_detection"
    _check_split(key, split, ("train", "test", "extra"))
    folder = _require_dir(key, Path(root) / split)
    mat = _require_file(key, folder / "digitStruct.mat")
    records = []
    try:
        f = h5py.File(mat, "r")
    except OSError as e:
        raise _error(key, mat, f"not an HDF5 (MATLAB v7.3) file ({e})") from None
    with f:
        if "digitStruct" not in f or "name" not in f["digitStruct"] or \
                "bbox" not in f["digitStruct"]:
            raise _error(key, mat, "lacks digitStruct/name or digitStruct/bbox")
        names = np.asarray(f["digitStruct"]["name"]).ravel()
        boxes = np.asarray(f["digitStruct"]["bbox"]).ravel()
        if len(names) != len(boxes):
            raise _error(key, mat, f"{len(names)} names but {len(boxes)} bbox entries")
        for i, (name_ref, box_ref) in enumerate(zip(names, boxes)):
            name = _h5_string(key, mat, f, name_ref, f"digitStruct/name[{i}]")
            if not box_ref:
                raise _error(key, mat, f"digitStruct/bbox[{i}]: null object reference")
            group = f[box_ref]
            fields = {}
            for field in ("height", "left", "top", "width", "label"):
                if field not in group:
                    raise _error(key, mat, f"digitStruct/bbox[{i}] ({name}) lacks {field!r}")
                fields[field] = _h5_values(key, mat, f, group[field],
                                           f"digitStruct/bbox[{i}].{field} ({name})")
            counts = {len(v) for v in fields.values()}
            if len(counts) != 1:
                raise _error(key, mat, f"digitStruct/bbox[{i}] ({name}): fields have different "
                                       f"lengths {[len(v) for v in fields.values()]}")
            records.append((name, fields))
    stems = [Path(name).stem for name, _ in records]
    if len(set(stems)) != len(stems):
        raise _error(key, mat, "an image name is listed twice")
    images, annotations = [], []
    for (name, fields), image_id in sorted(zip(records, _image_ids(stems)), key=lambda p: p[1]):
        png = _require_file(key, folder / name)
        width, height = _image_size(key, png)
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        for k in range(len(fields["label"])):
            label = fields["label"][k]
            if label not in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10):
                raise _error(key, mat, f"{name}: digit #{k + 1} has label {label:g}, "
                                       "expected 1..10 (10 = digit 0)")
            xywh = (fields["left"][k], fields["top"][k], fields["width"][k], fields["height"][k])
            bbox = _fit_box(key, f"{mat} ({name}, digit #{k + 1})", xywh, width, height,
                            clip_any=True)
            annotations.append(_box_annotation(len(annotations) + 1, image_id,
                                               int(label) % 10 + 1, bbox))
    ds = CocoDataset(images, annotations, _categories(SVHN_CLASSES), folder)
    check(ds, where=mat)
    return ds
