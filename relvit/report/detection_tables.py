"""Tables 2 and 3 (detection mAP) as Markdown and LaTeX, in the paper's layout: per backbone
(Table 2) or dataset (Table 3), one row per variant (Method, Upstream, Perm., Mega-patch) with
box mAP, mAP50, mAP75, each beside the paper's number, and an "(Improv.)" row: the best RelViT
row minus the supervised one, from the numbers (the paper's own "Improv." values do not all follow
one rule, results/paper/README.md). Numbers are the last epoch's COCO box AP on the whole
evaluation split (the follow-up evaluates its last weights, method spec Q31).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from relvit.data.registry import DATASETS
from relvit.detection.plan import METRICS, PAPER_BACKBONES, Variant, paper_row_variant
from relvit.models.specs import get_backbone_spec
from relvit.report.gather import read_paper
from relvit.report.numbers import last_map_scores
from relvit.report.provenance import STALE, STALE_NOTE, is_stale, read_metrics
from relvit.report.table1 import (EMPTY, FAILED, FAILED_NOTE, NO_VALUE, NO_VALUE_NOTE,
                                  latex_escape, signed)
from relvit.atomic import atomic_write_text
from relvit.layout import PAPER_TABLES
from relvit.train.failure import is_failed

PAPER_METRICS = {2: ("mAP", "mAP50", "mAP75"), 3: ("mAP_box", "mAP_box50", "mAP_box75")}
RELVIT_NAMES = {"vit": "RelViT", "swin": "RelSwin", "t2t": "RelT2T-ViT"}


def _mark(flag: bool | None) -> str:
    return "-" if flag is None else ("✓" if flag else "✗")


def paper_value(paper: pd.DataFrame, row: dict, metric: str) -> float | None:
    """The paper's number of one plan row (Table 2 or 3) and metric, or None."""
    family = get_backbone_spec(row["backbone"]).family
    title = DATASETS[row["dataset"]].title
    hits = paper[(paper["table"] == row["table"]) & (paper["dataset"] == title)
                 & (paper["backbone"].isin(PAPER_BACKBONES[family])) & (paper["metric"] == metric)]
    variant = (Variant(None) if row["upstream"] is None
               else Variant(row["upstream"], row["perm"], row["mega"]))
    values = [hit["value"] for _, hit in hits.iterrows() if paper_row_variant(hit) == variant]
    return float(values[0]) if values else None


def _metrics(row: dict) -> dict:
    path = Path(row["metrics"])
    return read_metrics(path) if path.is_file() else {}


def finished_scores(row: dict) -> dict[str, float | None] | None:
    """The last epoch's box mAP, mAP50, mAP75 of a plan row's finished run (a score None where
    its record has none), or None when the run has not finished or failed."""
    metrics = _metrics(row)
    if not metrics or is_failed(metrics):
        return None
    box = last_map_scores(metrics, "bbox")
    return {m: box.get(m) for m in METRICS}


def row_failed(row: dict) -> bool:
    """Whether the run of a plan row failed (metrics.json "status": "failed")."""
    return is_failed(_metrics(row))


def row_unscored(row: dict) -> bool:
    """Whether the run of a plan row finished without a finite score of some metric."""
    scores = finished_scores(row)
    return scores is not None and not all(isinstance(v, (int, float)) and np.isfinite(v)
                                          for v in scores.values())


def row_stale(row: dict) -> bool:
    """Whether the run of a plan row was made with another config than the planned one."""
    path = Path(row["metrics"])
    return path.is_file() and bool(is_stale(_metrics(row), path))


def _backbone_label(group: list[dict]) -> str:
    """The backbone as the runs name it (a resized smoke-tier model says so), else the preset."""
    labels = [_metrics(row).get("backbone_label") for row in group]
    return next((label for label in labels if label), get_backbone_spec(group[0]["backbone"]).label)


def is_resized_model(label: str) -> bool:
    """Whether a backbone label (relvit.geometry.backbone_label) names a resized model, e.g.
    "ViT/8 (D=36, depth 1)", rather than the paper's ("ViT-S/16")."""
    return label.endswith(")")


def _text(value: float | None) -> str:
    return EMPTY if value is None else f"{value:.2f}"


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _best(scored: list[dict[str, float | None]]) -> dict[str, float | None]:
    """Per metric, the highest score of the rows (None where none has one): "(Improv.)" is the
    best RelViT row minus Supervised column by column, as `relvit compare` and most of the
    paper's printed values (results/paper/README.md)."""
    return {m: max((s[m] for s in scored if s[m] is not None), default=None) for m in METRICS}


def _variants(group: list[dict]) -> list[list[dict]]:
    """The plan rows of a group gathered per variant (one per seed), in plan order."""
    seeds: dict[str, list[dict]] = {}
    for row in group:
        seeds.setdefault(row["variant"], []).append(row)
    return list(seeds.values())


def _seed_cells(seeds: list[dict]) -> tuple[dict[str, float | None], list[str]]:
    """Mean scores over the seeds that ran (not failed), and the cells: mean, ± std over several
    seeds, "(n=1)" for one, "(n=k of m)" while some have not run, "[k failed]" when some failed,
    "[k no value]" when some finished without a finite score, "failed" or "no value" when all
    did."""
    failed = sum(map(row_failed, seeds))
    finished = [s for s in map(finished_scores, seeds) if s is not None]
    means: dict[str, float | None] = {m: None for m in METRICS}
    cells = []
    for m in METRICS:
        values = pd.Series([s[m] for s in finished], dtype=float)
        unscored = int((~np.isfinite(values)).sum())
        values = values[np.isfinite(values)]
        marks = (f" [{failed} {FAILED}]" if failed else "") + (
            f" [{unscored} {NO_VALUE}]" if unscored else "")
        if values.empty:
            cells.append(FAILED if failed else NO_VALUE if unscored else EMPTY)
            continue
        means[m] = float(values.mean())
        text = _text(means[m]) + (f" ± {values.std():.2f}" if len(values) > 1 else "")
        if len(values) + failed + unscored < len(seeds):
            text += f" (n={len(values)} of {len(seeds)})"
        elif len(values) == 1:
            text += " (n=1)"  # no spread to show, as Table 1 says
        cells.append(text + marks)
    return means, cells


def table_cells(table: int, rows: list[dict], paper: pd.DataFrame) -> list[list[str]]:
    """The table body: one list of cells per row (a variant, its seeds averaged), "(Improv.)"
    rows included."""
    body: list[list[str]] = []
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        if row["table"] == table:
            groups.setdefault((row["dataset"], row["backbone"]), []).append(row)
    for (dataset, backbone), group in groups.items():
        family = get_backbone_spec(backbone).family
        model = _backbone_label(group)
        first = model if table == 2 else DATASETS[dataset].title
        if group[0]["run_dataset"] != dataset:
            first += f" [{DATASETS[group[0]['run_dataset']].title}]"
        if table != 2 and is_resized_model(model):
            first += f", {model}"  # not the paper's model: say which
        ours_rel, theirs_rel, ours_sup, theirs_sup = [], [], None, None
        for i, seeds in enumerate(_variants(group)):
            row = seeds[0]
            ours, our_cells = _seed_cells(seeds)
            theirs = {m: paper_value(paper, row, pm)
                      for m, pm in zip(METRICS, PAPER_METRICS[table])}
            supervised = row["upstream"] is None
            cells = [first if i == 0 else "",
                     ("Supervised" if supervised else RELVIT_NAMES[family])
                     + (f" {STALE}" if any(map(row_stale, seeds)) else ""),
                     _mark(row["upstream"]), "-" if supervised else _mark(row["perm"]),
                     "-" if supervised else _mark(row["mega"])]
            for m, ours_text in zip(METRICS, our_cells):
                cells += [ours_text, _text(theirs[m])]
            body.append(cells)
            if supervised:
                ours_sup, theirs_sup = ours, theirs
            else:
                ours_rel.append(ours)
                theirs_rel.append(theirs)
        best_ours, best_theirs = _best(ours_rel), _best(theirs_rel)
        improvement = ["", "(Improv.)", "", "", ""]
        for m in METRICS:
            improvement += [signed(_diff(best_ours[m], ours_sup[m] if ours_sup else None)),
                            signed(_diff(best_theirs[m], theirs_sup[m] if theirs_sup else None))]
        body.append(improvement)
    return body


def header(table: int) -> list[str]:
    cols = ["Backbone" if table == 2 else "Dataset", "Method", "Upstream", "Perm.", "Mega-patch"]
    for m in METRICS:
        cols += [m, "paper"]
    return cols


def _shared_runs(rows: list[dict]) -> bool:
    """Whether a run fills the rows of more than one dataset (a stand-in for several)."""
    datasets: dict[str, set[str]] = {}
    for row in rows:
        datasets.setdefault(row["metrics"], set()).add(row["dataset"])
    return any(len(names) > 1 for names in datasets.values())


def notes(rows: list[dict]) -> str:
    """What the numbers are, as the Markdown's intro and the LaTeX caption say it."""
    return ("Box AP (%) of the last epoch on the whole evaluation split (pycocotools), mean ± "
            "sample std over the seeds that ran; paper: the paper's number. (Improv.): the best "
            "RelViT row minus Supervised, computed from the numbers for the paper too (where "
            "the paper prints another value, compare.md names it)."
            + (" A dataset in [brackets] is the stand-in the rows were run on (not comparable "
               "to the paper)." if any(r["run_dataset"] != r["dataset"] for r in rows) else "")
            + (" Rows of several datasets on one stand-in are the same runs (the same backbone "
               "and variant), so they show the same numbers." if _shared_runs(rows) else "")
            + (f" {STALE_NOTE}" if any(map(row_stale, rows)) else "")
            + (f" {FAILED_NOTE}" if any(map(row_failed, rows)) else "")
            + (f" {NO_VALUE_NOTE}" if any(map(row_unscored, rows)) else ""))


def render_markdown(table: int, rows: list[dict], paper: pd.DataFrame, tier: str) -> str:
    cols = header(table)
    lines = [f"# Table {table} — {tier} tier", "",
             f"Reproduced with relvit-repro, tier **{tier}**. {notes(rows)}", "",
             "| " + " | ".join(cols) + " |",
             "|" + "|".join(["---"] * 5 + ["---:"] * (len(cols) - 5)) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_cells(table, rows, paper)]
    return "\n".join(lines) + "\n"


def render_latex(table: int, rows: list[dict], paper: pd.DataFrame, tier: str) -> str:
    def tex(text: str) -> str:  # brackets as parentheses: a row starting with "[" is an option
        return latex_escape(text).replace("[", "(").replace("]", ")")

    cols = header(table)
    lines = ["% Generated by relvit-repro (relvit report-detection); do not edit. "
             "Needs \\usepackage{booktabs, amssymb}.",
             r"\begin{table}[t]", r"\centering",
             r"\begin{tabular}{lllll" + "r" * (len(cols) - 5) + "}", r"\toprule",
             " & ".join(tex(c) for c in cols) + r" \\", r"\midrule"]
    lines += [" & ".join(tex(c) for c in cells) + r" \\"
              for cells in table_cells(table, rows, paper)]
    lines += [r"\bottomrule", r"\end{tabular}",
              r"\caption{" + tex(f"Table {table} reproduced ({tier} tier). {notes(rows)}") + "}",
              r"\end{table}"]
    return "\n".join(lines) + "\n"


# a detection plan row's keys (relvit.workflow.detection_plan_rows writes them)
PLAN_KEYS = ("table", "dataset", "backbone", "run_dataset", "variant", "upstream", "perm",
             "mega", "seed", "run_id", "metrics")


def read_plan(path: str | Path) -> list[dict]:
    """The rows of a detection plan file (the workflow's detection-plan.json); ValueError naming
    the file and what is wrong with it (a metrics.json given instead, a row without a key)."""
    what = f"{path}: not a detection plan file"
    try:
        rows = json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as err:  # JSON or UTF-8
        raise ValueError(f"{what} ({err})") from err
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise ValueError(f"{what} (expected a list of rows, as the workflow's "
                         "detection-plan.json holds)")
    from relvit.data.registry import DATASETS
    from relvit.models.specs import BACKBONES

    for number, row in enumerate(rows, 1):
        missing = [key for key in PLAN_KEYS if key not in row]
        if missing:
            raise ValueError(f"{what} (row {number} lacks {', '.join(missing)})")
        # what the tables index by (a TypeError or a bare KeyError had been all)
        for key, fits in (("table", lambda v: v in (2, 3) and not isinstance(v, bool)),
                          ("dataset", lambda v: v in DATASETS),
                          ("run_dataset", lambda v: v in DATASETS),
                          ("backbone", lambda v: v in BACKBONES),
                          ("metrics", lambda v: isinstance(v, str))):
            if not fits(row[key]):
                raise ValueError(f"{what} (row {number}: {key} {row[key]!r})")
    return rows


def write_detection_tables(plan_path: str | Path, out_dir: str | Path, tier: str,
                           paper_csv: str | Path = PAPER_TABLES) -> list[Path]:
    """Render every table of the plan file into `out_dir/table<N>.{md,tex}`."""
    rows = read_plan(plan_path)
    paper = read_paper(paper_csv)
    written = []
    for table in sorted({row["table"] for row in rows}):
        stem = Path(out_dir) / f"table{table}"
        atomic_write_text(render_markdown(table, rows, paper, tier), stem.with_suffix(".md"))
        atomic_write_text(render_latex(table, rows, paper, tier), stem.with_suffix(".tex"))
        written.append(stem)
    return written
