"""Every planned cell of Tables 1-3 beside the paper's number, with a verdict and its provenance.

A cell is one (table, dataset, backbone, method, metric): Table 1's best-epoch top-1 of each
method column, Tables 2-3's last-epoch box mAP / mAP50 / mAP75 of each row. Its reproduced value
is the mean ± sample std over its seeds (Table 1's code, relvit.report.table1.seed_cell, for
every table). Verdicts:

- within / OUT: |Δ| <= k * sqrt(σ_paper² + σ²) where the paper prints ± (σ: the sample std of our
  seeds, per run as the paper's ± is; for one seed, σ_paper in its place; k = `sigmas`, default
  2), else |Δ| <= `tolerance` points (default 0.9, below half the smallest gain the paper claims
  for those cells, +1.81 box mAP on SVHN: two cells within it cannot turn a claimed gain into a
  loss); either give or take 0.005, half the last digit the paper prints;
- not run: planned, no metrics.json yet; run failed: every seed's run failed (non-finite loss,
  or a failed pretrain run to start from: relvit.train.failure); no value: the runs that
  finished hold no finite value of the metric; none of these is a failure of the check;
- not comparable (stand-in): run on another dataset than the paper's (the smoke tier's digits
  and digit scenes); not comparable (other model): a resized backbone; not in the paper: the
  columns Table 1 adds (†, ‡). None of these fail.

It also flags the paper's printed "Improv." values that its own numbers do not give.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from relvit.report import detection_tables as det
from relvit.report.criterion import PAPER_ROUNDING, Criterion
from relvit.report.gather import gather_runs, read_paper
from relvit.report.provenance import PROVENANCE_KEYS, summarize
from relvit.report.table1 import (EMPTY, EXTRA_METHODS, METHODS, NO_CELL, PAPER_METRIC, Cell,
                                  Table1, output_file, seed_cell, signed)
from relvit.atomic import atomic_write_text
from relvit.config import HASH_EXCLUDES
from relvit.layout import PAPER_TABLES, PRINTED_IMPROVEMENTS

WITHIN, OUT, NOT_RUN, RUN_FAILED = "within", "OUT", "not run", "run failed"
NO_VALUE = "no value"
STAND_IN, OTHER_MODEL, NOT_IN_PAPER = ("not comparable (stand-in)", "not comparable (other model)",
                                       "not in the paper")


@dataclass
class Comparison:
    """One cell: the paper's number, ours over seeds, the verdict and where ours came from."""

    table: int
    dataset: str
    backbone: str
    method: str
    metric: str
    paper: Cell
    ours: Cell
    verdict: str
    bound: float | None = None
    rule: str = ""
    planned_seeds: list[int] = field(default_factory=list)
    provenance: dict[str, str] = field(default_factory=dict)

    @property
    def delta(self) -> float | None:
        if self.verdict not in (WITHIN, OUT):
            return None
        return self.ours.mean - self.paper.mean

    @property
    def failed(self) -> bool:
        return self.verdict == OUT


def judge(paper: Cell, ours: Cell, criterion: Criterion,
          not_comparable: str | None = None) -> tuple[str, float | None, str]:
    """(verdict, bound, rule) of one cell."""
    if ours.mean is None:
        return (RUN_FAILED if ours.failed else NO_VALUE if ours.unscored else NOT_RUN), None, ""
    if not_comparable:
        return not_comparable, None, ""
    bound, rule = criterion.bound(paper, ours)
    return (WITHIN if criterion.agrees(ours.mean - paper.mean, bound) else OUT), bound, rule


def _seeds(frame: pd.DataFrame) -> list[int]:
    return sorted(int(s) for s in frame["seed"].dropna().unique())


def table1_cells(table: Table1, criterion: Criterion) -> list[Comparison]:
    """Table 1's planned (or run) cells: each method column of each dataset and backbone."""
    paper_datasets = set(table.paper["dataset"]) if table.paper is not None else set()
    columns = [(column, mode, label, method) for column, (mode, label, method) in METHODS.items()]
    columns += [(column, *EXTRA_METHODS[column], None) for column in table.extras]
    out = []
    for dataset, backbone in table.keys:
        for column, mode, label, method in columns:
            runs = table.runs_of(dataset, backbone, mode, label)
            planned = table.runs_of(dataset, backbone, mode, label, planned=True)
            if runs.empty and planned.empty:
                continue
            paper = table.paper_cell(dataset, backbone, method) if method else NO_CELL
            reason = (NOT_IN_PAPER if method is None
                      else STAND_IN if dataset not in paper_datasets
                      else OTHER_MODEL if paper.mean is None else None)
            ours = table.ours(dataset, backbone, mode, label, PAPER_METRIC)
            verdict, bound, rule = judge(paper, ours, criterion, reason)
            out.append(Comparison(1, dataset, backbone, column.rstrip(" †‡"), "top1", paper,
                                  ours, verdict, bound, rule, _seeds(planned),
                                  summarize(runs)))
    return out


def _variant(row: dict) -> str:
    """A Tables 2-3 row's method with its flags, named as the tables name it, e.g.
    "RelSwin (upstream ✓, perm ✓, mega ✗)"."""
    from relvit.models.specs import get_backbone_spec

    if row["upstream"] is None:
        return "Supervised"
    flags = [("upstream", row["upstream"]), ("perm", row["perm"]), ("mega", row["mega"])]
    name = det.RELVIT_NAMES[get_backbone_spec(row["backbone"]).family]
    return f"{name} (" + ", ".join(f"{n} {'✓' if flag else '✗'}" for n, flag in flags) + ")"


def detection_cells(rows: list[dict], paper: pd.DataFrame,
                    criterion: Criterion) -> list[Comparison]:
    """Tables 2-3: every row of the plan (seeds averaged) and metric."""
    from relvit.data.registry import DATASETS
    from relvit.models.specs import get_backbone_spec

    ran = list(dict.fromkeys(row["metrics"] for row in rows if Path(row["metrics"]).is_file()))
    runs = gather_runs(ran)
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        key = (row["table"], row["dataset"], row["backbone"], row["variant"])
        groups.setdefault(key, []).append(row)
    out = []
    for (table, dataset, backbone, _), group in groups.items():
        first = group[0]
        here = runs[runs["run"].isin([str(Path(r["metrics"]).parent) for r in group])]
        resized = any(map(det.is_resized_model, here["backbone_label"].dropna().astype(str)))
        reason = (STAND_IN if first["run_dataset"] != dataset
                  else OTHER_MODEL if resized else None)
        failed = sum(map(det.row_failed, group))
        scores = [s for s in map(det.finished_scores, group) if s is not None]
        for metric, paper_metric in zip(det.METRICS, det.PAPER_METRICS[table]):
            value = det.paper_value(paper, first, paper_metric)
            theirs = Cell(value, None, 0) if value is not None else NO_CELL
            values = pd.Series([s[metric] for s in scores], dtype=float)
            ours = seed_cell(values, bool(here["stale"].fillna(False).astype(bool).any()),
                             failed, unscored=int((~np.isfinite(values)).sum()))
            verdict, bound, rule = judge(theirs, ours, criterion,
                                         reason or (NOT_IN_PAPER if value is None else None))
            out.append(Comparison(
                table, DATASETS[dataset].title, get_backbone_spec(backbone).label,
                _variant(first), metric, theirs, ours, verdict, bound, rule,
                sorted(int(r["seed"]) for r in group), summarize(here)))
    return out


@dataclass(frozen=True)
class ImprovementCheck:
    """A printed "Improv." value against the paper's own numbers."""

    table: int
    dataset: str
    backbone: str
    metric: str
    printed: float
    computed: float | None  # best non-supervised row minus Supervised, per metric
    note: str

    @property
    def consistent(self) -> bool:
        return self.computed is not None and _same_printed(self.printed, self.computed)


def _row_name(row: pd.Series) -> str:
    if pd.isna(row["upstream"]):
        return str(row["method"])
    flags = [("upstream", row["upstream"]), ("perm", row["permutation"]),
             ("mega", row["megapatch"])]
    return f"{row['method']} (" + ", ".join(f"{n} {str(v).strip()}" for n, v in flags) + ")"


PRINTED_COLUMNS = ("table", "dataset", "backbone", "metric", "printed_improvement")
def _same_printed(a: float, b: float) -> bool:
    """Two values the paper prints to 0.01: the same below half a last digit apart."""
    return abs(a - b) < PAPER_ROUNDING


def improvement_checks(paper_csv: str | Path = PAPER_TABLES,
                       printed_csv: str | Path = PRINTED_IMPROVEMENTS) -> list[ImprovementCheck]:
    """Each printed Improv. beside the best non-supervised row minus Supervised (per metric)
    from the paper's tables; an inconsistent one says which row, if any, it was taken from."""
    paper = read_paper(paper_csv)
    try:
        printed = pd.read_csv(printed_csv)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ValueError(f"{printed_csv}: not the paper's printed improvements ({err})") from err
    missing = [c for c in PRINTED_COLUMNS if c not in printed.columns]
    if missing:
        raise ValueError(f"{printed_csv}: not the paper's printed improvements (no column "
                         f"{', '.join(missing)})")
    checks = []
    for item in printed.itertuples(index=False):
        rows = paper[(paper["table"] == item.table) & (paper["dataset"] == item.dataset)
                     & (paper["backbone"] == item.backbone) & (paper["metric"] == item.metric)]
        supervised = rows[rows["method"] == "Supervised"]["value"]
        others = rows[rows["method"] != "Supervised"]
        if supervised.empty or others.empty:
            raise ValueError(f"{printed_csv}: no Supervised and RelViT rows in {paper_csv} for "
                             f"table {item.table}, {item.dataset}, {item.backbone}, {item.metric}")
        base = float(supervised.iloc[0])
        computed = round(float(others["value"].max()) - base, 2)
        note = ""
        if not _same_printed(item.printed_improvement, computed):
            match = [_row_name(r) for _, r in others.iterrows()
                     if _same_printed(float(r["value"]) - base, item.printed_improvement)]
            note = (f"is {match[0]} − Supervised, not the best row" if match
                    else "no row of the table gives it")
        checks.append(ImprovementCheck(int(item.table), item.dataset, item.backbone, item.metric,
                                       float(item.printed_improvement), computed, note))
    return checks


def compare(sources: list[str | Path], plan: str | Path | None = None,
            paper_csv: str | Path = PAPER_TABLES,
            criterion: Criterion = Criterion()) -> list[Comparison]:
    """Every cell: Table 1 from run configs and metrics files (`sources`, as `relvit report`
    takes them), Tables 2-3 from the workflow's detection plan file."""
    from relvit.report.gather import gather_planned, load_paper_table1

    cells: list[Comparison] = []
    if sources:
        table = Table1(gather_runs(sources), gather_planned(sources), load_paper_table1(paper_csv))
        cells += table1_cells(table, criterion)
    if plan is not None:
        cells += detection_cells(det.read_plan(plan), read_paper(paper_csv), criterion)
    return cells


# n: the seeds in the mean; failed_seeds, no_value_seeds: the seeds left out of it, and why
CSV_COLUMNS = ["table", "dataset", "backbone", "method", "metric", "paper", "paper_std", "mean",
               "std", "n", "failed_seeds", "no_value_seeds", "delta", "bound", "rule", "verdict",
               "planned_seeds", *PROVENANCE_KEYS]


def out_of_tolerance(csv_path: str | Path) -> list[str]:
    """The cells of a written compare.csv whose verdict is OUT, one line each."""
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if rows and "verdict" not in rows[0]:
        raise ValueError(f"{csv_path}: not a compare.csv (no 'verdict' column)")
    return [f"table {r['table']} {r['dataset']} {r['backbone']} {r['method']} {r['metric']}: "
            f"{r['mean']} vs paper {r['paper']} (|Δ| > {r['bound']})"
            for r in rows if r["verdict"] == OUT]


def write_verdict(csv_path: str | Path, out_path: str | Path, log_path: str | Path) -> None:
    """The workflow's compare_verdict: ValueError naming the OUT cells of a compare.csv (also
    written to `log_path`), else `out_path` saying that every comparable cell is within."""
    out = out_of_tolerance(csv_path)
    message = (f"{len(out)} cell(s) out of tolerance (see {csv_path}):\n" + "\n".join(out)
               if out else "every comparable cell within tolerance")
    atomic_write_text(message + "\n", log_path)
    if out:
        raise ValueError(message)
    atomic_write_text(message + "\n", out_path)


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def to_csv(cells: list[Comparison]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for c in cells:
        p = c.provenance
        writer.writerow([c.table, c.dataset, c.backbone, c.method, c.metric, _number(c.paper.mean),
                         _number(c.paper.std), _number(c.ours.mean), _number(c.ours.std),
                         c.ours.n, c.ours.failed, c.ours.unscored, _number(c.delta),
                         _number(c.bound), c.rule, c.verdict,
                         " ".join(map(str, c.planned_seeds)),
                         *(p.get(k, "").replace("—", "") for k in PROVENANCE_KEYS)])
    return buffer.getvalue()


def _short(text: str, width: int) -> str:
    return "; ".join(part[:width] + ("-dirty" if part.endswith("-dirty") and width < len(part)
                                     else "") for part in text.split("; "))


def to_markdown(cells: list[Comparison], checks: list[ImprovementCheck], tier: str,
                criterion: Criterion) -> str:
    counts = pd.Series([c.verdict for c in cells], dtype=object).value_counts()
    stale = [c for c in cells if c.provenance.get("stale")]
    lines = [f"# Reproduced vs paper — {tier} tier", "",
             f"Each planned cell of Tables 1–3: the paper's number, ours (mean ± sample std over "
             f"the seeds that ran), Δ = ours − paper and the verdict. **within** when |Δ| ≤ "
             f"{criterion.sigmas:g}·√(σ_paper² + σ²) where the paper prints ± (σ: our seeds' std; "
             f"one seed: σ_paper), else |Δ| ≤ {criterion.tolerance:g} points (tolerance), give or "
             f"take {PAPER_ROUNDING:g} (the paper's rounding); cells run on a stand-in "
             "dataset, with a resized model or absent from the paper are not compared and never "
             "fail.", "",
             "Verdicts: " + (", ".join(f"{n} {v}" for v, n in counts.items()) or "no cells") + ".",
             "", "Provenance per cell: config hash (of the resolved run config without "
             f"{', '.join(HASH_EXCLUDES)}), git commit, container image, device, processes and "
             "the execution settings that can move its numbers by rounding (precision, compile) "
             "of its runs (distinct values), seeds, wall time (s, summed over seeds) and peak "
             "memory (MB, the largest)."]
    if stale:
        how_many = "1 cell is" if len(stale) == 1 else f"{len(stale)} cells are"
        lines += ["", f"**{how_many} stale** (a run config changed after the run; "
                      "rerun the workflow): " + "; ".join(c.provenance["stale"] for c in stale)
                  + "."]
    resized = [c for c in cells if c.provenance.get("resized")]
    if resized:
        how_many = "1 cell" if len(resized) == 1 else f"{len(resized)} cells"
        lines += ["", f"**{how_many} ran on resized copies** of their dataset (`data.resized`: "
                      "every image's shorter side at most S px, verdict marked \"(resized S)\"): "
                      "the crops hold other pixels than the paper's."]
    header = ["Table", "Dataset", "Backbone", "Method", "Metric", "paper", "ours", "Δ", "bound",
              "verdict", "seeds", "config hash", "git sha", "image", "device", "processes",
              "execution", "wall time (s)", "peak mem (MB)"]
    lines += ["", "| " + " | ".join(header) + " |",
              "|" + "|".join(["---"] * 5 + ["---:"] * 4 + ["---"] * 8 + ["---:"] * 2) + "|"]
    for c in cells:
        p = c.provenance
        verdict = c.verdict + (" (stale)" if p.get("stale") else "") + (
            f" (resized {p['resized']})" if p.get("resized") else "")
        bound = EMPTY if c.bound is None else f"{c.bound:.2f} ({c.rule})"
        seeds = p["seeds"] + (f" ({len(c.planned_seeds)} planned)" if c.planned_seeds else "")
        lines.append("| " + " | ".join([
            str(c.table), c.dataset, c.backbone, c.method, c.metric, c.paper.text(),
            c.ours.text().replace(" [stale]", "").replace(f" [resized {p.get('resized')}]", ""),
            signed(c.delta), bound,
            f"**{verdict}**" if c.failed else verdict, seeds, _short(p["config_hash"], 8),
            _short(p["git_sha"], 10), p["image"], p["device"], p["processes"], p["execution"],
            p["wall_time_s"], p["peak_memory_mb"]]) + " |")
    lines += ["", "## The paper's printed Improv. values", "",
              "Printed beside the best non-supervised row minus Supervised (per metric), from the "
              "paper's own numbers (results/paper/printed-improvements.csv, tables.csv).", "",
              "| Table | Dataset | Backbone | Metric | printed | from the numbers | |",
              "|---|---|---|---|---:|---:|---|"]
    for k in checks:
        flag = "ok" if k.consistent else f"**inconsistent**: {k.note}"
        lines.append(f"| {k.table} | {k.dataset} | {k.backbone} | {k.metric} | "
                     f"{k.printed:+.2f} | {signed(k.computed)} | {flag} |")
    return "\n".join(lines) + "\n"


def write_compare(cells: list[Comparison], checks: list[ImprovementCheck], out_stem: str | Path,
                  tier: str, criterion: Criterion) -> None:
    """`<out_stem>.md` and `<out_stem>.csv`."""
    atomic_write_text(to_markdown(cells, checks, tier, criterion), output_file(out_stem, ".md"))
    atomic_write_text(to_csv(cells), output_file(out_stem, ".csv"))
