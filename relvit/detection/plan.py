"""The runs of Tables 2-3: every (dataset, backbone, variant) row of the paper's detection tables,
read from results/paper/tables.csv, as detection runs and the SSL pretrain runs they start from.

Variants (method spec §6.3; tables' columns Upstream / Perm. / Mega-patch): supervised (random
init); joint ("upstream ✗": the SSL losses trained with the detector); upstream ("✓": the
backbone of a pretrain run on the dataset's training images), with patch permutation and/or
mega-patches in that pretraining. A `stand_in` dataset (the smoke tier's digit scenes) replaces
every table's dataset while keeping the tables' rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from relvit.data.registry import DATASETS
from relvit.models.specs import get_backbone_spec

PAPER_BACKBONES = {"vit": ("ViT", "ViT-S"), "swin": ("Swin",), "t2t": ("T2T-ViT",)}


@dataclass(frozen=True)
class Variant:
    """One row kind of Tables 2-3."""

    upstream: bool | None  # None: the supervised baseline
    perm: bool = False
    mega: bool = False

    @property
    def name(self) -> str:
        if self.upstream is None:
            return "supervised"
        if not self.upstream:
            return "joint"
        return "upstream" + ("-perm" if self.perm else "") + ("-mega" if self.mega else "")

    @property
    def method(self) -> str:
        """The run-id method of the detection run."""
        return "det_" + self.name.replace("-", "_")

    @property
    def pretrain_method(self) -> str | None:
        """The run-id method of the pretrain run it starts from (upstream rows only)."""
        if not self.upstream:
            return None
        return "pretrain_det" + ("_perm" if self.perm else "") + ("_mega" if self.mega else "")


@dataclass(frozen=True)
class TableRow:
    """A row of Table 2 or 3 and the run that fills it."""

    table: int
    dataset: str  # registry name of the paper's dataset
    backbone: str  # registry name
    variant: Variant
    run_dataset: str  # the dataset actually run (the stand-in in the smoke tier)


def _flag(value: object) -> bool:
    return str(value).strip().lower() == "yes"


def paper_variants(paper: pd.DataFrame, table: int, dataset: str, backbone: str) -> list[Variant]:
    """The variants the paper reports for one dataset and backbone, in the paper's row order."""
    title = DATASETS[dataset].title
    names = PAPER_BACKBONES[get_backbone_spec(backbone).family]
    rows = paper[(paper["table"] == table) & (paper["dataset"] == title)
                 & (paper["backbone"].isin(names))]
    variants: list[Variant] = []
    for _, row in rows.iterrows():
        if row["method"] == "Supervised":
            variant = Variant(None)
        else:
            variant = Variant(_flag(row["upstream"]), _flag(row["permutation"]),
                              _flag(row["megapatch"]))
        if variant not in variants:
            variants.append(variant)
    return variants


def table_rows(detection: dict, paper_csv: str | Path) -> list[TableRow]:
    """Every row of the configured tables (`detection.tables`), from the paper's own rows."""
    paper = pd.read_csv(paper_csv)
    stand_in = detection.get("stand_in")
    rows = []
    for table, spec in sorted((int(t), s) for t, s in detection["tables"].items()):
        for dataset in spec["datasets"]:
            for backbone in spec["backbones"]:
                for variant in paper_variants(paper, table, dataset, backbone):
                    rows.append(TableRow(table, dataset, backbone, variant, stand_in or dataset))
    return rows
