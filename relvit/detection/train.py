"""Detection runs (mode `detect`, Tables 2-3): the shared training loop of relvit.train.loop with
a torchvision R-CNN on a backbone pyramid, COCO-format data and pycocotools evaluation.

Variants (method spec §6.3): Supervised = random init; RelViT "upstream ✗" =
`detection.ssl_joint`, the SSL losses trained with the detector; RelViT "upstream ✓" = the
backbone of a pretrain run on the detection dataset's training images (`init_checkpoint`).
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch import nn

from relvit.data.loading import EpochLoader, dataset_folder, index_batches
from relvit.detection.data import read_detection
from relvit.detection.evaluate import coco_evaluate, predictions_to_coco
from relvit.detection.loader import DetectionImages, collate, ground_truth
from relvit.detection.models import HeadSizes, JointSSLDetector, backbone_of, build_detector
from relvit.detection.plan import METRICS
from relvit.models.backbones import build_backbone
from relvit.train import distributed
from relvit.train.columns import LOSS, VAL, VAL_BOX_MAP, column, map_stat
from relvit.train.loop import Run, _epoch_seed


class DetectionRun(Run):
    """A Run whose model is a (Mask/Faster) R-CNN and whose metric is COCO mAP."""

    def setup(self) -> nn.Module:
        """The detection splits, the evaluation's ground truth and the detector (with the SSL
        heads for a joint run)."""
        cfg, spec = self.cfg, self.dataset
        folder = dataset_folder(spec, cfg.data)
        self.train_set = read_detection(spec, folder, spec.train_split)
        self.eval_set = read_detection(spec, folder, spec.eval_split)
        self.masks = self.train_set.has_masks if cfg.detection.masks is None \
            else cfg.detection.masks
        self.iou_types = ("bbox", "segm") if self.masks else ("bbox",)
        self.ground_truth = ground_truth(self.eval_set)
        self._image_sets: dict[str, DetectionImages] = {}
        m = cfg.model
        backbone = build_backbone(
            m.backbone, img_size=self.geo.image_size, patch_size=self.geo.patch_size,
            embed_dim=m.embed_dim, depth=m.depth, num_heads=m.num_heads, mlp_ratio=m.mlp_ratio,
            window_size=m.window_size, pos_embed=cfg.pos_embed, drop_rate=m.drop_rate,
            drop_path_rate=m.drop_path_rate)
        d = cfg.detection
        heads = HeadSizes(box_representation=d.box_representation,
                          mask_head_width=d.mask_head_width, roi_batch_size=d.roi_batch_size,
                          rpn_train_proposals=d.rpn_train_proposals)
        detector = build_detector(backbone, len(self.train_set.categories), self.geo.image_size,
                                  self.masks, d.fpn_channels, heads=heads,
                                  keep_aspect=d.keep_aspect, stats=self.dataset.stats)
        if cfg.detection.ssl_joint:
            return JointSSLDetector(detector, self.geo.image_size, cfg.ssl.relation_diagonal)
        return detector

    def backbone(self) -> nn.Module:
        return backbone_of(self.model)

    def compile_model(self, model: nn.Module) -> nn.Module:
        """torch.compile with its automatic dynamic shapes: detection images and proposal counts
        vary from batch to batch, so static shapes would recompile without end."""
        return torch.compile(model, mode=self.cfg.compile_mode)

    def _images_dataset(self, train: bool) -> DetectionImages:
        """The (image, target) dataset of a split, built once per run."""
        key = "train" if train else "eval"
        if key not in self._image_sets:
            augment = self.cfg.data.augment  # false: no flip, no IoU crop
            self._image_sets[key] = DetectionImages(
                self.train_set if train else self.eval_set, train=train,
                flip=self.dataset.flip and augment,
                iou_crop=self.cfg.detection.iou_crop and augment)
        return self._image_sets[key]

    def train_size(self) -> int:
        return len(self._images_dataset(True))

    def _epoch_loader(self, train: bool) -> EpochLoader:
        """The split's loader, whose workers serve every epoch; each training image's
        augmentation is seeded by (the epoch's seed, its index): `SeededSamples`."""
        if train not in self.loaders:
            self.loaders[train] = EpochLoader(
                self._images_dataset(train), self.cfg.data.workers,
                pin_memory=self.device.type == "cuda", seeded=train, collate_fn=collate)
        return self.loaders[train]

    def train_batches(self, epoch: int) -> Iterator[Any]:
        if self.world == 1:
            batches = index_batches(self.single_process_order(epoch), self.cfg.optim.batch_size)
        else:
            batches = [shard.tolist() for shard in self.shards(self.epoch_order(epoch))]
        return self._epoch_loader(True).batches(batches, self.sample_stream(epoch))

    def single_process_order(self, epoch: int) -> torch.Tensor:
        """A single process's order of the epoch's training images, as it was drawn before these
        runs kept their loaders (and is kept, so that their numbers stay): by a shuffled
        DataLoader with a generator seeded by (seed, epoch), which gave its workers' seed first."""
        generator = torch.Generator().manual_seed(_epoch_seed(self.cfg.seed, epoch, 1))
        torch.empty((), dtype=torch.int64).random_(generator=generator)  # the workers' seed
        return torch.randperm(self.train_size(), generator=generator)

    def eval_batches(self) -> Iterator[Any]:
        """This rank's share of the evaluation split, in order, in batches of images and
        targets."""
        part = self.eval_part(len(self._images_dataset(False)))
        return self._epoch_loader(False).batches(index_batches(part, self.eval_batch_size()))

    def _to_device(self, images: list, targets: list | None = None) -> tuple[list, list | None]:
        images = [image.to(self.device).float().div_(255) for image in images]
        if targets is not None:
            targets = [{k: v.to(self.device) if torch.is_tensor(v) else v for k, v in t.items()}
                       for t in targets]
        return images, targets

    def train_loss(self, data: Any, generator: torch.Generator, full: bool = True
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        """The summed R-CNN (and joint SSL) losses of one batch, each loss by name, and the
        batch's image count. Every batch takes the training model, `full` or not: its compiled
        graphs take dynamic shapes (`compile_model`)."""
        images, targets = self._to_device(*data)
        with torch.autocast(self.device.type, dtype=torch.bfloat16,
                            enabled=self.cfg.autocast_on(self.device.type)):
            losses = self.train_model(images, targets)
        loss = torch.stack([v.float() for v in losses.values()]).sum()
        stats = {k: v.detach() for k, v in losses.items()}
        stats[LOSS] = loss.detach()
        return loss, stats, len(images)

    @torch.no_grad()
    def evaluation(self, epoch: int) -> dict[str, float]:
        """COCO mAP on the whole evaluation split, every `eval_every` epochs and the last.

        Under torchrun each rank predicts its share of the split; rank 0 scores them all and
        shares the scores.
        """
        every = self.cfg.detection.eval_every
        if (epoch + 1) % every and epoch + 1 != self.cfg.optim.epochs:
            return {}
        self.model.eval()
        predictions = []
        for images, targets in self.eval_batches():
            images, _ = self._to_device(images)
            with torch.autocast(self.device.type, dtype=torch.bfloat16,
                                enabled=self.cfg.autocast_on(self.device.type)):
                outputs = self.model(images)
            outputs = [{k: v.float().cpu() for k, v in out.items()} for out in outputs]
            predictions += predictions_to_coco(outputs, [t["image_id"] for t in targets])
        gathered = distributed.gather_to_main(predictions)
        scores = coco_evaluate(self.ground_truth, [p for part in gathered for p in part],
                               self.iou_types) if distributed.is_main() else None
        scores = distributed.broadcast_object(scores)
        return {column(VAL, map_stat(kind, name)): scores[kind][name]
                for kind in self.iou_types for name in METRICS}

    def selection(self) -> tuple[str, bool]:
        return VAL_BOX_MAP, True

    def task_metrics(self) -> dict[str, Any]:
        last, best = self.history[-1], self.best
        metrics: dict[str, Any] = {"eval_split": self.dataset.eval_split,
                                   "classes": len(self.train_set.categories), "masks": self.masks,
                                   "ssl_joint": self.cfg.detection.ssl_joint}
        for which, row in (("best", best), ("last", last)):
            metrics[f"{which}_map"] = {kind: {name: row.get(column(VAL, map_stat(kind, name)))
                                              for name in METRICS} for kind in self.iou_types}
        return metrics
