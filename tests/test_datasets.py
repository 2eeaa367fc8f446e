"""Datasets end to end: prepare-data (download, verify, extract, mark ready) and training runs
on small files in the real on-disk formats, through the same code a real run uses."""

import dataclasses
import hashlib
import json
import tarfile

import numpy as np
import pytest
import torch

from fixtures.detection import write_voc2007
from fixtures.formats import (
    write_cifar,
    write_flowers102,
    write_imagefolder,
    write_imagenet1k,
    write_imagenet100,
    write_svhn,
    write_tiny_imagenet,
)
from relvit.cli import main
from relvit.config import DataConfig
from relvit.data import registry
from relvit.data.loading import batches, file_transform, load_splits, to_float_images
from relvit.data.download import ChecksumError, DownloadError, Resource
from relvit.data.formats import DatasetLayoutError
from relvit.data.prepare import prepare_dataset, ready_marker
from relvit.layout import READY
from relvit.train.loop import train

TINY_MODEL = {"backbone": "vit_small", "embed_dim": 36, "depth": 1, "num_heads": 3,
              "drop_path_rate": 0.0}


@pytest.fixture
def cifar_archive(tmp_path):
    """A cifar-10-python.tar.gz in the official layout, and a Resource pointing at it."""
    write_cifar(tmp_path / "src", 10, n_train=60, n_test=20)
    archive = tmp_path / "www" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    return archive, Resource(archive.as_uri(), archive.name, md5=md5, extract=True)


def use_resource(monkeypatch, name, *resources):
    spec = dataclasses.replace(registry.DATASETS[name], resources=resources)
    monkeypatch.setitem(registry.DATASETS, name, spec)


def _served(path, extract: bool = False) -> Resource:
    """A Resource of a local file (a file:// URL)."""
    return Resource(path.as_uri(), path.name, md5=hashlib.md5(path.read_bytes()).hexdigest(),
                    extract=extract)


def test_prepare_downloads_verifies_extracts_and_marks_ready(tmp_path, monkeypatch, cifar_archive):
    archive, resource = cifar_archive
    use_resource(monkeypatch, "cifar10", resource)
    record = prepare_dataset("cifar10", tmp_path / "data")
    assert record["splits"] == {"train": 60, "test": 20} and record["classes"] == 10
    marker = json.loads(ready_marker(tmp_path / "data", "cifar10").read_text())
    assert marker["resources"][0]["md5"] == resource.md5
    assert (tmp_path / "data" / "cifar10" / "cifar-10-batches-py" / "data_batch_5").is_file()
    archive.unlink()  # offline: the verified download already in place is all it needs
    assert prepare_dataset("cifar10", tmp_path / "data", offline=True)["splits"]["train"] == 60


def test_a_second_prepare_waits_for_the_first(tmp_path, monkeypatch, cifar_archive, caplog):
    """Two prepares of one dataset at once had resumed each other's download (an archive
    verified, then appended to) and cleared each other's extraction: the second waits now."""
    import os
    import threading

    from relvit.locks import folder_lock, lock_beside

    _, resource = cifar_archive
    use_resource(monkeypatch, "cifar10", resource)
    target, done = tmp_path / "data" / "cifar10", []
    second = threading.Thread(target=lambda: done.append(prepare_dataset("cifar10",
                                                                         tmp_path / "data")))
    with caplog.at_level("WARNING", logger="relvit"):
        with folder_lock(lock_beside(target, "prepare"), target, "preparing"):  # the first
            second.start()
            second.join(1.0)
            assert second.is_alive() and not done and not target.exists()
        second.join(60)
    assert done[0]["splits"] == {"train": 60, "test": 20}
    assert f"waiting for pid {os.getpid()} on " in caplog.text
    assert f"which is preparing {target} (lock {lock_beside(target, 'prepare')})" in caplog.text
    # waited for a process that made the dataset ready: its marker, which that process's
    # workflow checks once its job ends, is kept as it is (not removed, then written again)
    marker = ready_marker(tmp_path / "data", "cifar10")
    stamp = marker.stat().st_mtime_ns
    third = threading.Thread(target=lambda: done.append(prepare_dataset("cifar10",
                                                                        tmp_path / "data")))
    with folder_lock(lock_beside(target, "prepare"), target, "preparing"):
        third.start()
        third.join(0.5)
    third.join(60)
    assert done[1] == done[0] and marker.stat().st_mtime_ns == stamp
    # one asked to unpack anew (--extract-again) does so after waiting too
    batches = target / "cifar-10-batches-py"
    whole = (batches / "data_batch_3").read_bytes()
    (batches / "data_batch_3").write_bytes((batches / "data_batch_4").read_bytes())
    fourth = threading.Thread(target=lambda: done.append(prepare_dataset(
        "cifar10", tmp_path / "data", offline=True, extract_again=True)))
    with folder_lock(lock_beside(target, "prepare"), target, "preparing"):
        fourth.start()
        fourth.join(0.5)
        assert fourth.is_alive()
    fourth.join(60)
    assert done[2]["splits"] == {"train": 60, "test": 20}
    assert (batches / "data_batch_3").read_bytes() == whole


def test_corrupted_download_is_rejected_and_nothing_extracted(tmp_path, monkeypatch,
                                                              cifar_archive):
    _, resource = cifar_archive
    use_resource(monkeypatch, "cifar10", dataclasses.replace(resource, md5="0" * 32))
    with pytest.raises(ChecksumError, match="cifar-10-python.tar.gz"):
        prepare_dataset("cifar10", tmp_path / "data")
    assert not (tmp_path / "data" / "cifar10").exists()
    assert main(["prepare-data", "cifar10", "--root", str(tmp_path / "data")]) == 1


def test_damaged_extracted_files_are_extracted_again(tmp_path, monkeypatch, cifar_archive,
                                                      caplog):
    """A file deleted or cut short after extraction: the kept archive is unpacked once more."""
    _, resource = cifar_archive
    use_resource(monkeypatch, "cifar10", resource)
    prepare_dataset("cifar10", tmp_path / "data")
    batch = tmp_path / "data" / "cifar10" / "cifar-10-batches-py" / "data_batch_3"
    whole = batch.read_bytes()
    batch.write_bytes(whole[: len(whole) // 2])
    with caplog.at_level("WARNING", logger="relvit"):
        assert prepare_dataset("cifar10", tmp_path / "data", offline=True)["splits"]["train"] == 60
    assert "data_batch_3" in caplog.text and "extracting its archives again" in caplog.text
    assert batch.read_bytes() == whole


def test_extract_again_unpacks_the_checked_archive_anew(tmp_path, monkeypatch, cifar_archive):
    """The layout check reads what lists a dataset, not every image: a file changed but still
    readable passes it, and `--extract-again` brings the archive's copy back."""
    _, resource = cifar_archive
    use_resource(monkeypatch, "cifar10", resource)
    root = tmp_path / "data"
    prepare_dataset("cifar10", root)
    batches = root / "cifar10" / "cifar-10-batches-py"
    whole = (batches / "data_batch_3").read_bytes()
    (batches / "data_batch_3").write_bytes((batches / "data_batch_4").read_bytes())
    assert main(["prepare-data", "cifar10", "--root", str(root), "--offline"]) == 0
    assert (batches / "data_batch_3").read_bytes() != whole  # not noticed
    assert main(["prepare-data", "cifar10", "--root", str(root), "--offline",
                 "--extract-again"]) == 0
    assert (batches / "data_batch_3").read_bytes() == whole
    assert ready_marker(root, "cifar10").is_file()


def test_an_offline_prepare_without_the_archive_downloads_nothing(tmp_path, monkeypatch,
                                                                 cifar_archive):
    """--offline reaches the fetch: no archive in place is an error, not a download."""
    _, resource = cifar_archive
    use_resource(monkeypatch, "cifar10", resource)
    root = tmp_path / "data"
    with pytest.raises(DownloadError, match="offline mode: .* is missing"):
        prepare_dataset("cifar10", root, offline=True)
    assert not (root / ".downloads" / "cifar10" / resource.filename).exists()
    assert not ready_marker(root, "cifar10").exists()


def test_prepare_puts_plain_files_into_the_dataset_folder(tmp_path, monkeypatch):
    """Flowers' .mat files, no archives, are downloaded into the dataset folder itself (the
    archive into the downloads folder)."""
    src, www = tmp_path / "src", tmp_path / "www"
    write_flowers102(src)
    www.mkdir()
    with tarfile.open(www / "102flowers.tgz", "w:gz") as tar:
        tar.add(src / "jpg", arcname="jpg")
    for name in ("imagelabels.mat", "setid.mat"):
        (www / name).write_bytes((src / name).read_bytes())
    use_resource(monkeypatch, "flowers102", _served(www / "102flowers.tgz", extract=True),
                 _served(www / "imagelabels.mat"), _served(www / "setid.mat"))
    record = prepare_dataset("flowers102", tmp_path / "data")
    assert record["splits"] == {"train": 5, "val": 4, "test": 6}
    assert (tmp_path / "data" / "flowers102" / "setid.mat").is_file()


def test_prepare_extracts_each_archive_into_its_subfolder(tmp_path, monkeypatch):
    """VOC's two archives, both holding VOCdevkit/VOC2007, go to trainval/ and test/."""
    info = write_voc2007(tmp_path / "src")
    www = tmp_path / "www"
    www.mkdir()
    names = ("VOCtrainval_06-Nov-2007.tar", "VOCtest_06-Nov-2007.tar")
    for name in names:
        with tarfile.open(www / name, "w") as tar:
            tar.add(tmp_path / "src" / "VOCdevkit", arcname="VOCdevkit")
    use_resource(monkeypatch, "voc2007", *(_served(www / name, extract=True) for name in names))
    record = prepare_dataset("voc2007", tmp_path / "data")
    assert record["splits"] == {split: len(ids) for split, ids in info["splits"].items()}
    for split in ("trainval", "test"):
        assert (tmp_path / "data" / "voc2007" / split / "VOCdevkit" / "VOC2007").is_dir()


def test_prepare_with_a_folder_marks_that_folder_ready(tmp_path):
    """The marker of `--folder F` is F's: under ROOT/NAME it would call an empty folder ready."""
    write_imagefolder(tmp_path / "mine")
    root = tmp_path / "data"
    assert main(["prepare-data", "imagefolder", "--root", str(root), "--folder",
                 str(tmp_path / "mine")]) == 0
    assert json.loads((tmp_path / "mine" / READY).read_text())["classes"] == 3
    assert not ready_marker(root, "imagefolder").exists()


def test_a_failed_prepare_leaves_no_ready_marker(tmp_path, monkeypatch, cifar_archive):
    """Preparing again un-marks the dataset first: a failure leaves it not ready."""
    _, resource = cifar_archive
    use_resource(monkeypatch, "cifar10", resource)
    prepare_dataset("cifar10", tmp_path / "data")
    assert ready_marker(tmp_path / "data", "cifar10").is_file()
    use_resource(monkeypatch, "cifar10", dataclasses.replace(resource, md5="0" * 32))
    with pytest.raises(ChecksumError):
        prepare_dataset("cifar10", tmp_path / "data")
    assert not ready_marker(tmp_path / "data", "cifar10").exists()


@pytest.mark.parametrize("name, expected", [("imagenet", "LOC_val_solution.csv"),
                                             ("kitti", "label_2/<6-digit id>.txt")])
def test_manual_datasets_say_what_to_put_where(tmp_path, capsys, name, expected):
    """ImageNet, and KITTI, whose layout lives with the detection datasets (it was a KeyError)."""
    assert main(["prepare-data", name, "--root", str(tmp_path / "data")]) == 1
    err = capsys.readouterr().err
    assert "cannot be downloaded automatically" in err
    assert str(tmp_path / "data" / name) in err and err.count(expected) == 1  # said once
    assert not ready_marker(tmp_path / "data", name).exists()


def test_wrong_number_of_classes_is_refused(tmp_path):
    write_imagenet1k(tmp_path / "data" / "imagenet")  # a 5-class ImageNet
    with pytest.raises(DatasetLayoutError, match="should have 1000 classes, found 5"):
        prepare_dataset("imagenet", tmp_path / "data")


def test_a_label_past_the_last_class_is_refused():
    """A label equal to the class count would index past the classifier (a device assert on
    CUDA, mid-run)."""
    from relvit.data.loading import TensorSplit, _check

    spec = registry.DATASETS["cifar10"]
    split = TensorSplit(torch.zeros(3, 3, 32, 32, dtype=torch.uint8), torch.tensor([0, 9, 10]))
    with pytest.raises(DatasetLayoutError, match=r"labels span \[0, 10\], expected 0..9"):
        _check(spec, "train", split, [str(i) for i in range(10)], "data/cifar10")


def test_cifar_pretrain_then_finetune_through_the_cli(tmp_path):
    write_cifar(tmp_path / "cifar", 10, n_train=64, n_test=32)
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({
        "device": "cpu", "data": {"name": "cifar10", "folder": str(tmp_path / "cifar")},
        "model": TINY_MODEL, "optim": {"epochs": 1, "batch_size": 32}}))
    assert main(["pretrain", "--config", str(config), "--out", str(tmp_path / "pre"),
                 "--no-progress"]) == 0
    pre = json.loads((tmp_path / "pre" / "metrics.json").read_text())
    assert pre["pretext_positions"] == 64 and pre["eval_split"] == "test"  # 8x8 grid at 32 px
    assert main(["finetune", "--config", str(config), "--out", str(tmp_path / "fine"),
                 "--init", str(tmp_path / "pre" / "best.pt"), "--no-progress"]) == 0
    fine = json.loads((tmp_path / "fine" / "metrics.json").read_text())
    assert fine["backbone_label"] == "ViT/4 (D=36, depth 1, 3 heads)" and fine["classes"] == 10
    assert 0 <= fine["best_top1"] <= 100


def test_image_files_train_through_loader_workers(tmp_path, tiny_config):
    info = write_imagefolder(tmp_path / "images")
    cfg = tiny_config("supervised", data={"name": "imagefolder", "folder": str(tmp_path / "images"),
                                          "image_size": 32, "workers": 2},
                      model={"patch_size": 8}, optim={"epochs": 2, "batch_size": 4})
    whole = train(cfg, tmp_path / "a", progress=False)
    assert whole["classes"] == len(info["classes"]) == 3
    # crops seeded per image (SeededSamples): the same numbers without workers
    cfg.data.workers = 0
    again = train(cfg, tmp_path / "b", progress=False)
    assert again["last"] == whole["last"]


def test_augment_false_trains_image_files_without_random_crops(tmp_path, tiny_config):
    """`data.augment: false` gives image files the evaluation transform (it once kept
    RandomResizedCrop + flip): a batch no longer depends on the per-image crop stream."""
    from relvit.train.loop import Run

    write_imagefolder(tmp_path / "images")
    cfg = tiny_config("supervised", data={"name": "imagefolder", "folder": str(tmp_path / "images"),
                                          "image_size": 32, "workers": 0, "augment": False},
                      model={"patch_size": 8}, optim={"batch_size": 4})
    run = Run(cfg, tmp_path / "run")

    def first_batch(stream: int) -> torch.Tensor:
        run.sample_stream = lambda epoch: stream
        return next(iter(run.train_batches(0)))[0]

    assert torch.equal(first_batch(1), first_batch(2))
    run.cfg.data.augment = True
    assert not torch.equal(first_batch(1), first_batch(2))


def test_flowers_reports_val_and_test(tmp_path, tiny_config):
    write_flowers102(tmp_path / "flowers")
    cfg = tiny_config("supervised", data={"name": "flowers102", "folder": str(tmp_path / "flowers"),
                                          "image_size": 32, "workers": 0},
                      model={"patch_size": 8}, optim={"epochs": 1, "batch_size": 4})
    metrics = train(cfg, tmp_path / "run", progress=False)
    assert metrics["eval_split"] == "val" and metrics["classes"] == 102
    assert {"test_top1_at_best", "test_top1_last"} <= set(metrics)
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()[0].split(",")
    assert "val_acc_clf" in history and "test_acc_clf" in history


def test_missing_folder_and_unreadable_image_are_named(tmp_path, tiny_config, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({"data": {"name": "cifar10", "root": str(tmp_path / "nothing")},
                                  "model": TINY_MODEL}))
    assert main(["supervised", "--config", str(config), "--out", str(tmp_path / "o")]) == 1
    assert str(tmp_path / "nothing" / "cifar10") in capsys.readouterr().err
    write_imagefolder(tmp_path / "images")
    broken = tmp_path / "images" / "train" / "cat" / "c1.jpg"
    broken.write_bytes(broken.read_bytes()[:40])  # a truncated JPEG
    cfg = tiny_config("supervised", data={"name": "imagefolder", "folder": str(tmp_path / "images"),
                                          "image_size": 32, "workers": 0},
                      model={"patch_size": 8}, optim={"epochs": 1, "batch_size": 8})
    with pytest.raises(DatasetLayoutError, match="c1.jpg"):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_array_datasets_live_in_memory_as_uint8(tmp_path, tiny_config):
    """CIFAR's rows (three planes of 32 rows each) held as [N, C, H, W] uint8, pixel for pixel,
    and made [0, 1] floats on the way to the model."""
    info = write_cifar(tmp_path / "cifar", 10, n_train=16, n_test=8)
    cfg = tiny_config("supervised", data={"name": "cifar10", "folder": str(tmp_path / "cifar")})
    from relvit.train.loop import Run

    run = Run(cfg, tmp_path / "run")
    assert run.splits.train.images.dtype == torch.uint8
    assert torch.equal(run.splits.train.images,
                       torch.from_numpy(info["train"]["data"]).view(16, 3, 32, 32))
    assert run.splits.train.labels.dtype == torch.long
    pixels = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1).repeat(1, 1, 2, 2)
    assert to_float_images(pixels, 2)[0, :, 0, 0].tolist() == pytest.approx([0.0, 0.2, 1.0])


WRITERS = {
    "cifar10": lambda root: write_cifar(root, 10, n_train=12, n_test=6),
    "cifar100": lambda root: write_cifar(root, 100, n_train=12, n_test=6),
    "svhn": lambda root: write_svhn(root, n_train=12, n_test=6),
    "flowers102": write_flowers102,
    "tiny_imagenet": write_tiny_imagenet,
    "imagenet100": write_imagenet100,
    "imagenet": write_imagenet1k,
    "imagefolder": write_imagefolder,
}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_every_format_loads_and_batches_as_a_run_does(tmp_path, name):
    """Each real-format fixture through load_splits and a training and an evaluation batch."""
    info = WRITERS[name](tmp_path / name)
    spec = registry.DATASETS[name]
    if spec.num_classes and "classes" in info:  # the ImageNet-style fixtures have a few classes
        spec = dataclasses.replace(spec, num_classes=len(info["classes"]))
    splits = load_splits(spec, DataConfig(name=name, folder=str(tmp_path / name)), 32)
    assert list(splits.evals)[0] == spec.eval_split
    eval_split = next(iter(splits.evals.values()))
    for split, training in ((splits.train, True), (eval_split, False)):
        transform = file_transform(spec, 32, training)
        images, labels = next(iter(batches(split, torch.arange(len(split.labels)), 4, transform)))
        images = to_float_images(images, 32)
        assert images.shape[1:] == (3, 32, 32) and images.dtype == torch.float32
        assert 0 <= images.min() and images.max() <= 1
        assert labels.dtype == torch.long and labels.max() < len(splits.classes)


def test_prepare_a_detection_dataset_in_its_split_folders(tmp_path, monkeypatch):
    """VOC's two archives both hold VOCdevkit/VOC2007: prepare-data keeps one folder per split."""
    from fixtures.detection import write_voc2007

    for split in ("trainval", "test"):
        info = write_voc2007(tmp_path / "data" / "voc2007" / split)
    monkeypatch.setitem(registry.DATASETS, "voc2007",
                        dataclasses.replace(registry.DATASETS["voc2007"], resources=()))
    record = prepare_dataset("voc2007", tmp_path / "data")
    assert record["splits"] == {split: len(ids) for split, ids in info["splits"].items()}
    assert record["classes"] == 20


def test_prepare_data_names_an_unknown_dataset_plainly(tmp_path, capsys):
    """The message came as a KeyError's repr, in quotes."""
    assert main(["prepare-data", "cifar11", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("relvit: error: unknown dataset 'cifar11'; known: digits, ")


def _interrupt_in_a_worker(image):
    """A transform that sends Ctrl-C's SIGINT to the worker process it runs in (the terminal
    sends it to the whole process group)."""
    import os
    import signal

    if torch.utils.data.get_worker_info() is not None:
        os.kill(os.getpid(), signal.SIGINT)
    return torch.zeros(3, 4, 4, dtype=torch.uint8)


def test_loader_workers_leave_ctrl_c_to_the_main_process(tmp_path):
    """A worker that took Ctrl-C died (KeyboardInterrupt), and the main process, in the middle
    of handling its own, ended with "DataLoader worker exited unexpectedly", exit 1."""
    from relvit.data.loading import FileSplit

    write_imagefolder(tmp_path / "images")
    paths = [tmp_path / "images" / "train" / "cat" / name for name in ("c1.jpg", "c2.png")] * 2
    split = FileSplit(paths, torch.zeros(len(paths), dtype=torch.long))
    got = list(batches(split, torch.arange(len(paths)), 2, _interrupt_in_a_worker, workers=1))
    assert sum(len(labels) for _, labels in got) == len(paths)


def test_relvit_traceback_raises_what_the_command_would_print(tmp_path, monkeypatch):
    """RELVIT_TRACEBACK=1: the error the command prints as one line is raised, for its
    traceback (a ValueError from deep inside a library said only its message)."""
    monkeypatch.setenv("RELVIT_TRACEBACK", "1")
    with pytest.raises(KeyError, match="unknown dataset 'cifar11'"):
        main(["prepare-data", "cifar11", "--root", str(tmp_path)])


def test_each_eval_split_is_read_from_its_own_split(tmp_path):
    """Flowers: the reported split is val, the extra one test; each holds its own images."""
    written = write_flowers102(tmp_path / "flowers")
    spec = registry.DATASETS["flowers102"]
    splits = load_splits(spec, DataConfig(name="flowers102", folder=str(tmp_path / "flowers")), 32)
    assert list(splits.evals) == ["val", "test"]
    for name in ("val", "test"):
        got = splits.evals[name]
        assert [p.name for p in got.paths] == [f"image_{i:05d}.jpg" for i in written["ids"][name]]
        np.testing.assert_array_equal(got.labels.numpy(), written["expected"][name])
    assert [p.name for p in splits.train.paths] == [f"image_{i:05d}.jpg"
                                                    for i in written["ids"]["train"]]
