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
from relvit.config import ConfigError
from relvit.models.specs import BACKBONES, get_backbone_spec
from relvit.report.gather import read_paper

PAPER_BACKBONES = {"vit": ("ViT", "ViT-S"), "swin": ("Swin",), "t2t": ("T2T-ViT",)}
# the COCO AP numbers of Tables 2-3: what a detection run records per epoch (metrics.json
# `last_map`, `best_map`) and the tables read
METRICS = ("mAP", "mAP50", "mAP75")


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


def paper_row_variant(row: pd.Series) -> Variant:
    """The variant of a row of the paper's Table 2 or 3 (tables.csv): "Supervised", else its
    upstream / permutation / megapatch flags ("yes" or "no")."""
    if row["method"] == "Supervised":
        return Variant(None)
    return Variant(_flag(row["upstream"]), _flag(row["permutation"]), _flag(row["megapatch"]))


def paper_variants(paper: pd.DataFrame, table: int, dataset: str, backbone: str) -> list[Variant]:
    """The variants the paper reports for one dataset and backbone, in the paper's row order."""
    title = DATASETS[dataset].title
    names = PAPER_BACKBONES[get_backbone_spec(backbone).family]
    rows = paper[(paper["table"] == table) & (paper["dataset"] == title)
                 & (paper["backbone"].isin(names))]
    variants: list[Variant] = []
    for _, row in rows.iterrows():
        variant = paper_row_variant(row)
        if variant not in variants:
            variants.append(variant)
    return variants


def table_rows(detection: dict, paper_csv: str | Path) -> list[TableRow]:
    """Every row of the configured tables (`detection.tables`), from the paper's own rows;
    ConfigError naming the key for a dataset or backbone that is unknown or has no row there."""
    paper = read_paper(paper_csv)
    stand_in = detection.get("stand_in")
    rows, problems = [], []
    for table, spec in sorted((int(t), s) for t, s in detection["tables"].items()):
        key = f"detection.tables.{table}"
        datasets = _known(spec["datasets"], f"{key}.datasets", problems)
        backbones = _known(spec["backbones"], f"{key}.backbones", problems)
        found = {(d, b): paper_variants(paper, table, d, b) for d in datasets for b in backbones}
        for names, what, others in ((datasets, "datasets", backbones),
                                    (backbones, "backbones", datasets)):
            for name in names:
                if others and not any(v for pair, v in found.items() if name in pair):
                    problems.append(f"{key}.{what}: {name} has no row in the paper's Table "
                                    f"{table} (with {', '.join(others)})")
        rows += [TableRow(table, d, b, variant, stand_in or d)
                 for (d, b), variants in found.items() for variant in variants]
    if problems:
        raise ConfigError(problems, "workflow config")
    return rows


def _known(names: list[str], key: str, problems: list[str]) -> list[str]:
    """The names of a detection table's datasets or backbones that exist; the others noted."""
    known = []
    for name in names:
        if key.endswith("datasets") and (name not in DATASETS
                                         or DATASETS[name].task != "detection"):
            detection = [d for d, spec in DATASETS.items()  # the paper's: not the stand-in
                         if spec.task == "detection" and not spec.embedded]
            problems.append(f"{key}: unknown detection dataset {name!r}; known: "
                            f"{', '.join(detection)}")
        elif key.endswith("backbones") and name not in BACKBONES:
            problems.append(f"{key}: unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
        else:
            known.append(name)
    return known
