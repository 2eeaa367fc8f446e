"""Readers for the classification datasets' real on-disk layouts, one reader per layout.

Each reader checks the files it needs and raises `DatasetLayoutError` naming the offending path
(or value) together with `EXPECTED_LAYOUT[key]`. Array datasets (CIFAR, SVHN) are decoded into an
`ArraySplit`; image-file datasets return a `FileSplit` of paths, decoded later by `decode_image`.
Labels are always int64 and 0-based. File lists are sorted so that runs are deterministic (the
original code listed folders with unsorted `os.listdir`, whose order depends on the file system).
"""

from __future__ import annotations

import csv
import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

if TYPE_CHECKING:
    import PIL.Image

# torchvision's ImageFolder's (IMG_EXTENSIONS), compared without case
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff",
                              ".webp"})

EXPECTED_LAYOUT: dict[str, str] = {
    "cifar10": """\
<root>/cifar-10-batches-py/        (cifar-10-python.tar.gz, extracted)
    data_batch_1 ... data_batch_5  training pickles: b"data" uint8 [N, 3072], b"labels"
    test_batch                     test pickle, same keys
    batches.meta                   b"label_names" (10 names)""",
    "cifar100": """\
<root>/cifar-100-python/           (cifar-100-python.tar.gz, extracted)
    train                          pickle: b"data" uint8 [N, 3072], b"fine_labels"
    test                           pickle, same keys
    meta                           b"fine_label_names" (100 names)""",
    "svhn": """\
<root>/                            (format 2, cropped digits)
    train_32x32.mat                X uint8 [32, 32, 3, N], y [N, 1] in 1..10 (10 is digit 0)
    test_32x32.mat                 same variables""",
    "flowers102": """\
<root>/                            (Oxford 102 Flowers)
    jpg/image_00001.jpg ... jpg/image_08189.jpg   (102flowers.tgz, extracted)
    imagelabels.mat                'labels' [1, 8189] in 1..102
    setid.mat                      'trnid', 'valid', 'tstid': 1-based image ids""",
    "tiny_imagenet": """\
<root>/tiny-imagenet-200/          (tiny-imagenet-200.zip, extracted)
    wnids.txt                      one wnid per line (class order)
    words.txt                      wnid<TAB>names (not read)
    train/<wnid>/images/*.JPEG     one folder per wnid of wnids.txt
    val/images/*.JPEG
    val/val_annotations.txt        file<TAB>wnid<TAB>x<TAB>y<TAB>w<TAB>h, one line per val image""",
    "imagenet100": """\
<root>/                            (Kaggle "ambityga/imagenet100", extracted)
    Labels.json                    {"n01440764": "tench, Tinca tinca", ...}; key order = classes
    train.X1/<wnid>/*.JPEG         the training classes, spread over the four folders
    train.X2/<wnid>/*.JPEG
    train.X3/<wnid>/*.JPEG
    train.X4/<wnid>/*.JPEG
    val.X/<wnid>/*.JPEG            one folder per class""",
    "imagenet": """\
<root>/                            (Kaggle "imagenet-object-localization-challenge", extracted)
    LOC_synset_mapping.txt         "n01440764 tench, Tinca tinca" per line; line order = classes
    LOC_val_solution.csv           header ImageId,PredictionString; first token = wnid
    ILSVRC/Data/CLS-LOC/train/<wnid>/*.JPEG
    ILSVRC/Data/CLS-LOC/val/ILSVRC2012_val_00000001.JPEG ...""",
    "imagefolder": """\
<root>/
    train/<class>/*.jpg|.jpeg|.png|.ppm|.bmp|.pgm|.tif|.tiff|.webp   (torchvision's suffixes)
                                   classes = sorted folder names of train/
    val/<class>/*                  val classes: a subset of train's""",
}


class DatasetLayoutError(ValueError):
    """The files on disk are not what the dataset needs.

    The message names the path (or value) and what was expected.
    """


@dataclass(frozen=True)
class ArraySplit:
    """A dataset shipped as arrays: uint8 images [N, H, W, 3], int64 0-based labels [N]."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]


@dataclass(frozen=True)
class FileSplit:
    """A dataset shipped as image files: paths [N], int64 0-based labels [N]."""

    paths: list[Path]
    labels: np.ndarray
    classes: list[str]


# --- shared checks ---------------------------------------------------------------------------


def layout_error(key: str, path: Path | str, problem: str,
                 layouts: dict[str, str] = EXPECTED_LAYOUT) -> DatasetLayoutError:
    """An error naming the path and the problem, followed by the dataset's expected layout."""
    return DatasetLayoutError(f"{path}: {problem}\nexpected layout for {key}:\n{layouts[key]}")


def check_split(key: str, split: str, allowed: tuple[str, ...],
                layouts: dict[str, str] = EXPECTED_LAYOUT) -> None:
    """DatasetLayoutError unless `split` is one of dataset `key`'s `allowed` splits."""
    if split not in allowed:
        raise DatasetLayoutError(f"split {split!r} is not allowed for {key}; allowed: "
                                 f"{', '.join(allowed)}\nexpected layout for {key}:\n"
                                 f"{layouts[key]}")


def require_dir(key: str, path: Path, layouts: dict[str, str] = EXPECTED_LAYOUT) -> Path:
    if not path.is_dir():
        raise layout_error(key, path, "folder missing", layouts)
    return path


def require_file(key: str, path: Path, layouts: dict[str, str] = EXPECTED_LAYOUT) -> Path:
    if not path.is_file():
        raise layout_error(key, path, "file missing", layouts)
    return path


def _check_range(key: str, path: Path, values: np.ndarray, low: int, high: int, what: str) -> None:
    """Every value in low..high, else an error naming the first value outside."""
    bad = np.flatnonzero((values < low) | (values > high))
    if bad.size:
        i = int(bad[0])
        raise layout_error(key, path, f"{what} {values[i]} at index {i} is outside {low}..{high}")


def _as_ints(key: str, path: Path, values: Any, what: str) -> np.ndarray:
    """A vector ([N], [N, 1] or [1, N], as MATLAB stores one) as flat int64; another shape or
    non-integer values are an error (a [N, 2] array had been read as 2N values)."""
    array = np.asarray(values)
    if array.ndim > 2 or (array.ndim == 2 and min(array.shape) != 1):
        raise layout_error(key, path, f"{what} are {list(array.shape)}, expected a vector")
    array = array.ravel()
    if array.dtype.kind not in "iuf" or (array.dtype.kind == "f" and
                                           not np.array_equal(array, np.round(array))):
        raise layout_error(key, path, f"{what} are not integers (dtype {array.dtype})")
    return array.astype(np.int64)


def is_image_file(path: Path) -> bool:
    """What the readers take for an image: a file name with an image suffix, not hidden."""
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def _images_in(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted (the original used unsorted os.listdir); a link
    to no file is an error (it had been left out without a word). One directory listing: only
    links cost a stat (ImageNet's training split is 1.28M files)."""
    images = []
    with os.scandir(folder) as entries:
        for entry in entries:
            path = Path(entry.path)
            if not is_image_file(path):
                continue
            if entry.is_file():  # a link: its target's
                images.append(path)
            elif entry.is_symlink() and not path.exists():
                raise DatasetLayoutError(f"{path}: a link to {os.readlink(path)}, which does "
                                         "not exist")
    return sorted(images)


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _unique(key: str, path: Path, names: list[str], what: str) -> list[str]:
    if not names:
        raise layout_error(key, path, f"no {what} listed")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise layout_error(key, path, f"{what} {name!r} listed twice")
        seen.add(name)
    return names


def _scan_class_dirs(key: str, parents: Iterable[Path], classes: list[str],
                     ) -> dict[str, list[Path]]:
    """Class folders under each parent; a folder that is not a class is an error."""
    known = set(classes)
    found: dict[str, list[Path]] = {}
    for parent in parents:
        for folder in _subdirs(require_dir(key, parent)):
            if folder.name not in known:
                raise layout_error(key, folder, f"folder {folder.name!r} is not one of the classes")
            found.setdefault(folder.name, []).append(folder)
    return found


def _files_by_class(key: str, found: dict[str, list[Path]], classes: list[str], where: str,
                    image_subdir: str = "", missing_ok: bool = False,
                    ) -> tuple[list[Path], np.ndarray]:
    """Images of each class, in class order and sorted within a class; none is an error."""
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        if name not in found:
            if missing_ok:
                continue
            raise layout_error(key, f"{where}/{name}", "class folder missing")
        files: list[Path] = []
        for folder in found[name]:
            files += _images_in(require_dir(key, folder / image_subdir))
        if not files:
            raise layout_error(key, found[name][0] / image_subdir, "class folder holds no images")
        paths += sorted(files)
        labels += [label] * len(files)
    return paths, np.asarray(labels, dtype=np.int64)


def read_text(key: str, path: Path, layouts: dict[str, str] = EXPECTED_LAYOUT) -> str:
    """A UTF-8 text file of dataset `key`, else an error naming it."""
    try:
        return require_file(key, path, layouts).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise layout_error(key, path, f"not UTF-8 text ({e})", layouts) from None


def _read_lines(key: str, path: Path) -> list[str]:
    """Non-empty stripped lines of a text file."""
    return [line.strip() for line in read_text(key, path).splitlines() if line.strip()]


# --- array datasets --------------------------------------------------------------------------


def _load_pickle(key: str, path: Path, keys: tuple[bytes, ...]) -> dict:
    """A CIFAR pickle, loaded with encoding="bytes" as the official page says."""
    require_file(key, path)
    try:
        with path.open("rb") as f:
            obj = pickle.load(f, encoding="bytes")
    except Exception as e:  # a corrupt pickle can raise almost anything
        raise layout_error(key, path, f"not a readable pickle ({e!r})") from e
    if not isinstance(obj, dict):
        raise layout_error(key, path, f"pickle holds a {type(obj).__name__}, expected a dict")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise layout_error(key, path, f"pickle lacks keys {missing}")
    return obj


def _cifar_batch(key: str, path: Path, label_key: bytes, num_classes: int,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """One batch: [N, 3072] rows of R, G, B planes (row-major) -> uint8 [N, 32, 32, 3]."""
    batch = _load_pickle(key, path, (b"data", label_key))
    data = np.asarray(batch[b"data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise layout_error(key, path,
                     f"b'data' is {data.dtype} {list(data.shape)}, expected uint8 [N, 3072]")
    labels = _as_ints(key, path, batch[label_key], f"{label_key!r}")
    if len(labels) != len(data):
        raise layout_error(key, path, f"{len(data)} images but {len(labels)} labels")
    _check_range(key, path, labels, 0, num_classes - 1, "label")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def read_cifar(root: Path, num_classes: int, split: str) -> ArraySplit:
    """CIFAR-10 or CIFAR-100 (fine labels) from the official python pickles; split train|test."""
    if num_classes not in (10, 100):
        raise DatasetLayoutError(f"CIFAR has 10 or 100 classes, not {num_classes}")
    key = f"cifar{num_classes}"
    check_split(key, split, ("train", "test"))
    root = require_dir(key, Path(root))
    if num_classes == 10:
        folder = require_dir(key, root / "cifar-10-batches-py")
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        meta_file, names_key, label_key = "batches.meta", b"label_names", b"labels"
    else:
        folder = require_dir(key, root / "cifar-100-python")
        files = [split]
        meta_file, names_key, label_key = "meta", b"fine_label_names", b"fine_labels"
    meta = _load_pickle(key, folder / meta_file, (names_key,))
    if not isinstance(meta[names_key], (list, tuple)):
        raise layout_error(key, folder / meta_file, f"{names_key!r} holds a "
                                                    f"{type(meta[names_key]).__name__}, not a list")
    classes = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in meta[names_key]]
    if len(classes) != num_classes:
        raise layout_error(key, folder / meta_file, f"{len(classes)} class names, expected {num_classes}")
    for name in files:  # all files present before decoding any
        require_file(key, folder / name)
    batches = [_cifar_batch(key, folder / name, label_key, num_classes) for name in files]
    images = np.ascontiguousarray(np.concatenate([b[0] for b in batches]))
    labels = np.concatenate([b[1] for b in batches])
    return ArraySplit(images=images, labels=labels, classes=classes)


def _loadmat(key: str, path: Path, variables: tuple[str, ...]) -> dict:
    """A MATLAB (v5) file holding `variables`, via scipy.io.loadmat."""
    require_file(key, path)
    try:
        from scipy.io import loadmat
    except ImportError as e:
        raise ImportError(f"reading {path} needs scipy (pip install scipy)") from e
    try:
        mat = loadmat(path)
    except Exception as e:  # scipy raises several kinds for a broken file
        raise layout_error(key, path, f"not a readable MATLAB file ({e!r})") from e
    missing = [v for v in variables if v not in mat]
    if missing:
        raise layout_error(key, path, f"lacks variables {missing}")
    return mat


def read_svhn(root: Path, split: str) -> ArraySplit:
    """SVHN format 2 (32x32 crops): X [32, 32, 3, N] -> [N, 32, 32, 3]; label 10 -> digit 0."""
    key = "svhn"
    check_split(key, split, ("train", "test"))
    path = require_dir(key, Path(root)) / f"{split}_32x32.mat"
    mat = _loadmat(key, path, ("X", "y"))
    x = np.asarray(mat["X"])
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise layout_error(key, path, f"X is {x.dtype} {list(x.shape)}, expected uint8 [32, 32, 3, N]")
    y = _as_ints(key, path, mat["y"], "y")
    if len(y) != x.shape[3]:
        raise layout_error(key, path, f"X holds {x.shape[3]} images but y holds {len(y)} labels")
    _check_range(key, path, y, 1, 10, "y")
    images = np.ascontiguousarray(x.transpose(3, 0, 1, 2))
    return ArraySplit(images=images, labels=y % 10, classes=[str(d) for d in range(10)])


# --- image-file datasets ---------------------------------------------------------------------

FLOWERS_SPLIT_IDS = {"train": "trnid", "val": "valid", "test": "tstid"}


def read_flowers102(root: Path, split: str) -> FileSplit:
    """Oxford 102 Flowers: ids of `split` from setid.mat (1-based), labels 1..102 -> 0..101."""
    key = "flowers102"
    check_split(key, split, tuple(FLOWERS_SPLIT_IDS))
    root = require_dir(key, Path(root))
    images_dir = require_dir(key, root / "jpg")
    labels_path, setid_path = root / "imagelabels.mat", root / "setid.mat"
    all_labels = _as_ints(key, labels_path, _loadmat(key, labels_path, ("labels",))["labels"],
                          "labels")
    _check_range(key, labels_path, all_labels, 1, 102, "label")
    setid = _loadmat(key, setid_path, tuple(FLOWERS_SPLIT_IDS.values()))
    split_ids = {name: _as_ints(key, setid_path, setid[name], f"{name} ids")
                 for name in FLOWERS_SPLIT_IDS.values()}
    variable = FLOWERS_SPLIT_IDS[split]
    _check_range(key, setid_path, split_ids[variable], 1, len(all_labels), f"{variable} image id")
    ids = np.sort(split_ids[variable])
    if (ids[1:] == ids[:-1]).any():
        raise layout_error(key, setid_path, f"{variable} lists image id "
                                            f"{ids[1:][ids[1:] == ids[:-1]][0]} twice")
    for other, other_ids in split_ids.items():
        shared = np.intersect1d(ids, other_ids) if other != variable else []
        if len(shared):
            raise layout_error(key, setid_path, f"image id {shared[0]} is in both {variable} "
                                                f"and {other}")
    paths = [images_dir / f"image_{i:05d}.jpg" for i in ids]
    for path in paths:
        require_file(key, path)
    # the official files have no class names: classes are the label numbers "1".."102"
    return FileSplit(paths=paths, labels=all_labels[ids - 1] - 1,
                     classes=[str(c) for c in range(1, 103)])


def _tiny_val(key: str, base: Path, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    """Tiny-ImageNet val: val/images/*.JPEG labelled by val/val_annotations.txt."""
    images_dir = require_dir(key, base / "val" / "images")
    annotations = base / "val" / "val_annotations.txt"
    index = {c: i for i, c in enumerate(classes)}
    wnid_of: dict[str, str] = {}
    for n, line in enumerate(_read_lines(key, annotations), start=1):
        fields = line.split("\t")
        if len(fields) < 2:
            raise layout_error(key, annotations, f"line {n} is not file<TAB>wnid<TAB>x<TAB>y<TAB>w<TAB>h")
        name, wnid = fields[0], fields[1]
        if wnid not in index:
            raise layout_error(key, annotations, f"line {n}: {name} has wnid {wnid!r}, not in wnids.txt")
        if name in wnid_of:
            raise layout_error(key, annotations, f"line {n}: {name} annotated twice")
        wnid_of[name] = wnid
    paths = _images_in(images_dir)
    for path in paths:
        if path.name not in wnid_of:
            raise layout_error(key, path, f"val image not listed in {annotations}")
    on_disk = {p.name for p in paths}
    for name in wnid_of:
        if name not in on_disk:
            raise layout_error(key, images_dir / name, f"val image listed in {annotations} is missing")
    return paths, np.asarray([index[wnid_of[p.name]] for p in paths], dtype=np.int64)


def read_tiny_imagenet(root: Path, split: str) -> FileSplit:
    """Tiny-ImageNet-200 (cs231n zip); classes = wnids in wnids.txt order; split train|val."""
    key = "tiny_imagenet"
    check_split(key, split, ("train", "val"))
    base = require_dir(key, require_dir(key, Path(root)) / "tiny-imagenet-200")
    wnids_path = base / "wnids.txt"
    classes = _unique(key, wnids_path, _read_lines(key, wnids_path), "wnid")
    if split == "train":
        found = _scan_class_dirs(key, [base / "train"], classes)
        paths, labels = _files_by_class(key, found, classes, str(base / "train"),
                                        image_subdir="images")
    else:
        paths, labels = _tiny_val(key, base, classes)
    return FileSplit(paths=paths, labels=labels, classes=classes)


def read_imagenet100(root: Path, split: str) -> FileSplit:
    """ImageNet-100 from Kaggle (ambityga): train.X1..X4 | val.X; classes in Labels.json order."""
    key = "imagenet100"
    check_split(key, split, ("train", "val"))
    root = require_dir(key, Path(root))
    labels_path = require_file(key, root / "Labels.json")
    try:
        mapping = json.loads(labels_path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise layout_error(key, labels_path, f"not valid JSON ({e})") from e
    if not isinstance(mapping, dict) or not mapping:
        raise layout_error(key, labels_path, "expected a non-empty object {wnid: name}")
    classes = list(mapping)  # JSON object order, as the original's json.load
    if split == "train":
        parents = [root / f"train.X{i}" for i in range(1, 5)]
        where = str(root / "train.X1..train.X4")
    else:
        parents, where = [root / "val.X"], str(root / "val.X")
    found = _scan_class_dirs(key, parents, classes)
    paths, labels = _files_by_class(key, found, classes, where)
    return FileSplit(paths=paths, labels=labels, classes=classes)


def _imagenet1k_val(key: str, root: Path, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    """ImageNet-1K val: CLS-LOC/val/*.JPEG labelled by LOC_val_solution.csv."""
    val_dir = require_dir(key, root / "ILSVRC" / "Data" / "CLS-LOC" / "val")
    solution = require_file(key, root / "LOC_val_solution.csv")
    index = {c: i for i, c in enumerate(classes)}
    wnid_of: dict[str, str] = {}
    with solution.open(newline="", encoding="utf-8") as f:
        rows = csv.reader(f)
        header = next(rows, None)
        if header is None or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
            raise layout_error(key, solution, f"header is {header}, expected ImageId,PredictionString")
        for n, row in enumerate(rows, start=2):
            if not row:
                continue
            tokens = row[1].split() if len(row) > 1 else []
            if not tokens:
                raise layout_error(key, solution, f"line {n} has no PredictionString")
            image_id, wnid = row[0].strip(), tokens[0]
            if wnid not in index:
                raise layout_error(key, solution, f"line {n}: {image_id} has wnid {wnid!r}, "
                             "not in LOC_synset_mapping.txt")
            if image_id in wnid_of:
                raise layout_error(key, solution, f"line {n}: {image_id} listed twice")
            wnid_of[image_id] = wnid
    paths = _images_in(val_dir)
    for path in paths:
        if path.stem not in wnid_of:
            raise layout_error(key, path, f"val image not listed in {solution}")
    on_disk = {p.stem for p in paths}
    for image_id in wnid_of:
        if image_id not in on_disk:
            raise layout_error(key, val_dir / f"{image_id}.JPEG",
                         f"val image listed in {solution} is missing")
    return paths, np.asarray([index[wnid_of[p.stem]] for p in paths], dtype=np.int64)


def read_imagenet1k(root: Path, split: str) -> FileSplit:
    """ImageNet-1K from Kaggle (localization challenge); classes in LOC_synset_mapping order."""
    key = "imagenet"
    check_split(key, split, ("train", "val"))
    root = require_dir(key, Path(root))
    mapping = root / "LOC_synset_mapping.txt"
    classes = _unique(key, mapping, [line.split()[0] for line in _read_lines(key, mapping)], "wnid")
    if split == "train":
        train_dir = root / "ILSVRC" / "Data" / "CLS-LOC" / "train"
        found = _scan_class_dirs(key, [train_dir], classes)
        paths, labels = _files_by_class(key, found, classes, str(train_dir))
    else:
        paths, labels = _imagenet1k_val(key, root, classes)
    return FileSplit(paths=paths, labels=labels, classes=classes)


def read_imagefolder(root: Path, split: str) -> FileSplit:
    """Generic root/{train,val}/<class>/<image>; classes = sorted folder names of train/."""
    key = "imagefolder"
    check_split(key, split, ("train", "val"))
    root = require_dir(key, Path(root))
    train_dir = require_dir(key, root / "train")
    classes = [d.name for d in _subdirs(train_dir)]
    if not classes:
        raise layout_error(key, train_dir, "no class folders")
    split_dir = root / split
    found = _scan_class_dirs(key, [split_dir], classes)
    # val may hold fewer classes than train; train holds them all by construction
    paths, labels = _files_by_class(key, found, classes, str(split_dir), missing_ok=True)
    return FileSplit(paths=paths, labels=labels, classes=classes)


SIXTEEN_BIT_GREY = ("I;16", "I;16L", "I;16B", "I;16N")  # PIL's modes of 16-bit grey images
# formats whose mode "I" holds 16-bit grey too: PGM (PIL scales its maxval to 65535) and PNG
# (as older Pillows open it)
SIXTEEN_BIT_IN_I = ("PPM", "PNG")


def _as_rgb(image: "PIL.Image.Image", path: Path) -> "PIL.Image.Image":
    """Grey, RGBA, palette -> RGB (alpha dropped, as torchvision). 16-bit grey keeps its high
    byte (PIL's own conversion clips at 255: nearly all white); 32-bit integer or float pixels,
    whose range the file does not say, are refused."""
    from PIL import Image

    if image.mode == "P":  # palette transparency goes through RGBA, without PIL's warning
        return image.convert("RGBA").convert("RGB")
    if image.mode in SIXTEEN_BIT_GREY or (image.mode == "I" and image.format in SIXTEEN_BIT_IN_I):
        high = (np.asarray(image).clip(0, 65535).astype(np.uint16) >> 8).astype(np.uint8)
        return Image.fromarray(high).convert("RGB")
    if image.mode in ("I", "F"):
        raise DatasetLayoutError(f"{path}: an image of {image.mode} pixels (32-bit integer or "
                                 "float), whose range is not known; save it with 8 or 16 bits")
    return image.convert("RGB")


def decode_image(path: Path) -> "PIL.Image.Image":
    """Open an image with PIL as RGB (`_as_rgb`); DatasetLayoutError naming the file if it
    cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()  # decode now, so a truncated file fails here
            return _as_rgb(image, path)
    except DatasetLayoutError:
        raise
    # PIL's errors for unreadable files, and for one too large to be a real image
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetLayoutError(f"{path}: not a readable image ({e})") from e
