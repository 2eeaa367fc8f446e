"""Readers of the datasets' real on-disk layouts, on small files written in those layouts."""

from __future__ import annotations

import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.io as scipy_io
from PIL import Image

from fixtures.formats import (CIFAR10_NAMES, write_cifar, write_flowers102, write_image,
                              write_imagefolder, write_imagenet100, write_imagenet1k, write_svhn,
                              write_tiny_imagenet)
from relvit.data.formats import (EXPECTED_LAYOUT, ArraySplit, DatasetLayoutError, FileSplit,
                                 decode_image, read_cifar, read_flowers102, read_imagefolder,
                                 read_imagenet1k, read_imagenet100, read_svhn, read_tiny_imagenet)


WRITERS = {
    "cifar10": lambda root: write_cifar(root, 10, n_train=23, n_test=7, seed=1),
    "cifar100": lambda root: write_cifar(root, 100, n_train=40, n_test=9, seed=2),
    "svhn": lambda root: write_svhn(root, n_train=13, n_test=6, seed=3),
    "flowers102": write_flowers102,
    "tiny_imagenet": write_tiny_imagenet,
    "imagenet100": write_imagenet100,
    "imagenet": write_imagenet1k,
    "imagefolder": write_imagefolder,
}
READERS = {
    "cifar10": lambda root, split: read_cifar(root, 10, split),
    "cifar100": lambda root, split: read_cifar(root, 100, split),
    "svhn": read_svhn,
    "flowers102": read_flowers102,
    "tiny_imagenet": read_tiny_imagenet,
    "imagenet100": read_imagenet100,
    "imagenet": read_imagenet1k,
    "imagefolder": read_imagefolder,
}


def _raises(key: str, root: Path, split: str, *needles: object) -> DatasetLayoutError:
    """Reading must fail with a message holding every needle and the expected layout."""
    with pytest.raises(DatasetLayoutError) as info:
        READERS[key](root, split)
    message = str(info.value)
    for needle in needles:
        assert str(needle) in message, message
    assert EXPECTED_LAYOUT[key] in message
    return info.value


def _rewrite_pickle(path: Path, change) -> None:
    with path.open("rb") as f:
        obj = pickle.load(f, encoding="bytes")
    change(obj)
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)


def _rewrite_mat(path: Path, **variables) -> None:
    mat = {k: v for k, v in scipy_io.loadmat(path).items() if not k.startswith("__")}
    scipy_io.savemat(path, {**mat, **variables})


def _remove(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() else path.unlink()


def _empty(folder: Path) -> None:
    for file in folder.iterdir():
        if file.is_file():
            file.unlink()


# --- readers on their fixtures ----------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [10, 100])
def test_cifar_reads_arrays_labels_and_classes(tmp_path, num_classes):
    written = WRITERS[f"cifar{num_classes}"](tmp_path)
    for split in ("train", "test"):
        got = read_cifar(tmp_path, num_classes, split)
        want = written[split]
        assert isinstance(got, ArraySplit)
        assert got.images.dtype == np.uint8 and got.images.shape == (len(want["labels"]), 32, 32, 3)
        assert got.images.flags.c_contiguous
        assert got.labels.dtype == np.int64
        np.testing.assert_array_equal(got.labels, want["labels"])
        np.testing.assert_array_equal(got.images, want["images"])
        np.testing.assert_array_equal(np.bincount(got.labels, minlength=num_classes),
                                      np.bincount(want["labels"], minlength=num_classes))
        assert got.classes == written["classes"] and len(got.classes) == num_classes
    n_train = 23 if num_classes == 10 else 40
    assert len(read_cifar(tmp_path, num_classes, "train").labels) == n_train


def test_cifar_rows_are_rgb_planes_in_row_major_order(tmp_path):
    """Independent of the writer: pixel (r, c) channel k sits at k * 1024 + r * 32 + c."""
    write_cifar(tmp_path, 10, n_train=10, n_test=3, seed=5)
    with (tmp_path / "cifar-10-batches-py" / "data_batch_1").open("rb") as f:
        raw = pickle.load(f, encoding="bytes")[b"data"]
    images = read_cifar(tmp_path, 10, "train").images
    for k, r, c in [(0, 0, 0), (1, 0, 0), (2, 0, 0), (0, 0, 1), (0, 1, 0), (2, 31, 5), (1, 7, 30)]:
        assert images[1, r, c, k] == raw[1, k * 1024 + r * 32 + c]


def test_cifar10_classes_are_the_official_names_in_order(tmp_path):
    write_cifar(tmp_path, 10, n_train=5, n_test=2)
    assert read_cifar(tmp_path, 10, "test").classes == CIFAR10_NAMES


def test_cifar100_uses_fine_labels(tmp_path):
    written = write_cifar(tmp_path, 100, n_train=30, n_test=4, seed=7)
    labels = read_cifar(tmp_path, 100, "train").labels
    np.testing.assert_array_equal(labels, written["train"]["labels"])
    assert labels.max() >= 20  # coarse labels stop at 19


def test_svhn_reads_arrays_and_maps_10_to_digit_0(tmp_path):
    written = write_svhn(tmp_path, n_train=13, n_test=6, seed=3)
    raw = scipy_io.loadmat(tmp_path / "train_32x32.mat")
    assert raw["y"][0, 0] == 10
    for split in ("train", "test"):
        got = read_svhn(tmp_path, split)
        assert got.images.dtype == np.uint8 and got.images.shape == (len(written[split]["labels"]),
                                                                     32, 32, 3)
        assert got.labels.dtype == np.int64
        np.testing.assert_array_equal(got.labels, written[split]["labels"])
        np.testing.assert_array_equal(got.images, written[split]["images"])
        assert got.labels[0] == 0 and got.labels.min() >= 0 and got.labels.max() <= 9
        assert got.classes == [str(d) for d in range(10)]
    got = read_svhn(tmp_path, "train")
    np.testing.assert_array_equal(got.images[4], raw["X"][:, :, :, 4])


def test_flowers102_splits_labels_and_paths(tmp_path):
    written = write_flowers102(tmp_path)
    sizes = {}
    for split in ("train", "val", "test"):
        got = read_flowers102(tmp_path, split)
        assert isinstance(got, FileSplit)
        ids = written["ids"][split]
        assert got.paths == [tmp_path / "jpg" / f"image_{i:05d}.jpg" for i in ids]
        assert got.labels.dtype == np.int64
        np.testing.assert_array_equal(got.labels, written["expected"][split])
        np.testing.assert_array_equal(got.labels, written["labels"][ids - 1] - 1)  # 1-based -> 0
        assert got.classes == [str(c) for c in range(1, 103)]
        sizes[split] = len(got.paths)
    assert sizes == {"train": 5, "val": 4, "test": 6}
    all_labels = np.concatenate([read_flowers102(tmp_path, s).labels for s in sizes])
    assert sorted(set(all_labels.tolist())) == [0, 1, 6, 49, 101]
    np.testing.assert_array_equal(np.bincount(all_labels, minlength=102)[[0, 1, 6, 49, 101]],
                                  [4, 1, 3, 2, 5])


def test_tiny_imagenet_train_and_val(tmp_path):
    written = write_tiny_imagenet(tmp_path)
    train = read_tiny_imagenet(tmp_path, "train")
    assert train.classes == written["classes"]  # wnids.txt order, not sorted
    np.testing.assert_array_equal(train.labels, written["train_labels"])
    np.testing.assert_array_equal(np.bincount(train.labels), written["train_counts"])
    for path, label in zip(train.paths, train.labels):
        assert path.parent.name == "images" and path.parent.parent.name == train.classes[label]
    val = read_tiny_imagenet(tmp_path, "val")
    assert val.classes == written["classes"]
    assert [p.name for p in val.paths] == written["val_names"]
    np.testing.assert_array_equal(val.labels, written["val_labels"])
    assert val.labels.dtype == np.int64 and len(val.paths) == 11


def test_imagenet100_train_and_val(tmp_path):
    written = write_imagenet100(tmp_path)
    for split, prefix in (("train", "train.X"), ("val", "val.X")):
        got = read_imagenet100(tmp_path, split)
        assert got.classes == written["classes"]  # Labels.json key order
        np.testing.assert_array_equal(got.labels, written[f"{split}_labels"])
        np.testing.assert_array_equal(np.bincount(got.labels), written[f"{split}_counts"])
        for path, label in zip(got.paths, got.labels):
            assert path.parent.name == got.classes[label]
            assert path.parent.parent.name.startswith(prefix)
    train = read_imagenet100(tmp_path, "train")
    assert {p.parent.parent.name for p in train.paths} == {f"train.X{i}" for i in range(1, 5)}


def test_imagenet1k_train_and_val(tmp_path):
    written = write_imagenet1k(tmp_path)
    train = read_imagenet1k(tmp_path, "train")
    assert train.classes == written["classes"]  # LOC_synset_mapping.txt order
    np.testing.assert_array_equal(train.labels, written["train_labels"])
    np.testing.assert_array_equal(np.bincount(train.labels), written["train_counts"])
    assert all(p.parent.name == train.classes[y] for p, y in zip(train.paths, train.labels))
    val = read_imagenet1k(tmp_path, "val")
    assert [p.name for p in val.paths] == written["val_names"]
    np.testing.assert_array_equal(val.labels, written["val_labels"])
    assert val.labels.dtype == np.int64


def test_imagefolder_train_and_val(tmp_path):
    written = write_imagefolder(tmp_path)
    train = read_imagefolder(tmp_path, "train")
    assert train.classes == ["Dog", "bird", "cat"]
    assert [p.name for p in train.paths] == written["train_names"]  # no notes.txt, no .hidden.jpg
    np.testing.assert_array_equal(train.labels, written["train_labels"])
    val = read_imagefolder(tmp_path, "val")
    assert val.classes == train.classes  # val has no Dog, and keeps train's indices
    assert [p.name for p in val.paths] == written["val_names"]
    np.testing.assert_array_equal(val.labels, written["val_labels"])
    np.testing.assert_array_equal(val.labels, [1, 2, 2])


@pytest.mark.parametrize("key", ["flowers102", "tiny_imagenet", "imagenet100", "imagenet",
                                 "imagefolder"])
def test_file_splits_are_sorted_real_images(tmp_path, key):
    WRITERS[key](tmp_path)
    for split in ("train", "val"):
        got = READERS[key](tmp_path, split)
        assert len(got.paths) == len(got.labels) > 0
        for label in set(got.labels.tolist()):  # sorted within each class
            names = [str(p) for p, y in zip(got.paths, got.labels) if y == label]
            assert names == sorted(names)
        for path in got.paths:
            image = decode_image(path)
            assert image.mode == "RGB" and image.size == (8, 8)


def test_expected_layout_covers_every_dataset():
    assert set(EXPECTED_LAYOUT) == set(READERS)
    assert all(text.count("\n") >= 1 for text in EXPECTED_LAYOUT.values())


# --- decode_image ------------------------------------------------------------------------------


def _palette_image() -> Image.Image:
    image = Image.new("P", (6, 5))
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    image.putpixel((1, 1), 1)
    image.info["transparency"] = 0
    return image


@pytest.mark.parametrize("make", [
    lambda: Image.new("L", (6, 5), 77),
    lambda: Image.new("LA", (6, 5), (77, 10)),
    lambda: Image.new("RGBA", (6, 5), (10, 20, 30, 0)),
    lambda: Image.new("1", (6, 5), 1),
    _palette_image,
], ids=["grey", "grey-alpha", "rgba", "bilevel", "palette"])
def test_decode_image_gives_rgb(tmp_path, make):
    path = tmp_path / "image.png"
    make().save(path)
    image = decode_image(path)
    assert image.mode == "RGB" and image.size == (6, 5)
    pixels = np.asarray(image)
    assert pixels.shape == (5, 6, 3) and pixels.dtype == np.uint8


def test_decode_image_values(tmp_path):
    Image.new("L", (4, 4), 77).save(tmp_path / "grey.png")
    assert np.asarray(decode_image(tmp_path / "grey.png"))[0, 0].tolist() == [77, 77, 77]
    Image.new("RGBA", (4, 4), (10, 20, 30, 0)).save(tmp_path / "rgba.png")
    assert np.asarray(decode_image(tmp_path / "rgba.png"))[0, 0].tolist() == [10, 20, 30]
    _palette_image().save(tmp_path / "palette.png")
    pixels = np.asarray(decode_image(tmp_path / "palette.png"))
    assert pixels[0, 0].tolist() == [255, 0, 0] and pixels[1, 1].tolist() == [0, 255, 0]


def test_decode_image_palette_with_transparency_without_a_warning(tmp_path):
    """A palette PNG with byte transparency: RGB of its palette colours, without PIL's
    "should be converted to RGBA" warning (one per image, per epoch, per worker)."""
    rgb = np.random.default_rng(0).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    image = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    path = tmp_path / "palette.png"
    image.save(path, transparency=bytes([0] * 4 + [255] * 252))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = decode_image(path)
    assert got.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(got), np.asarray(image.convert("RGBA"))[..., :3])


def test_decode_image_keeps_the_high_byte_of_16_bit_grey(tmp_path):
    """PIL's own conversion clips 16-bit grey at 255: this gradient had come out 99.6 % white."""
    grey = (np.arange(64 * 64).reshape(64, 64) * 15).astype(np.uint16)
    Image.fromarray(grey).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode == "I;16"
    pixels = np.asarray(decode_image(tmp_path / "grey16.png"))
    assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8
    assert (pixels == (grey >> 8)[..., None]).all()


def test_decode_image_reads_a_16_bit_pgm_as_16_bit_grey(tmp_path):
    """PIL opens a 16-bit PGM as mode I (its maxval scaled to 65535): refused as 32-bit."""
    grey = (np.arange(64 * 64).reshape(64, 64) * 16).astype(">u2")
    (tmp_path / "grey.pgm").write_bytes(b"P5 64 64 65535\n" + grey.tobytes())
    assert Image.open(tmp_path / "grey.pgm").mode == "I"
    pixels = np.asarray(decode_image(tmp_path / "grey.pgm"))
    assert (pixels == (grey.astype(np.uint16) >> 8)[..., None]).all()


@pytest.mark.parametrize("mode,dtype", [("I", np.int32), ("F", np.float32)])
def test_decode_image_refuses_pixels_of_unknown_range(tmp_path, mode, dtype):
    path = tmp_path / "depth.tif"
    Image.fromarray(np.full((4, 4), 70000, dtype=dtype)).save(path)
    assert Image.open(path).mode == mode
    with pytest.raises(DatasetLayoutError, match=f"depth.tif: an image of {mode} pixels"):
        decode_image(path)


def test_decode_image_names_a_file_too_large_to_be_an_image(tmp_path, monkeypatch):
    """PIL's DecompressionBombError is no OSError: it had ended a run with a bare traceback."""
    path = write_image(tmp_path / "huge.png", np.random.default_rng(0), size=64)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 // 4)  # an error above twice this
    with pytest.raises(DatasetLayoutError, match="huge.png: not a readable image .*exceeds"):
        decode_image(path)


def test_decode_image_cmyk_jpeg(tmp_path):
    """Some ImageNet training JPEGs are CMYK."""
    Image.new("CMYK", (6, 5), (0, 255, 255, 0)).save(tmp_path / "cmyk.JPEG", format="JPEG")
    image = decode_image(tmp_path / "cmyk.JPEG")
    assert image.mode == "RGB" and image.size == (6, 5)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "missing"])
def test_decode_image_unreadable_file_names_it(tmp_path, damage):
    path = write_image(tmp_path / "photo.jpg", np.random.default_rng(0), size=64)
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"this is not a JPEG at all" * 10)
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.unlink()
    with pytest.raises(DatasetLayoutError, match="photo.jpg"):
        decode_image(path)


# --- bad inputs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("key,split,allowed", [
    ("cifar10", "val", "train, test"),
    ("cifar100", "validation", "train, test"),
    ("svhn", "extra", "train, test"),
    ("flowers102", "trainval", "train, val, test"),
    ("tiny_imagenet", "test", "train, val"),
    ("imagenet100", "test", "train, val"),
    ("imagenet", "test", "train, val"),
    ("imagefolder", "test", "train, val"),
])
def test_split_not_allowed_names_the_allowed_ones(tmp_path, key, split, allowed):
    with pytest.raises(DatasetLayoutError) as info:
        READERS[key](tmp_path, split)
    assert repr(split) in str(info.value) and allowed in str(info.value)
    assert EXPECTED_LAYOUT[key] in str(info.value)


def test_cifar_num_classes_must_be_10_or_100(tmp_path):
    with pytest.raises(DatasetLayoutError, match="20"):
        read_cifar(tmp_path, 20, "train")


@pytest.mark.parametrize("key", list(READERS))
def test_missing_root(tmp_path, key):
    root = tmp_path / "not-downloaded"
    _raises(key, root, "train", root)


@pytest.mark.parametrize("key,relative,split", [
    ("cifar10", "cifar-10-batches-py", "train"),
    ("cifar10", "cifar-10-batches-py/data_batch_3", "train"),
    ("cifar10", "cifar-10-batches-py/test_batch", "test"),
    ("cifar10", "cifar-10-batches-py/batches.meta", "test"),
    ("cifar100", "cifar-100-python/test", "test"),
    ("cifar100", "cifar-100-python/meta", "train"),
    ("svhn", "test_32x32.mat", "test"),
    ("flowers102", "jpg", "train"),
    ("flowers102", "imagelabels.mat", "train"),
    ("flowers102", "setid.mat", "val"),
    ("tiny_imagenet", "tiny-imagenet-200", "train"),
    ("tiny_imagenet", "tiny-imagenet-200/wnids.txt", "train"),
    ("tiny_imagenet", "tiny-imagenet-200/train", "train"),
    ("tiny_imagenet", "tiny-imagenet-200/train/n05555555/images", "train"),
    ("tiny_imagenet", "tiny-imagenet-200/val/val_annotations.txt", "val"),
    ("tiny_imagenet", "tiny-imagenet-200/val/images/val_3.JPEG", "val"),
    ("imagenet100", "Labels.json", "train"),
    ("imagenet100", "train.X3", "train"),
    ("imagenet100", "val.X", "val"),
    ("imagenet", "LOC_synset_mapping.txt", "train"),
    ("imagenet", "ILSVRC/Data/CLS-LOC/train", "train"),
    ("imagenet", "LOC_val_solution.csv", "val"),
    ("imagenet", "ILSVRC/Data/CLS-LOC/val/ILSVRC2012_val_00000003.JPEG", "val"),
    ("imagefolder", "train", "val"),
    ("imagefolder", "val", "val"),
])
def test_missing_file_or_folder(tmp_path, key, relative, split):
    WRITERS[key](tmp_path)
    _remove(tmp_path / relative)
    _raises(key, tmp_path, split, tmp_path / relative)


def test_flowers102_missing_image_of_the_split(tmp_path):
    written = write_flowers102(tmp_path)
    missing = tmp_path / "jpg" / f"image_{written['ids']['val'][2]:05d}.jpg"
    missing.unlink()
    read_flowers102(tmp_path, "train")  # other splits still read
    _raises("flowers102", tmp_path, "val", missing)


@pytest.mark.parametrize("key,relative,split", [
    ("tiny_imagenet", "tiny-imagenet-200/train/n02124075", "train"),
    ("imagenet100", "train.X1/n01749939", "train"),
    ("imagenet", "ILSVRC/Data/CLS-LOC/train/n15075141", "train"),
])
def test_missing_class_folder(tmp_path, key, relative, split):
    WRITERS[key](tmp_path)
    _remove(tmp_path / relative)
    _raises(key, tmp_path, split, Path(relative).name, "class folder missing")


@pytest.mark.parametrize("key,folder,split", [
    ("tiny_imagenet", "tiny-imagenet-200/train/n01443537/images", "train"),
    ("imagenet100", "train.X1/n01749939", "train"),
    ("imagenet100", "val.X/n02488291", "val"),
    ("imagenet", "ILSVRC/Data/CLS-LOC/train/n03000134", "train"),
    ("imagefolder", "train/bird", "train"),  # only a hidden file is left
    ("imagefolder", "val/cat", "val"),
    ("imagefolder", "train/cat", "train"),  # only notes.txt is left
])
def test_empty_class_folder(tmp_path, key, folder, split):
    WRITERS[key](tmp_path)
    _empty(tmp_path / folder)
    _raises(key, tmp_path, split, tmp_path / folder, "no images")


@pytest.mark.parametrize("key,folder,split", [
    ("tiny_imagenet", "tiny-imagenet-200/train/n00000001/images", "train"),
    ("imagenet100", "train.X4/n09999999", "train"),
    ("imagenet100", "val.X/n09999999", "val"),  # a val folder whose wnid is not a class
    ("imagenet", "ILSVRC/Data/CLS-LOC/train/n00000002", "train"),
    ("imagefolder", "val/fish", "val"),  # a val class that train lacks
])
def test_class_folder_that_is_not_a_class(tmp_path, key, folder, split):
    WRITERS[key](tmp_path)
    write_image(tmp_path / folder / "x.JPEG", np.random.default_rng(0))
    class_dir = tmp_path / folder
    if class_dir.name == "images":
        class_dir = class_dir.parent
    _raises(key, tmp_path, split, class_dir, "not one of the classes")


def test_tiny_imagenet_val_wnid_not_a_class(tmp_path):
    write_tiny_imagenet(tmp_path)
    annotations = tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    lines = annotations.read_text().splitlines()
    name, _, *box = lines[4].split("\t")
    lines[4] = "\t".join([name, "n00000001", *box])
    annotations.write_text("\n".join(lines) + "\n")
    read_tiny_imagenet(tmp_path, "train")  # train does not read the annotations
    _raises("tiny_imagenet", tmp_path, "val", "n00000001", name, annotations)


def test_imagenet1k_val_wnid_not_a_class(tmp_path):
    write_imagenet1k(tmp_path)
    solution = tmp_path / "LOC_val_solution.csv"
    lines = solution.read_text().splitlines()
    lines[3] = lines[3].split(",")[0] + ",n07777777 1 2 3 4"
    solution.write_text("\n".join(lines) + "\n")
    _raises("imagenet", tmp_path, "val", "n07777777", lines[3].split(",")[0], solution)


@pytest.mark.parametrize("key,extra", [
    ("tiny_imagenet", "tiny-imagenet-200/val/images/val_99.JPEG"),
    ("imagenet", "ILSVRC/Data/CLS-LOC/val/ILSVRC2012_val_00000099.JPEG"),
])
def test_val_image_without_a_label(tmp_path, key, extra):
    WRITERS[key](tmp_path)
    write_image(tmp_path / extra, np.random.default_rng(0))
    _raises(key, tmp_path, "val", tmp_path / extra, "not listed")


@pytest.mark.parametrize("num_classes,label_key,bad", [
    (10, b"labels", 10), (10, b"labels", -1), (100, b"fine_labels", 100)])
def test_cifar_label_out_of_range(tmp_path, num_classes, label_key, bad):
    write_cifar(tmp_path, num_classes, n_train=12, n_test=5)
    folder = "cifar-10-batches-py" if num_classes == 10 else "cifar-100-python"
    path = tmp_path / folder / ("test_batch" if num_classes == 10 else "test")

    def change(batch):
        batch[label_key][2] = bad

    _rewrite_pickle(path, change)
    _raises(f"cifar{num_classes}", tmp_path, "test", path, f"label {bad} at index 2")


def test_cifar_data_and_labels_lengths_differ(tmp_path):
    write_cifar(tmp_path, 10, n_train=12, n_test=5)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    _rewrite_pickle(path, lambda batch: batch[b"labels"].pop())
    _raises("cifar10", tmp_path, "train", path, "labels")


def test_cifar_corrupt_pickle(tmp_path):
    write_cifar(tmp_path, 10, n_train=12, n_test=5)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:100])
    _raises("cifar10", tmp_path, "test", path, "not a readable pickle")


@pytest.mark.parametrize("bad", [0, 11])
def test_svhn_label_out_of_range(tmp_path, bad):
    write_svhn(tmp_path, n_train=5, n_test=4)
    path = tmp_path / "test_32x32.mat"
    y = scipy_io.loadmat(path)["y"]
    y[1, 0] = bad
    _rewrite_mat(path, y=y)
    _raises("svhn", tmp_path, "test", path, f"y {bad} at index 1")


def test_svhn_x_and_y_lengths_differ(tmp_path):
    write_svhn(tmp_path, n_train=5, n_test=4)
    path = tmp_path / "train_32x32.mat"
    _rewrite_mat(path, y=scipy_io.loadmat(path)["y"][:-1])
    _raises("svhn", tmp_path, "train", path, "5 images but y holds 4 labels")


def test_svhn_labels_of_another_shape_are_refused(tmp_path):
    """y of [N/2, 2] had been flattened to N labels that no longer line up with the images."""
    write_svhn(tmp_path, n_train=4, n_test=4)
    path = tmp_path / "train_32x32.mat"
    _rewrite_mat(path, y=scipy_io.loadmat(path)["y"].reshape(2, 2))
    _raises("svhn", tmp_path, "train", path, "y are [2, 2], expected a vector")


def test_cifar_class_names_that_are_no_list_are_named(tmp_path):
    write_cifar(tmp_path, 10, n_train=12, n_test=5)
    path = tmp_path / "cifar-10-batches-py" / "batches.meta"
    _rewrite_pickle(path, lambda meta: meta.update({b"label_names": 10}))
    _raises("cifar10", tmp_path, "test", path, "b'label_names' holds a int, not a list")


@pytest.mark.parametrize("edit,needles", [
    (lambda ids: ids.update(tstid=np.concatenate([ids["tstid"], ids["tstid"][:, :1]], axis=1)),
     ("tstid lists image id", "twice")),
    (lambda ids: ids.update(tstid=np.concatenate([ids["tstid"], ids["trnid"][:, :1]], axis=1)),
     ("image id", "is in both tstid and trnid"))])
def test_flowers102_split_ids_listed_twice_are_refused(tmp_path, edit, needles):
    """setid.mat's ids had only been checked for their range: an image twice in a split, or in
    two splits (a test image trained on), passed."""
    write_flowers102(tmp_path)
    path = tmp_path / "setid.mat"
    ids = {name: scipy_io.loadmat(path)[name] for name in ("trnid", "valid", "tstid")}
    edit(ids)
    _rewrite_mat(path, **ids)
    _raises("flowers102", tmp_path, "test", path, *needles)


def test_imagefolder_reads_torchvisions_suffixes_and_names_a_broken_link(tmp_path):
    write_imagefolder(tmp_path)
    write_image(tmp_path / "train" / "cat" / "c3.TIFF", np.random.default_rng(1))
    assert "c3.TIFF" in [p.name for p in read_imagefolder(tmp_path, "train").paths]
    link = tmp_path / "train" / "cat" / "c4.jpg"
    link.symlink_to(tmp_path / "elsewhere.jpg")
    with pytest.raises(DatasetLayoutError, match=f"{link}: a link to .*elsewhere.jpg, which "
                                                 "does not exist"):
        read_imagefolder(tmp_path, "train")


@pytest.mark.parametrize("bad", [0, 103])
def test_flowers102_label_out_of_range(tmp_path, bad):
    write_flowers102(tmp_path)
    path = tmp_path / "imagelabels.mat"
    labels = scipy_io.loadmat(path)["labels"]
    labels[0, 6] = bad
    _rewrite_mat(path, labels=labels)
    _raises("flowers102", tmp_path, "train", path, f"label {bad} at index 6")


@pytest.mark.parametrize("bad", [0, 16])
def test_flowers102_image_id_out_of_range(tmp_path, bad):
    write_flowers102(tmp_path)  # 15 images
    path = tmp_path / "setid.mat"
    ids = scipy_io.loadmat(path)["tstid"]
    ids[0, 0] = bad
    _rewrite_mat(path, tstid=ids)
    _raises("flowers102", tmp_path, "test", path, f"id {bad} at index 0")
