"""Table 1 (classification top-1, supervised vs RelViT) as Markdown and LaTeX.

Layout as in the paper: dataset, backbone, supervised mean ± std, RelViT mean ± std, improvement,
each beside the paper's number (results/paper/tables.csv) and the difference, where the paper has
one. Columns the paper lacks are marked: † a supervised run given the same total epochs as
pretrain + finetune (a gain from the pretext task vs a gain from longer training), ‡ RelViT
pretrained with mega-patches. Means and sample standard deviations (ddof = 1) are over seeds; a
cell that is planned but has not run yet shows "—".
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from relvit.data.registry import DATASETS, get_dataset
from relvit.geometry import NUM_RELATIONS
from relvit.report.gather import gather_planned, gather_runs, load_paper_table1
from relvit.report.numbers import PRETEXT_NUMBERS
from relvit.report.provenance import STALE, STALE_NOTE, resized_sides
from relvit.atomic import atomic_write_text
from relvit.layout import METRICS as METRICS_FILE
from relvit.layout import PAPER_TABLES, PRINTED_IMPROVEMENTS
from relvit.train.failure import FAILED as FAILED_STATUS

log = logging.getLogger("relvit")

SAME_EPOCHS = "same-epochs"
MEGAPATCHES = "mega-patches"
METHODS = {  # column -> (mode, label, the paper's method name)
    "Supervised": ("supervised", "", "Supervised"),
    "RelViT": ("finetune", "", "RelViT"),
}
EXTRA_METHODS = {  # not in the paper's Table 1; shown when planned or run
    "Supervised, same epochs †": ("supervised", SAME_EPOCHS),
    "RelViT, mega-patches ‡": ("finetune", MEGAPATCHES),
}
NOTES = {
    "Supervised, same epochs †": "† not in the paper: a supervised run trained for as many "
                                 "epochs as pretrain + finetune.",
    "RelViT, mega-patches ‡": "‡ not in the paper's Table 1: RelViT pretrained with "
                              "mega-patches (method spec §2.3), then finetuned.",
}
METRICS = {
    "best_top1": "best-epoch top-1 accuracy (%), as the paper reports it (method spec Q17)",
    "last_top1": "last-epoch top-1 accuracy (%)",
}
EMBEDDED_NOTE = ("embedded data, tiny models: these numbers check the pipeline, they are not "
                 "comparable to the paper's")
PRETEXT_METRICS = PRETEXT_NUMBERS  # the pretrain runs' table
PAPER_METRIC = "best_top1"  # what the paper reports: only its table has the paper's columns
OFF_DIAGONAL = NUM_RELATIONS - 1  # the relation classes of another patch (CC: itself)
EMPTY = "—"
FAILED = "failed"  # a failed cell's text
FAILED_NOTE = ("failed: a run of this cell stopped without a result (a non-finite loss, or the "
               "pretrain run it starts from failed); its metrics.json names the error, epoch and "
               "step. \"[k failed]\": k of the cell's seeds failed, the number is over the others.")
NO_VALUE = "no value"
NO_VALUE_NOTE = ("no value: a run of this cell finished, but its metrics.json holds no finite "
                 "value of the metric (none, NaN or infinite): see the run's log. \"[k no "
                 "value]\": k of the cell's seeds have none, the number is over the others.")
RESIZED_NOTE = ("[resized S]: the cell's runs read a copy of the dataset whose images have a "
                "shorter side of at most S px (workflow key `data.resized`, `relvit "
                "resize-images`), not its own files: the crops hold other pixels than the "
                "paper's.")


@dataclass(frozen=True)
class Cell:
    mean: float | None
    std: float | None
    n: int
    stale: bool = False  # a run of it was made with another config than the planned one
    failed: int = 0  # seeds whose run failed (metrics.json "status": "failed")
    planned: int = 0  # seeds planned for it (0: not known)
    resized: str = ""  # the shorter sides of the resized copies its runs read ("": none)
    unscored: int = 0  # seeds whose run finished without a finite value of the metric

    def text(self) -> str:
        if self.mean is None:
            return FAILED if self.failed else NO_VALUE if self.unscored else EMPTY
        mark = (f" {STALE}" if self.stale else "") + (
            f" [{self.failed} {FAILED}]" if self.failed else "") + (
            f" [{self.unscored} {NO_VALUE}]" if self.unscored else "") + (
            f" [resized {self.resized}]" if self.resized else "")
        missing = self.planned > self.n + self.failed + self.unscored  # seeds still to run
        seeds = (f" (n={self.n} of {self.planned})" if missing
                 else " (n=1)" if self.n == 1 else "")
        if self.std is None:
            return f"{self.mean:.2f}{seeds}{mark}"
        return f"{self.mean:.2f} ± {self.std:.2f}{seeds}{mark}"


NO_CELL = Cell(None, None, 0)


def seed_cell(values: pd.Series, stale: bool = False, failed: int = 0,
              planned: int = 0, resized: str = "", unscored: int = 0) -> Cell:
    """Mean and sample std (ddof = 1) of one cell's finite values over seeds (the others: one
    of the `failed` runs, or of the `unscored` ones); `planned`: how many seeds the cell
    should have."""
    values = pd.to_numeric(values, errors="coerce").astype(float)
    values = values[np.isfinite(values)]
    if values.empty:
        return (Cell(None, None, 0, stale, failed, planned, unscored=unscored)
                if failed or unscored else NO_CELL)
    std = float(values.std(ddof=1)) if len(values) > 1 else None
    return Cell(float(values.mean()), std, len(values), stale, failed, planned, resized,
                unscored)


def one_run_per_seed(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs of one cell (rows of gather_runs), refused (ValueError naming them) when two
    share a seed: a cell's mean is over seeds, and runs of other configs or of a copied results
    folder would be pooled into it unseen."""
    twice = runs[runs["seed"].duplicated(keep=False)]
    if not twice.empty:
        first = twice.iloc[0]
        label = first["label"] if isinstance(first["label"], str) and first["label"] else ""
        raise ValueError(
            f"{first['dataset_title']} / {first['backbone_label']} / {first['mode']}"
            f"{' ' + label if label else ''}: seed {first['seed']} has several runs "
            f"({', '.join(twice[twice['seed'] == first['seed']]['run'])}): pass one run per seed")
    return runs


def failed_runs(runs: pd.DataFrame) -> int:
    """How many of these runs (rows of gather_runs) failed."""
    return int((runs["status"] == FAILED_STATUS).sum()) if "status" in runs else 0


def unscored_runs(runs: pd.DataFrame, metric: str) -> int:
    """How many of these runs (rows of gather_runs) finished without a finite `metric`: a
    table would otherwise show them as seeds still to run."""
    finished = runs["status"] != FAILED_STATUS if "status" in runs else True
    finite = np.isfinite(pd.to_numeric(runs[metric], errors="coerce").astype(float))
    return int((finished & ~finite).sum())


def _difference(a: Cell, b: Cell) -> float | None:
    return None if a.mean is None or b.mean is None else a.mean - b.mean


def signed(value: float | None) -> str:
    """+1.23 / -1.23, "—" for None; a difference that rounds to zero is +0.00, never -0.00
    (every table's Δ and Improv. cells)."""
    return EMPTY if value is None else f"{round(value, 2) + 0.0:+.2f}"


def _classification(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of classification datasets: a results folder also holds the detection runs of
    Tables 2-3 and their pretraining."""
    tasks = {name: get_dataset(name).task for name in frame["dataset"].unique()}
    return frame[frame["dataset"].map(tasks).eq("classification")]


class Table1:
    """Table 1 from finished runs, planned runs (for empty cells) and the paper's numbers."""

    def __init__(self, runs: pd.DataFrame, planned: pd.DataFrame | None = None,
                 paper: pd.DataFrame | None = None, slips: tuple[str, ...] = ()):
        """`slips`: the paper's printed Improv. values of Table 1 that its own numbers do not
        give (`printed_slips`), said beside the paper's columns."""
        self.slips = slips
        runs = _classification(runs)
        planned = None if planned is None else _classification(planned)
        self.runs = runs[runs["mode"] != "pretrain"]
        self.pretrain = runs[runs["mode"] == "pretrain"]
        self.planned = planned if planned is not None else runs.iloc[0:0]
        self.paper = paper
        both = pd.concat([self.runs, self.planned[self.planned["mode"] != "pretrain"]])
        self.keys = _row_keys(both)
        self.extras = [c for c, (mode, label) in EXTRA_METHODS.items()
                       if ((both["mode"] == mode) & (both["label"].fillna("") == label)).any()]
        self.with_paper = any(self.paper_cell(d, b, m).mean is not None
                              for d, b in self.keys for _, _, m in METHODS.values())

    def without_column(self) -> list[str]:
        """The finished runs that no column shows (a joint run, a label of no column)."""
        columns = [(mode, label) for mode, label, *_ in [*METHODS.values(),
                                                         *EXTRA_METHODS.values()]]
        shown = [(m, label) in columns
                 for m, label in zip(self.runs["mode"], self.runs["label"].fillna(""))]
        return sorted(self.runs.loc[[not s for s in shown], "run"])

    @property
    def on_embedded_data(self) -> bool:
        """Whether a row ran on embedded stand-in data (the smoke and CI tiers' digits)."""
        names = pd.concat([self.runs, self.pretrain, self.planned])["dataset"].dropna().unique()
        return any(get_dataset(name).embedded for name in names)

    def paper_cell(self, dataset: str, backbone: str, method: str) -> Cell:
        if self.paper is None:
            return NO_CELL
        row = self.paper[(self.paper["dataset"] == dataset) & (self.paper["backbone"] == backbone)
                         & (self.paper["method"] == method)]
        if row.empty:
            return NO_CELL
        std = row["std"].iloc[0]
        return Cell(float(row["value"].iloc[0]), None if pd.isna(std) else float(std), 0)

    def runs_of(self, dataset: str, backbone: str, mode: str, label: str,
                planned: bool = False) -> pd.DataFrame:
        """The finished runs of one cell (or, with `planned`, its planned run configs); mode
        "pretrain": the runs of a pretext cell."""
        r = self.planned if planned else self.pretrain if mode == "pretrain" else self.runs
        return r[(r.dataset_title == dataset) & (r.backbone_label == backbone)
                 & (r["mode"] == mode) & (r["label"].fillna("") == label)]

    def ours(self, dataset: str, backbone: str, mode: str, label: str, metric: str) -> Cell:
        """Mean ± std over the seeds of one cell; stale when one of its runs is."""
        here = one_run_per_seed(self.runs_of(dataset, backbone, mode, label))
        planned = self.runs_of(dataset, backbone, mode, label, planned=True)["seed"].nunique()
        return seed_cell(here[metric], bool(here["stale"].fillna(False).astype(bool).any()),
                         failed_runs(here), planned, resized_sides(here),
                         unscored_runs(here, metric))

    @property
    def any_failed(self) -> bool:
        return failed_runs(self.runs) + failed_runs(self.pretrain) > 0

    @property
    def any_unscored(self) -> bool:
        """Whether a cell shows runs that finished without a finite value (NO_VALUE_NOTE)."""
        return any(unscored_runs(self.runs, m) for m in METRICS) or any(
            unscored_runs(self.pretrain, m) for m in PRETEXT_METRICS)

    @property
    def any_stale(self) -> bool:
        both = pd.concat([self.runs["stale"], self.pretrain["stale"]])
        return bool(both.fillna(False).astype(bool).any())

    @property
    def any_resized(self) -> bool:
        return bool(resized_sides(self.runs) or resized_sides(self.pretrain))

    def beside_paper(self, metric: str) -> bool:
        """Whether `metric`'s table has the paper's columns: the paper reports the best epoch."""
        return self.with_paper and metric == PAPER_METRIC

    def header(self, metric: str = PAPER_METRIC) -> list[str]:
        paper = self.beside_paper(metric)
        cols = ["Dataset", "Backbone"]
        for name in METHODS:
            cols += [name, "paper", "Δ"] if paper else [name]
        cols += ["Improv.", "paper"] if paper else ["Improv."]
        return cols + self.extras

    def rows(self, metric: str) -> list[list[str]]:
        """The body of `metric`'s table: one row of cells per dataset and backbone, each method
        beside the paper's number and Δ where `beside_paper`, then Improv. and the extra
        columns."""
        out = []
        with_paper = self.beside_paper(metric)
        for dataset, backbone in self.keys:
            cells, ours, papers = [dataset, backbone], [], []
            for mode, label, method in METHODS.values():
                mine = self.ours(dataset, backbone, mode, label, metric)
                theirs = self.paper_cell(dataset, backbone, method)
                ours.append(mine)
                papers.append(theirs)
                cells.append(mine.text())
                if with_paper:
                    cells += [theirs.text(), signed(_difference(mine, theirs))]
            cells.append(signed(_difference(ours[1], ours[0])))
            if with_paper:
                cells.append(signed(_difference(papers[1], papers[0])))
            for column in self.extras:
                mode, label = EXTRA_METHODS[column]
                cells.append(self.ours(dataset, backbone, mode, label, metric).text())
            out.append(cells)
        return out

    def pretext_lines(self) -> list[str]:
        """Markdown table of the pretrain runs' held-out pretext accuracies, beside chance."""
        pretrain = self.pretrain
        if pretrain.empty:
            return []
        lines = ["", "## Pretext task: held-out accuracy of the pretrain runs (%), last epoch", "",
                 "Relation accuracy leaves out the trivial diagonal; chance is "
                 f"1/{OFF_DIAGONAL} for relations ({OFF_DIAGONAL} off-diagonal classes, uniform "
                 "guess) and 1/N for N positions.", "",
                 "| Dataset | Backbone | Run | Relations | Positions | Chance (relations / positions) |",
                 "|---|---|---|---:|---:|---:|"]
        for dataset, backbone in _row_keys(pretrain):
            here = pretrain[(pretrain.dataset_title == dataset)
                            & (pretrain.backbone_label == backbone)]
            for label, group in here.groupby(here["label"].fillna(""), sort=True):
                positions = group["pretext_positions"].dropna()
                chance = (f"{100 / OFF_DIAGONAL:.2f} / {100 / positions.iloc[0]:.2f}"
                          if len(positions) else EMPTY)
                lines.append(
                    f"| {dataset} | {backbone} | {label or 'pretrain'} | "
                    + "".join(f"{self.ours(dataset, backbone, 'pretrain', label, m).text()} | "
                              for m in PRETEXT_METRICS)
                    + f"{chance} |")
        return lines


def _row_keys(runs: pd.DataFrame) -> list[tuple[str, str]]:
    """(dataset title, backbone label) pairs, datasets in registry (= the paper's) order."""
    order = {name: i for i, name in enumerate(DATASETS)}
    keys = runs[["dataset", "dataset_title", "backbone_label"]].drop_duplicates()
    keys = keys.assign(rank=keys["dataset"].map(order).fillna(len(order)))
    keys = keys.sort_values(["rank", "dataset", "backbone_label"])
    return list(keys[["dataset_title", "backbone_label"]].itertuples(index=False, name=None))


def _paper_note(table: Table1) -> str:
    """What the paper, Δ and Improv. columns hold, and the paper's own slips in Improv."""
    slips = f" (the paper prints {'; '.join(table.slips)})" if table.slips else ""
    return ("paper: the paper's number (best epoch, so beside the best-epoch table only); Δ: "
            "reproduced − paper; Improv. and its paper column: RelViT − Supervised, computed "
            f"from the numbers{slips}.")


def _seeds_note(table: Table1) -> str:
    """What a cell's number is: "Mean ± sample std over seeds 0, 1, 2." or, with one seed,
    "One seed (0): no spread to show." (the Markdown's and the LaTeX caption's)."""
    seeds = sorted(int(s) for s in pd.concat([table.runs, table.pretrain])["seed"].dropna().unique())
    if len(seeds) == 1:
        return f"One seed ({seeds[0]}): no spread to show."
    return f"Mean ± sample std over seeds {', '.join(map(str, seeds)) or '—'}."


def render_markdown(table: Table1, tier: str) -> str:
    lines = [
        f"# Table 1 — {tier} tier",
        "",
        f"Reproduced with relvit-repro, tier **{tier}**"
        + (f" ({EMBEDDED_NOTE})" if table.on_embedded_data else "") + f". {_seeds_note(table)}",
    ]
    if table.with_paper:
        lines += ["", _paper_note(table)]
    lines += [f"\n{NOTES[c]}" for c in table.extras]
    lines += [f"\n{STALE_NOTE}"] if table.any_stale else []
    lines += [f"\n{RESIZED_NOTE}"] if table.any_resized else []
    lines += [f"\n{FAILED_NOTE}"] if table.any_failed else []
    lines += [f"\n{NO_VALUE_NOTE}"] if table.any_unscored else []
    for metric, description in METRICS.items():
        header = table.header(metric)
        lines += ["", f"## {description[0].upper()}{description[1:]}", ""]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in table.rows(metric)]
    lines += table.pretext_lines()
    return "\n".join(lines) + "\n"


# one pass, so that no replacement's own \, $, { or } is escaped again
_LATEX_REPLACEMENTS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "†": r"$^\dagger$", "‡": r"$^\ddagger$", "Δ": r"$\Delta$", "—": "---", "−": "$-$",
    "±": r"$\pm$", "✓": r"\checkmark", "✗": r"$\times$", "<": r"\textless{}",
    ">": r"\textgreater{}", "§": r"\S{}", "–": "--"}
_LATEX_SPECIAL = re.compile("|".join(map(re.escape, _LATEX_REPLACEMENTS)))


def latex_escape(text: str) -> str:
    """`text` as pdflatex (with booktabs and amssymb) takes it: special and non-ASCII
    characters of the tables' Markdown replaced, `code` set in \\texttt and "quotes" as
    LaTeX's (Tables 1-3)."""
    text = _LATEX_SPECIAL.sub(lambda match: _LATEX_REPLACEMENTS[match.group()], text)
    text = re.sub(r"`([^`]*)`", r"\\texttt{\1}", text)
    return re.sub(r'"([^"]*)"', r"``\1''", text)


def render_latex(table: Table1, tier: str, metric: str = PAPER_METRIC) -> str:
    """A booktabs table of one metric (default: the paper's best-epoch top-1)."""
    header = table.header(metric)
    lines = [
        "% Generated by relvit-repro (relvit report); do not edit. Needs \\usepackage{booktabs}.",
        r"\begin{table}[t]",
        r"\centering",
        r"\begin{tabular}{ll" + "r" * (len(header) - 2) + "}",
        r"\toprule",
        " & ".join(latex_escape(h) for h in header) + r" \\",
        r"\midrule",
    ]
    for row in table.rows(metric):  # ± and the cells' names escaped alike (latex_escape)
        lines.append(" & ".join(latex_escape(c) for c in row) + r" \\")
    notes = " ".join([NOTES[c] for c in table.extras] + ([STALE_NOTE] if table.any_stale else [])
                     + ([RESIZED_NOTE] if table.any_resized else [])
                     + ([FAILED_NOTE] if table.any_failed else [])
                     + ([NO_VALUE_NOTE] if table.any_unscored else []))
    caption = (f"Table 1 reproduced ({tier} tier"
               + (f"; {EMBEDDED_NOTE}" if table.on_embedded_data else "")
               + f"): {METRICS[metric]}. {_seeds_note(table)}"
               + (f" {_paper_note(table)}" if table.beside_paper(metric) else "")
               + (f" {notes}" if notes else ""))
    lines += [
        r"\bottomrule",
        r"\end{tabular}",
        r"\caption{" + latex_escape(caption) + "}",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


def printed_slips(paper_csv: str | Path) -> tuple[str, ...]:
    """The paper's printed Table 1 Improv. values (printed-improvements.csv beside `paper_csv`)
    that its own numbers do not give, e.g. "+5.85 for CIFAR-100, where its own numbers give
    +5.80"; none without that file."""
    from relvit.report.compare import improvement_checks  # it imports this module

    printed = Path(paper_csv).with_name(Path(PRINTED_IMPROVEMENTS).name)
    if not printed.is_file():
        return ()
    return tuple(f"{k.printed:+.2f} for {k.dataset}, where its own numbers give "
                 f"{k.computed:+.2f}" for k in improvement_checks(paper_csv, printed)
                 if k.table == 1 and not k.consistent)


def write_table1(sources: list[str | Path], out_stem: str | Path, tier: str,
                 paper_csv: str | Path | None = PAPER_TABLES) -> Table1:
    """Gather runs and run configs from `sources`; write `<out_stem>.md` and `.tex`."""
    paper = load_paper_table1(paper_csv) if paper_csv and Path(paper_csv).is_file() else None
    if paper_csv and paper is None:
        log.warning("%s: not found, so Table 1 has no paper columns (pass --paper, or run from "
                    "the repository's root)", paper_csv)
    slips = printed_slips(paper_csv) if paper is not None else ()
    table = Table1(gather_runs(sources), gather_planned(sources), paper, slips)
    if table.runs.empty and table.pretrain.empty and table.planned.empty:
        log.warning("no %s and no run config in %s: Table 1 is empty", METRICS_FILE,
                    ", ".join(map(str, sources)))
    left_out = table.without_column()
    if left_out:
        log.warning("Table 1 has no column for %d run(s), left out (a joint run, or a label of "
                    "no column): %s", len(left_out), ", ".join(left_out))
    atomic_write_text(render_markdown(table, tier), output_file(out_stem, ".md"))
    atomic_write_text(render_latex(table, tier), output_file(out_stem, ".tex"))
    return table


OUTPUT_SUFFIXES = (".md", ".tex", ".csv")


def output_file(stem: str | Path, suffix: str) -> Path:
    """`stem` + `suffix`: "out/table1.ci" gives "out/table1.ci.md" (Path.with_suffix had replaced
    ".ci", writing over out/table1.md); a stem ending in an output's suffix ("out/t.md") has it
    replaced."""
    stem = Path(stem)
    if stem.suffix in OUTPUT_SUFFIXES:
        return stem.with_suffix(suffix)
    return stem.with_name(stem.name + suffix)
