"""Detection runs end to end on a few embedded digit scenes: every variant of Tables 2-3 trains,
evaluates with pycocotools, resumes exactly, and loads a pretrain run's backbone."""

import csv

import pytest
import torch

from fixtures.runs import TINY_DETECTOR
from relvit.detection.scenes import write_digit_scenes
from relvit.train.loop import train


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    write_digit_scenes(root, n_train=12, n_val=6, canvas=64, seed=0)
    return root


@pytest.fixture
def detect_config(tiny_config, scenes):
    def make(**overrides):
        base = {"data": {"name": "digit_scenes", "folder": str(scenes), "workers": 0},
                "model": {"patch_size": 8}, "detection": TINY_DETECTOR,
                "optim": {"epochs": 2, "batch_size": 4, "lr": 1e-3, "schedule": "step",
                          "clip_grad": 0.0}}
        for key, value in overrides.items():
            base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
        return tiny_config("detect", **base)

    return make


def test_supervised_detection_with_masks(tmp_path, detect_config):
    metrics = train(detect_config(), tmp_path / "run", progress=False)
    assert metrics["masks"] is True and metrics["classes"] == 10
    for kind in ("bbox", "segm"):
        for name in ("mAP", "mAP50", "mAP75"):
            assert 0 <= metrics["last_map"][kind][name] <= 100
    assert "train_loss_mask" in metrics["last"] and "train_loss_rel" not in metrics["last"]
    header = (tmp_path / "run" / "history.csv").read_text().splitlines()[0]
    assert "val_bbox_mAP50" in header and "val_segm_mAP75" in header


def test_the_numbers_do_not_depend_on_the_loader_workers(tmp_path, detect_config):
    """Each image's random IoU crop and flip are seeded by the image (SeededSamples)."""
    runs = [train(detect_config(data={"workers": workers}, detection={"iou_crop": True},
                                optim={"epochs": 1}), tmp_path / f"w{workers}", progress=False)
            for workers in (0, 2)]
    assert runs[0]["last"] == runs[1]["last"]


def test_augment_false_trains_detection_without_crop_or_flip(tmp_path, detect_config):
    """`data.augment: false` reaches the detection images too: a training image is then the
    same whatever its seed."""
    from relvit.detection.train import DetectionRun

    def first_image(augment: bool, stream: int):
        run = DetectionRun(detect_config(data={"augment": augment}, detection={"iou_crop": True}),
                           tmp_path / f"{augment}-{stream}")
        run.sample_stream = lambda epoch: stream
        images, _ = next(iter(run.train_batches(0)))
        return images[0]

    assert (first_image(False, 1) == first_image(False, 2)).all()
    assert any(first_image(True, 1).shape != first_image(True, stream).shape
               or not (first_image(True, 1) == first_image(True, stream)).all()
               for stream in range(2, 6))


def test_training_images_are_cropped_and_flipped_as_configured(tmp_path, detect_config,
                                                               monkeypatch):
    """The IoU crop only where `detection.iou_crop` asks for it (off by default); the flip where
    the registry's `flip` says so (every detection dataset flips today)."""
    import dataclasses

    from torchvision.transforms import v2

    from relvit.data import registry
    from relvit.detection.train import DetectionRun

    def steps(**detection):
        run = DetectionRun(detect_config(detection=detection), tmp_path / str(detection))
        transform = run._images_dataset(True).transform
        return None if transform is None else [type(t) for t in transform.transforms]

    assert steps() == [v2.RandomHorizontalFlip]
    assert v2.RandomIoUCrop in steps(iou_crop=True)
    spec = dataclasses.replace(registry.DATASETS["digit_scenes"], flip=False)
    monkeypatch.setitem(registry.DATASETS, "digit_scenes", spec)
    assert steps() is None


def test_the_run_config_reaches_the_detector(tmp_path, detect_config, monkeypatch):
    """Its classes plus the background, the head sizes of `detection`, and the backbone keys of
    `model` (drop-path included)."""
    import relvit.detection.train as detection_train

    built = {}
    build = detection_train.build_backbone
    monkeypatch.setattr(detection_train, "build_backbone",
                        lambda *a, **kw: built.update(kw) or build(*a, **kw))
    cfg = detect_config(detection={"roi_batch_size": 24, "rpn_train_proposals": 60},
                        model={"drop_path_rate": 0.25, "drop_rate": 0.05})
    rcnn = detection_train.DetectionRun(cfg, tmp_path / "run").model
    assert (built["drop_path_rate"], built["drop_rate"]) == (0.25, 0.05)
    assert (built["embed_dim"], built["depth"]) == (cfg.model.embed_dim, cfg.model.depth)
    assert rcnn.roi_heads.box_predictor.cls_score.out_features == 10 + 1
    assert rcnn.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 10 + 1
    assert rcnn.rpn._pre_nms_top_n == {"training": 60, "testing": 30}
    assert rcnn.rpn._post_nms_top_n == {"training": 60, "testing": 30}
    assert rcnn.roi_heads.fg_bg_sampler.batch_size_per_image == 24
    assert rcnn.roi_heads.box_head.fc7.out_features == TINY_DETECTOR["box_representation"]
    assert rcnn.backbone.out_channels == TINY_DETECTOR["fpn_channels"]
    assert rcnn.roi_heads.detections_per_img == 100
    width = TINY_DETECTOR["mask_head_width"]
    assert [block[0].out_channels for block in rcnn.roi_heads.mask_head] == [width] * 4


@pytest.mark.parametrize("diagonal", [False, True])
def test_relation_diagonal_reaches_the_joint_detector(tmp_path, detect_config, diagonal):
    from relvit.detection.train import DetectionRun

    run = DetectionRun(detect_config(detection={"ssl_joint": True, "masks": False},
                                     ssl={"relation_diagonal": diagonal}), tmp_path / "run")
    assert run.model.include_diagonal is diagonal


@pytest.mark.parametrize("keep_aspect", [False, True])
def test_keep_aspect_reaches_the_detector(tmp_path, detect_config, keep_aspect):
    from relvit.detection.train import DetectionRun

    run = DetectionRun(detect_config(detection={"keep_aspect": keep_aspect}), tmp_path / "run")
    fixed = run.model.transform.fixed_size
    assert fixed == (None if keep_aspect else (64, 64))


def test_the_detector_normalises_with_its_datasets_statistics(tmp_path, detect_config,
                                                                 monkeypatch):
    """The registry's statistics, as the dataset's pretraining normalises: a detector fixed on
    ImageNet's would see other inputs than its pretrained backbone did, were they to differ."""
    import dataclasses

    from relvit.data import registry
    from relvit.detection.train import DetectionRun

    stats = ((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    spec = dataclasses.replace(registry.DATASETS["digit_scenes"], stats=stats)
    monkeypatch.setitem(registry.DATASETS, "digit_scenes", spec)
    run = DetectionRun(detect_config(), tmp_path / "run")
    assert (tuple(run.model.transform.image_mean), tuple(run.model.transform.image_std)) == stats


def test_detection_loader_workers_leave_ctrl_c_to_the_main_process(tmp_path, detect_config):
    """As the classification loaders' (tests/test_datasets.py): a worker that took Ctrl-C died
    under the main process, which then failed with "worker exited unexpectedly"."""
    from relvit.detection.train import DetectionRun
    from relvit.interrupts import ignore_interrupt

    run = DetectionRun(detect_config(), tmp_path / "run")
    assert run._epoch_loader(True).loader.worker_init_fn is ignore_interrupt


def test_joint_ssl_and_box_only(tmp_path, detect_config):
    metrics = train(detect_config(detection={"ssl_joint": True, "masks": False}),
                    tmp_path / "run", progress=False)
    assert metrics["ssl_joint"] and not metrics["masks"]
    assert {"train_loss_rel", "train_loss_pos"} <= set(metrics["last"])
    assert "train_loss_mask" not in metrics["last"] and "segm" not in metrics["last_map"]
    # the loss trained on is the unweighted sum of the R-CNN's and the SSL heads' losses
    terms = [v for k, v in metrics["last"].items() if k.startswith("train_loss_")]
    assert len(terms) == 6 and metrics["last"]["train_loss"] == pytest.approx(sum(terms))


def test_the_best_epoch_has_the_highest_box_map(tmp_path, detect_config, monkeypatch):
    """best.pt and best_map come from the epoch of the highest validation box mAP: epoch 2 of
    3 here, whose mAP is neither the first's nor the last's."""
    from relvit.detection.train import DetectionRun

    scripted = [10.0, 30.0, 20.0]
    mAP50 = [40.0, 5.0, 50.0]  # another score picks other epochs
    evaluation = DetectionRun.evaluation
    monkeypatch.setattr(DetectionRun, "evaluation", lambda self, epoch: {
        **evaluation(self, epoch), "val_bbox_mAP": scripted[epoch],
        "val_bbox_mAP50": mAP50[epoch]})
    metrics = train(detect_config(detection={"masks": False}, optim={"epochs": 3}),
                    tmp_path / "run", progress=False)
    assert metrics["best_epoch"] == 2 and metrics["best_map"]["bbox"]["mAP"] == 30.0
    assert metrics["best_map"]["bbox"]["mAP50"] == 5.0
    assert metrics["last_map"]["bbox"]["mAP"] == 20.0


def test_upstream_pretrain_on_the_detection_images(tmp_path, tiny_config, detect_config,
                                                   scenes):
    pre = tiny_config("pretrain", data={"name": "digit_scenes", "folder": str(scenes),
                                        "workers": 0},
                      model={"patch_size": 8}, optim={"epochs": 1, "batch_size": 4})
    assert train(pre, tmp_path / "pre", progress=False)["pretext_positions"] == 64
    cfg = detect_config(init_checkpoint=str(tmp_path / "pre" / "best.pt"))
    metrics = train(cfg, tmp_path / "det", progress=False)
    assert metrics["fresh_backbone_keys"] == ["vit.pos_embed"]
    wider = detect_config(init_checkpoint=str(tmp_path / "pre" / "best.pt"),
                          model={"embed_dim": 48})
    from relvit.train.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="does not fit"):
        train(wider, tmp_path / "wider", progress=False)


def test_detection_resumes_exactly(tmp_path, detect_config):
    cfg = detect_config()
    whole = train(cfg, tmp_path / "whole", progress=False)
    assert train(cfg, tmp_path / "split", stop_after=1, progress=False) is None
    resumed = train(cfg, tmp_path / "split", progress=False)
    assert resumed["last"] == whole["last"] and resumed["best_map"] == whole["best_map"]


def test_evaluating_every_other_epoch_changes_no_training(tmp_path, detect_config):
    """`eval_every: 2` of 3 epochs evaluates after epochs 2 and 3 (the last always), and the
    run trains as one evaluated every epoch: the smoke and CI tiers rely on it, as their tables
    read the last epoch."""
    runs = {every: train(detect_config(detection={"eval_every": every}, optim={"epochs": 3}),
                         tmp_path / f"every{every}", progress=False) for every in (1, 2)}
    with (tmp_path / "every2" / "history.csv").open() as handle:
        evaluated = [row["val_bbox_mAP"] != "" for row in csv.DictReader(handle)]
    assert evaluated == [False, True, True]
    assert runs[2]["last"] == runs[1]["last"] and runs[2]["last_map"] == runs[1]["last_map"]
    assert runs[2]["best_epoch"] in (2, 3)


def test_detection_needs_a_detection_dataset(tiny_config):
    from relvit.config import ConfigError

    with pytest.raises(ConfigError, match="mode 'detect' needs a detection dataset"):
        tiny_config("detect")
    with pytest.raises(ConfigError, match="mode 'supervised' needs a classification dataset"):
        tiny_config("supervised", data={"name": "voc2007"})


def test_detections_single_process_order_is_the_shuffled_loaders(tmp_path, detect_config):
    """The order a single-process detection run has drawn since before its loaders kept their
    workers: a shuffled DataLoader's, with a generator seeded by (seed, epoch)."""
    from torch.utils.data import DataLoader

    from relvit.detection.train import DetectionRun
    from relvit.train.loop import _epoch_seed

    run = DetectionRun(detect_config(), tmp_path / "run")
    n = run.train_size()
    for epoch in range(3):
        generator = torch.Generator().manual_seed(_epoch_seed(run.cfg.seed, epoch, 1))
        shuffled = DataLoader(range(n), batch_size=n, shuffle=True, generator=generator)
        assert run.single_process_order(epoch).tolist() == next(iter(shuffled)).tolist()
