"""The names of a run's history.csv columns: one place for the loops that write them and for
what reads them (metrics.json, train.log's lines, the figures, bench/compare_runs.py).

A row holds, per epoch, "train_<stat>" (the training mean of every statistic a step returns)
and "<split>_<stat>" for every evaluation split: "val" for the reported one (spec §5.3), the
split's own name for any other (Flowers-102's test, Q18). The statistics are "loss", the loss
terms and the accuracies below (`Objective.losses`), or detection's COCO scores,
"<iou type>_<score>" (`DetectionRun.evaluation`). The timing columns are
`relvit.train.timing.TIMING_KEYS`. No imports: a light module.
"""

from __future__ import annotations

TRAIN, VAL = "train", "val"  # the prefixes of the training means and of the reported split
LOSS = "loss"  # the sum of the active loss terms
TOP1, RELATIONS, POSITIONS = "acc_clf", "acc_rel", "acc_pos"  # accuracies, fractions in [0, 1]


def column(split: str, stat: str) -> str:
    """The column of statistic `stat` of `split` ("train", "val" or a split's name)."""
    return f"{split}_{stat}"


def map_stat(iou_type: str, score: str) -> str:
    """Detection's statistic of COCO score `score` ("mAP", ...) of `iou_type` ("bbox", "segm")."""
    return f"{iou_type}_{score}"


TRAIN_LOSS, VAL_LOSS = column(TRAIN, LOSS), column(VAL, LOSS)
VAL_TOP1 = column(VAL, TOP1)
VAL_RELATIONS, VAL_POSITIONS = column(VAL, RELATIONS), column(VAL, POSITIONS)
VAL_BOX_MAP = column(VAL, map_stat("bbox", "mAP"))  # in AP points
VAL_MASK_MAP = column(VAL, map_stat("segm", "mAP"))
