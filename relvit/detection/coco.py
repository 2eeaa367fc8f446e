"""One in-memory representation for every detection dataset: COCO format.

Every reader of `relvit.detection.datasets` and the embedded `digit-scenes` produce a
`CocoDataset`, so training, evaluation (pycocotools `COCOeval`) and reporting see one format:

* images       {"id": int, "file_name": str (relative to image_root), "width": int, "height": int}
* annotations  {"id": int, "image_id": int, "category_id": int (1..K), "bbox": [x, y, w, h]
                (float pixels, (x, y) = top-left corner of the top-left pixel, pixel i covers
                [i, i + 1)), "area": float, "iscrowd": 0|1, optional "segmentation": COCO RLE
                {"size": [h, w], "counts": str}}
* categories   {"id": 1..K (contiguous), "name": str, ...}

Crowd annotations (iscrowd=1) are regions that COCOeval ignores; they must not be trained on.
Category ids are contiguous 1..K (0 is the R-CNN background), unlike raw COCO's sparse 1..90.
`save` writes the COCO json plus an "image_root" key relative to the json file (pycocotools
ignores unknown keys, so `pycocotools.coco.COCO(path)` reads the file as is).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from relvit.atomic import atomic_write_text
from relvit.data.formats import DatasetLayoutError

BOX_TOLERANCE = 1.0  # pixels a box may stick out of its image before it is an error
NUMBER_TYPES = (int, float)  # json's numbers, as `json.loads` gives them (a bool is neither)


@dataclass
class CocoDataset:
    """A detection dataset in COCO format; image files live under image_root."""

    images: list[dict]
    annotations: list[dict]
    categories: list[dict]
    image_root: Path = field(default_factory=Path)

    def __post_init__(self) -> None:
        self.image_root = Path(self.image_root)

    @property
    def has_masks(self) -> bool:
        """Every non-crowd annotation has a segmentation (False when there is none at all)."""
        plain = [a for a in self.annotations if not a.get("iscrowd", 0)]
        return bool(plain) and all(a.get("segmentation") is not None for a in plain)

    @property
    def num_classes(self) -> int:
        """K, the number of object categories (ids 1..K), without background."""
        return len(self.categories)

    @property
    def class_names(self) -> list[str]:
        """Category names in id order (index k-1 is category id k)."""
        return [c["name"] for c in sorted(self.categories, key=lambda c: c["id"])]

    def annotations_by_image(self) -> dict[int, list[dict]]:
        """image id -> its annotations (in annotation order); every image has an entry."""
        out: dict[int, list[dict]] = {img["id"]: [] for img in self.images}
        for ann in self.annotations:
            out.setdefault(ann["image_id"], []).append(ann)
        return out

    def to_dict(self) -> dict:
        """The COCO json dict (images, annotations, categories)."""
        return {"images": self.images, "annotations": self.annotations,
                "categories": self.categories}

    def save(self, path: Path) -> None:
        """Json with "image_root" stored relative to the json file's folder."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        root = Path(os.path.relpath(self.image_root.resolve(), path.parent.resolve())).as_posix()
        text = json.dumps({**self.to_dict(), "image_root": root}, separators=(",", ":"))
        atomic_write_text(text, path)  # a killed write leaves no truncated json

    @classmethod
    def load(cls, path: Path, image_root: Path | None = None) -> CocoDataset:
        """Read a json written by `save` (or any COCO json with contiguous ids and `image_root`).

        image_root: overrides the stored one; without either, the json's folder. The result is
        validated with `check`.
        """
        path = Path(path)
        if not path.is_file():
            raise DatasetLayoutError(f"{path}: COCO json missing")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DatasetLayoutError(f"{path}: not a readable json ({e})") from e
        if not isinstance(data, dict):
            raise DatasetLayoutError(f"{path}: holds a {type(data).__name__}, expected a dict")
        missing = [k for k in ("images", "annotations", "categories") if k not in data]
        if missing:
            raise DatasetLayoutError(f"{path}: COCO json lacks keys {missing}")
        if image_root is None:
            image_root = path.parent / data.get("image_root", ".")
        ds = cls(images=data["images"], annotations=data["annotations"],
                 categories=data["categories"], image_root=Path(image_root))
        check(ds, where=path)
        return ds

    def subset(self, image_ids: Iterable[int]) -> CocoDataset:
        """The given images (kept in this dataset's order) with their annotations; same categories.

        An id that is not an image of this dataset is an error.
        """
        wanted = {int(i) for i in image_ids}
        known = {img["id"] for img in self.images}
        unknown = sorted(wanted - known)
        if unknown:
            raise ValueError(f"image ids not in the dataset: {unknown[:10]}"
                             f"{' ...' if len(unknown) > 10 else ''}")
        return CocoDataset(
            images=[img for img in self.images if img["id"] in wanted],
            annotations=[a for a in self.annotations if a["image_id"] in wanted],
            categories=list(self.categories),
            image_root=self.image_root,
        )


def _fail(where: str, problem: str) -> DatasetLayoutError:
    return DatasetLayoutError(f"{where}: {problem}")


def is_one_of(value: object, ids: set | dict) -> bool:
    """Whether `value` is one of `ids`; a value that cannot be one (a list) is not."""
    try:
        return value in ids
    except TypeError:  # unhashable
        return False


def _unique_ids(where: str, rows: list[dict], what: str) -> set:
    seen: set = set()
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or "id" not in row:
            raise _fail(where, f"{what} #{i} has no 'id'")
        if isinstance(row["id"], bool) or not isinstance(row["id"], (int, str)):
            raise _fail(where, f"{what} #{i} has id {row['id']!r}, not an integer or string")
        if row["id"] in seen:
            raise _fail(where, f"duplicate {what} id {row['id']!r}")
        seen.add(row["id"])
    return seen


def check(ds: CocoDataset, where: Path | str | None = None) -> None:
    """Raise `DatasetLayoutError` unless `ds` is a consistent COCO dataset.

    Checked: unique image / annotation / category ids; required fields; every annotation on a
    known image and category; boxes with w > 0, h > 0, at most 1 px outside their image;
    category ids exactly 1..K; iscrowd in {0, 1}; an RLE's size equal to its image's [h, w].
    """
    where = str(where) if where is not None else f"COCO dataset at {ds.image_root}"
    image_ids = _unique_ids(where, ds.images, "image")
    _unique_ids(where, ds.annotations, "annotation")
    category_ids = _unique_ids(where, ds.categories, "category")
    if sorted(category_ids) != list(range(1, len(category_ids) + 1)):
        raise _fail(where, f"category ids {sorted(category_ids)} are not contiguous 1..K")
    sizes: dict[int, tuple[int, int]] = {}
    for img in ds.images:
        missing = [k for k in ("file_name", "width", "height") if k not in img]
        if missing:
            raise _fail(where, f"image {img['id']} lacks {missing}")
        width, height = img["width"], img["height"]
        if type(width) not in NUMBER_TYPES or type(height) not in NUMBER_TYPES:
            raise _fail(where, f"image {img['id']} has size {width!r} x {height!r}, not numbers")
        if width <= 0 or height <= 0:
            raise _fail(where, f"image {img['id']} has size {img['width']}x{img['height']}")
        sizes[img["id"]] = (img["width"], img["height"])
    masked = [a for a in ds.annotations
              if not a.get("iscrowd") and a.get("segmentation") is not None]
    for ann in ds.annotations:
        aid = ann["id"]
        missing = [k for k in ("image_id", "category_id", "bbox", "area", "iscrowd")
                   if k not in ann]
        if missing:
            raise _fail(where, f"annotation {aid} lacks {missing}")
        if not is_one_of(ann["image_id"], image_ids):
            raise _fail(where, f"annotation {aid} points at unknown image {ann['image_id']!r}")
        if not is_one_of(ann["category_id"], category_ids):
            raise _fail(where, f"annotation {aid} points at unknown category "
                               f"{ann['category_id']!r}")
        if ann["iscrowd"] not in (0, 1):
            raise _fail(where, f"annotation {aid} has iscrowd {ann['iscrowd']!r}, expected 0|1")
        if type(ann["area"]) not in NUMBER_TYPES:
            raise _fail(where, f"annotation {aid} has area {ann['area']!r}, not a number")
        bbox = ann["bbox"]
        if (not isinstance(bbox, (list, tuple)) or len(bbox) != 4
                or not all(type(v) in NUMBER_TYPES for v in bbox)):
            raise _fail(where, f"annotation {aid} has bbox {bbox!r}, expected 4 numbers "
                               "[x, y, w, h]")
        x, y, w, h = bbox
        if not (w > 0 and h > 0):
            raise _fail(where, f"annotation {aid} has an empty box {list(bbox)} (w or h <= 0)")
        width, height = sizes[ann["image_id"]]
        t = BOX_TOLERANCE
        if x < -t or y < -t or x + w > width + t or y + h > height + t:
            raise _fail(where, f"annotation {aid} box {list(bbox)} lies outside its image "
                               f"{ann['image_id']} ({width}x{height}) by more than {t:g} px")
        seg = ann.get("segmentation")
        if seg is not None:
            if not isinstance(seg, dict) or "size" not in seg or "counts" not in seg:
                raise _fail(where, f"annotation {aid} segmentation is not an RLE "
                                   "{'size': [h, w], 'counts': str}")
            if list(seg["size"]) != [height, width]:
                raise _fail(where, f"annotation {aid} RLE size {list(seg['size'])} differs "
                                   f"from its image's [h, w] = {[height, width]}")
        elif masked and not ann["iscrowd"]:  # has_masks: masks are all or nothing
            raise _fail(where, f"annotation {aid} has no segmentation, while {len(masked)} "
                               "others have one: every object needs its mask, or none")
