"""Figures: per table, a bar chart of the reproduced cells beside the paper's (error bars: the
std over seeds, the paper's ±), and the training curves of each run (history.csv: losses and the
validation metric per epoch, the seeds of one method overlaid).

The bars are drawn from relvit.report.compare's cells, the same numbers as compare.md.
matplotlib (Agg backend) is imported on first use, about 0.7 s.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from relvit.report.compare import (NO_VALUE, NOT_RUN, OTHER_MODEL, RUN_FAILED, STAND_IN,
                                   Comparison)
from relvit.layout import HISTORY, METRICS, run_id_fields
from relvit.report.provenance import read_metrics, run_id
from relvit.report.table1 import Cell
from relvit.train.columns import (TRAIN_LOSS, VAL_BOX_MAP, VAL_LOSS, VAL_POSITIONS,
                                   VAL_RELATIONS, VAL_TOP1)
from relvit.train.failure import is_failed

# history.csv columns drawn in the metric panel: column -> (label, scale to %)
VAL_METRICS = {VAL_TOP1: ("top-1 (%)", 100.0), VAL_RELATIONS: ("relations (%)", 100.0),
               VAL_POSITIONS: ("positions (%)", 100.0), VAL_BOX_MAP: ("box mAP", 1.0)}
LOSSES = (TRAIN_LOSS, VAL_LOSS)
STYLES = ("-", "--", ":")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _mean(cell: Cell) -> float:
    return math.nan if cell.mean is None else cell.mean


def _label(cell: Comparison) -> str:
    method = (cell.method.replace("upstream ", "up ").replace("perm ", "P ")
              .replace("mega ", "M ").replace("✓", "+").replace("✗", "-"))
    return f"{cell.backbone if cell.table == 2 else cell.dataset}\n{method}"


def bar_chart(cells: list[Comparison], table: int, out_dir: str | Path,
              tier: str = "custom") -> list[Path]:
    """`<out_dir>/table<N>.png` and `.pdf`: one panel per metric."""
    plt = _pyplot()
    from matplotlib.patches import Patch

    cells = [c for c in cells if c.table == table]
    if not cells:
        raise ValueError(f"table {table}: no cells to draw")
    metrics = list(dict.fromkeys(c.metric for c in cells))
    width = max(6.0, 0.45 * max(sum(c.metric == m for c in cells) for m in metrics) + 2)
    fig, axes = plt.subplots(len(metrics), 1, figsize=(width, 3.6 * len(metrics)), squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics):
        here = [c for c in cells if c.metric == metric]
        x = range(len(here))
        ours = ax.bar([i - 0.2 for i in x], [_mean(c.ours) for c in here], 0.4,
                      label="reproduced", yerr=[c.ours.std or 0 for c in here], capsize=2,
                      color="tab:blue")
        ax.bar([i + 0.2 for i in x], [_mean(c.paper) for c in here], 0.4, label="paper",
               yerr=[c.paper.std or 0 for c in here], capsize=2, color="tab:gray")
        for bar, cell in zip(ours, here):
            if cell.verdict == STAND_IN:
                bar.set_hatch("//")
            elif cell.verdict == OTHER_MODEL:
                bar.set_hatch("xx")
            if cell.provenance.get("resized"):
                bar.set_linestyle("--")
                bar.set_edgecolor("black")
            if cell.failed:
                bar.set(edgecolor="red", linewidth=2)
            if cell.provenance.get("stale"):
                bar.set_alpha(0.4)
        ax.set_xticks(list(x), [_label(c) for c in here], rotation=60, ha="right", fontsize=7)
        ax.set_ylabel(metric)
        ax.legend(handles=[Patch(color="tab:blue", label="reproduced"),
                           Patch(color="tab:gray", label="paper")], fontsize=7)
    notes = [text for flag, text in (
        (any(c.verdict == STAND_IN for c in cells), "hatched //: run on a stand-in dataset, "
                                                     "not comparable"),
        (any(c.verdict == OTHER_MODEL for c in cells), "hatched xx: a resized model, not "
                                                        "comparable"),
        (any(c.provenance.get("resized") for c in cells), "dashed edge: run on a resized copy "
                                                           "of the dataset (data.resized)"),
        (any(c.failed for c in cells), "red edge: out of tolerance"),
        (any(c.provenance.get("stale") for c in cells), "faded: stale (its run config changed "
                                                          "after it ran)"),
        (any(c.verdict in (NOT_RUN, RUN_FAILED, NO_VALUE) for c in cells),
         "no bar: not run, its run failed or gave no value (compare.md)")) if flag]
    fig.suptitle("\n".join([f"Table {table}, {tier} tier: reproduced (mean ± std over seeds) "
                            "vs paper", *notes]), fontsize=9)
    fig.tight_layout()
    paths = [Path(out_dir) / f"table{table}.{ext}" for ext in ("png", "pdf")]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return paths


def curve_group(metrics_path: str | Path) -> str:
    """The figure a run's curves go in: its run id without the seed (digits/vit_small/relvit),
    an id of another form under runs/ as it is, or outside the workflow's layout its folder's
    parent's name."""
    run = run_id(metrics_path)
    fields = run_id_fields(run) if run else None
    if fields is None:  # not a run id of the workflow's form (`layout.RUN_ID`)
        return run or Path(metrics_path).parent.parent.name
    return "/".join(fields[key] for key in ("dataset", "backbone", "method"))


def _history(run_dir: Path) -> pd.DataFrame | None:
    """The run's history.csv; None for a run that failed before its first epoch ended (a
    finetune whose pretrain run failed, a non-finite loss in epoch 1), which has none."""
    path = run_dir / HISTORY
    if not path.exists() and (run_dir / METRICS).is_file() and is_failed(
            read_metrics(run_dir / METRICS)):
        return None
    try:
        return pd.read_csv(path)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ValueError(f"{path}: cannot read the run's history ({err})") from err


def _recorded(history: pd.DataFrame, column: str) -> pd.DataFrame:
    """The epochs that recorded `column`: a detection run evaluates every `eval_every` epochs
    only, and a line through the empty epochs between would draw nothing."""
    return history[["epoch", column]].dropna()


def training_curves(metrics_files: list[str | Path], out_dir: str | Path,
                    tier: str = "custom") -> list[Path]:
    """`<out_dir>/curves/<group>.png` per group of runs (seeds overlaid): losses, and the
    validation metrics of VAL_METRICS that the runs record; titled with the group, the model
    the runs record (a tier's resized backbone is not the paper's) and the tier."""
    plt = _pyplot()
    groups: dict[str, list[Path]] = {}
    for path in map(Path, metrics_files):
        if path.name != METRICS or not path.is_file():  # its folder's history.csv had been named
            raise ValueError(f"{path}: not a run's {METRICS} (--curves takes those files)")
        groups.setdefault(curve_group(path), []).append(path.parent)
    written = []
    for group, run_dirs in sorted(groups.items()):
        fig, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(9, 3.4))
        no_epoch = []
        for i, run_dir in enumerate(sorted(run_dirs)):  # one colour per seed
            history, seed = _history(run_dir), run_dir.name
            if history is None:
                no_epoch.append(seed)
                continue
            for column, style in zip(LOSSES, STYLES):
                if column in history:
                    rows = _recorded(history, column)
                    loss_ax.plot(rows["epoch"], rows[column], style, color=f"C{i}",
                                 label=f"{column} {seed}")
            shown = [(column, *VAL_METRICS[column]) for column in VAL_METRICS if column in history]
            for (column, label, scale), style in zip(shown, STYLES):
                rows = _recorded(history, column)  # a dot per evaluation: one can be alone
                metric_ax.plot(rows["epoch"], rows[column] * scale, style, marker=".",
                               color=f"C{i}", label=f"{label} {seed}")
        loss_ax.set(xlabel="epoch", ylabel="loss", title="loss")
        metric_ax.set(xlabel="epoch", title="validation metric")
        for ax in (loss_ax, metric_ax):
            ax.legend(fontsize=6)
        failed = f"\nfailed before a first epoch: {', '.join(no_epoch)}" if no_epoch else ""
        models = sorted({str(record["backbone_label"]) for record in
                         (read_metrics(run_dir / METRICS) for run_dir in run_dirs)
                         if record.get("backbone_label")})
        model = f" — {', '.join(models)}" if models else ""
        fig.suptitle(f"{group}{model}, {tier} tier{failed}", fontsize=9)
        fig.tight_layout()
        path = Path(out_dir) / "curves" / f"{group}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def write_figures(cells: list[Comparison], tables: list[int], curves: list[str | Path],
                  out_dir: str | Path, tier: str = "custom") -> list[Path]:
    """The bar chart of each of `tables` and the training curves of the runs of `curves`."""
    written = [p for table in tables for p in bar_chart(cells, table, out_dir, tier)]
    return written + training_curves(curves, out_dir, tier)
