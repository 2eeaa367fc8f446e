"""`digit-scenes`: the embedded detection dataset (no download), in COCO format with masks.

Each scene is a black RGB canvas holding `min_digits`..`max_digits` real handwritten digits of
scikit-learn (8x8, values 0..16), each bilinearly upscaled to a random side (3/16 .. 1/2 of the
canvas: 12..32 px on 64), tinted with a random colour and pasted at a random place. A digit's
pixels are those whose upscaled intensity (value / 16) exceeds `MASK_THRESHOLD`; only these are
painted (colour x intensity), so the painted footprint is exactly the mask. A placement is
retried (at most `PLACEMENT_TRIES` times, then the digit is skipped) until its box has IoU <
`MAX_IOU` and intersection / smaller box < `MAX_COVER` with every earlier digit, so digits touch
or overlap a little but never hide each other. Later digits overwrite earlier ones: earlier masks
lose the overwritten pixels and an annotation with fewer than `MIN_VISIBLE_PIXELS` visible
pixels is dropped (its few pixels stay painted). Box = tight box of the visible mask (pixel i
covers [i, i + 1), as pycocotools' toBbox), area = visible pixel count, segmentation = its RLE.
Category id = digit + 1 (names "0".."9").

Train scenes use the training digits of `relvit.data.digits`' fixed stratified 80/20 split and val
scenes its test digits, so val digits are unseen. The two splits draw from independent streams
of `SeedSequence(seed)`, and scene i depends only on the draws before it, so changing n_train
changes neither the val scenes nor the first train scenes. Same arguments -> byte-identical
files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from relvit.atomic import cannot_write
from relvit.data.digit_source import digit_images, digit_split
from relvit.detection.coco import CocoDataset

CLASSES = [str(d) for d in range(10)]  # category id d + 1 is digit d
MASK_THRESHOLD = 0.25
MAX_IOU = 0.3
MAX_COVER = 0.5
PLACEMENT_TRIES = 50
MIN_VISIBLE_PIXELS = 8


def _digit_pools() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train": (images float [N, 8, 8] in [0, 1], digits [N]), "val": ...} (the fixed split
    of relvit.data.digits)."""
    pixels, labels = digit_images()
    images = pixels / 16.0
    train_idx, test_idx = digit_split()
    return {"train": (images[train_idx], labels[train_idx]),
            "val": (images[test_idx], labels[test_idx])}


def _bilinear(image: np.ndarray, side: int) -> np.ndarray:
    """[h, w] -> [side, side], bilinear with half-pixel centres (torch align_corners=False)."""

    def axis(n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.maximum((np.arange(side) + 0.5) * (n_in / side) - 0.5, 0.0)
        i0 = np.floor(src).astype(np.int64)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    r0, r1, fr = axis(image.shape[0])
    c0, c1, fc = axis(image.shape[1])
    top = image[r0][:, c0] * (1 - fc) + image[r0][:, c1] * fc
    bottom = image[r1][:, c0] * (1 - fc) + image[r1][:, c1] * fc
    return top * (1 - fr)[:, None] + bottom * fr[:, None]


def _tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) inclusive pixel bounds of a non-empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


def _overlap_ok(box: tuple[int, int, int, int], others: list[tuple[int, int, int, int]]) -> bool:
    x0, y0, x1, y1 = box
    area = (x1 - x0 + 1) * (y1 - y0 + 1)
    for a0, b0, a1, b1 in others:
        iw = min(x1, a1) - max(x0, a0) + 1
        ih = min(y1, b1) - max(y0, b0) + 1
        if iw <= 0 or ih <= 0:
            continue
        inter = iw * ih
        other = (a1 - a0 + 1) * (b1 - b0 + 1)
        if inter / (area + other - inter) >= MAX_IOU or inter / min(area, other) >= MAX_COVER:
            return False
    return True


def _scene(rng: np.random.Generator, pool: tuple[np.ndarray, np.ndarray], canvas: int,
           min_digits: int, max_digits: int) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """One canvas (uint8 [canvas, canvas, 3]) and its (digit, visible mask) objects."""
    images, labels = pool
    lo = max(8, round(canvas * 3 / 16))
    hi = max(lo, canvas // 2)
    pixels = np.zeros((canvas, canvas, 3), dtype=np.uint8)
    objects: list[tuple[int, np.ndarray]] = []
    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(int(rng.integers(min_digits, max_digits + 1))):
        index = int(rng.integers(len(images)))
        side = int(rng.integers(lo, hi + 1))
        intensity = _bilinear(images[index], side)
        digit_mask = intensity > MASK_THRESHOLD
        colour = rng.uniform(0.3, 1.0, size=3)
        colour[int(rng.integers(3))] = 1.0
        dx0, dy0, dx1, dy1 = _tight_box(digit_mask)
        for _try in range(PLACEMENT_TRIES):
            left = int(rng.integers(0, canvas - side + 1))
            top = int(rng.integers(0, canvas - side + 1))
            box = (left + dx0, top + dy0, left + dx1, top + dy1)
            if _overlap_ok(box, boxes):
                break
        else:
            continue  # no room: this scene gets one digit fewer
        mask = np.zeros((canvas, canvas), dtype=bool)
        mask[top:top + side, left:left + side] = digit_mask
        values = np.rint(intensity[digit_mask][:, None] * colour[None, :] * 255.0)
        pixels[top:top + side, left:left + side][digit_mask] = values.astype(np.uint8)
        for _digit, earlier in objects:
            earlier &= ~mask  # overwritten pixels are no longer visible
        objects.append((int(labels[index]), mask))
        boxes.append(box)
    return pixels, [(d, m) for d, m in objects if m.sum() >= MIN_VISIBLE_PIXELS]


def _encode(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def write_digit_scenes(root: Path, n_train: int, n_val: int, canvas: int = 64, seed: int = 0,
                       min_digits: int = 1, max_digits: int = 4) -> dict[str, Path]:
    """Write root/{train,val}/<6-digit id>.png and root/{train,val}.json; return the json paths.

    Image ids are 1..n per split, annotation ids 1..M per split in image order.
    """
    from PIL import Image

    if n_train < 0 or n_val < 0:
        raise ValueError(f"scene counts must be >= 0, not {n_train}, {n_val}")
    if not 1 <= min_digits <= max_digits:
        raise ValueError(f"need 1 <= min_digits <= max_digits, not {min_digits}, {max_digits}")
    if canvas < 16:
        raise ValueError(f"canvas must be at least 16 px, not {canvas}")
    root = Path(root)
    pools = _digit_pools()
    streams = np.random.SeedSequence(seed).spawn(2)
    out: dict[str, Path] = {}
    for (split, n), stream in zip((("train", n_train), ("val", n_val)), streams):
        rng = np.random.default_rng(stream)
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for image_id in range(1, n + 1):
            pixels, objects = _scene(rng, pools[split], canvas, min_digits, max_digits)
            name = f"{image_id:06d}.png"
            try:
                Image.fromarray(pixels, mode="RGB").save(folder / name, format="PNG")
            except OSError as err:  # a full disk: PIL's error names no file
                raise cannot_write(folder / name, err, kept=False) from err
            images.append({"id": image_id, "file_name": name, "width": canvas,
                           "height": canvas})
            for digit, mask in objects:
                x0, y0, x1, y1 = _tight_box(mask)
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": digit + 1,
                    "bbox": [float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)],
                    "area": float(mask.sum()), "iscrowd": 0, "segmentation": _encode(mask),
                })
        ds = CocoDataset(images, annotations,
                         [{"id": i + 1, "name": c} for i, c in enumerate(CLASSES)], folder)
        out[split] = root / f"{split}.json"
        ds.save(out[split])
    return out
