"""Table 1 (classification top-1, supervised vs RelViT) as Markdown and LaTeX.

Layout as in the paper: dataset, backbone, supervised mean ± std, RelViT mean ± std, improvement;
plus a column the paper lacks, a supervised run given the same total epochs as pretrain +
finetune, so a gain from the pretext task can be told apart from a gain from longer training.
Means and sample standard deviations (ddof = 1) are over seeds; a cell without runs shows "—".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from relvit.data.registry import DATASETS
from relvit.report.gather import gather_runs
from relvit.train.checkpoint import atomic_write_text

SAME_EPOCHS = "same-epochs"
METHODS = {  # column -> (mode, label)
    "Supervised": ("supervised", ""),
    "RelViT": ("finetune", ""),
    "Supervised, same epochs †": ("supervised", SAME_EPOCHS),
}
METRICS = {
    "best_top1": "best-epoch top-1 accuracy (%), as the paper reports it (method spec Q17)",
    "last_top1": "last-epoch top-1 accuracy (%)",
}
EMPTY = "—"


@dataclass(frozen=True)
class Cell:
    mean: float | None
    std: float | None
    n: int

    def text(self, pm: str = "±") -> str:
        if self.mean is None:
            return EMPTY
        if self.std is None:
            return f"{self.mean:.2f} (n=1)"
        return f"{self.mean:.2f} {pm} {self.std:.2f}"


def _cell(values: pd.Series) -> Cell:
    values = values.dropna()
    if values.empty:
        return Cell(None, None, 0)
    std = float(values.std(ddof=1)) if len(values) > 1 else None
    return Cell(float(values.mean()), std, len(values))


def _row_keys(runs: pd.DataFrame) -> list[tuple[str, str]]:
    """(dataset title, backbone label) pairs, datasets in registry (= the paper's) order."""
    order = {name: i for i, name in enumerate(DATASETS)}
    keys = runs[["dataset", "dataset_title", "backbone_label"]].drop_duplicates()
    keys = keys.assign(rank=keys["dataset"].map(order).fillna(len(order)))
    keys = keys.sort_values(["rank", "dataset", "backbone_label"])
    return list(keys[["dataset_title", "backbone_label"]].itertuples(index=False, name=None))


def _rows_of(runs: pd.DataFrame, dataset: str, backbone: str) -> pd.DataFrame:
    return runs[(runs.dataset_title == dataset) & (runs.backbone_label == backbone)]


def table1_rows(runs: pd.DataFrame, metric: str) -> list[dict[str, object]]:
    """One dict per (dataset, backbone): the Cell of each method and the improvement."""
    rows = []
    for dataset, backbone in _row_keys(runs[runs["mode"] != "pretrain"]):
        here = _rows_of(runs, dataset, backbone)
        cells = {
            column: _cell(here[(here["mode"] == mode) & (here["label"].fillna("") == label)][metric])
            for column, (mode, label) in METHODS.items()
        }
        sup, rel = cells["Supervised"], cells["RelViT"]
        improvement = (rel.mean - sup.mean) if sup.mean is not None and rel.mean is not None \
            else None
        rows.append({"Dataset": dataset, "Backbone": backbone, **cells, "Improv.": improvement})
    return rows


def pretext_lines(runs: pd.DataFrame) -> list[str]:
    """Markdown table of the pretrain runs' held-out pretext accuracies, beside chance."""
    pretrain = runs[runs["mode"] == "pretrain"]
    if pretrain.empty:
        return []
    lines = ["", "## Pretext task: held-out accuracy of the pretrain runs (%), last epoch", "",
             "Relation accuracy leaves out the trivial diagonal; chance is 1/8 for relations "
             "(8 off-diagonal classes, uniform guess) and 1/N for N positions.", "",
             "| Dataset | Backbone | Relations | Positions | Chance (relations / positions) |",
             "|---|---|---:|---:|---:|"]
    for dataset, backbone in _row_keys(pretrain):
        here = _rows_of(pretrain, dataset, backbone)
        positions = here["pretext_positions"].dropna()
        chance = f"12.50 / {100 / positions.iloc[0]:.2f}" if len(positions) else EMPTY
        lines.append(f"| {dataset} | {backbone} | {_cell(here['pretext_rel_acc']).text()} | "
                     f"{_cell(here['pretext_pos_acc']).text()} | {chance} |")
    return lines


def _improvement(value: float | None) -> str:
    return EMPTY if value is None else f"{value:+.2f}"


def render_markdown(runs: pd.DataFrame, tier: str) -> str:
    seeds = sorted(int(s) for s in runs["seed"].dropna().unique())  # of every run shown
    lines = [
        f"# Table 1 — {tier} tier",
        "",
        f"Reproduced with relvit-repro, tier **{tier}**"
        + (" (embedded data, tiny models: these numbers check the pipeline, they are not "
           "comparable to the paper's)" if tier == "smoke" else "")
        + f". Mean ± sample std over seeds {', '.join(map(str, seeds)) or '—'}.",
        "",
        "† not in the paper: a supervised run trained for as many epochs as pretrain + finetune.",
    ]
    for metric, description in METRICS.items():
        lines += ["", f"## {description[0].upper()}{description[1:]}", ""]
        header = ["Dataset", "Backbone", *METHODS, "Improv."]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|")
        for row in table1_rows(runs, metric):
            cells = [row["Dataset"], row["Backbone"], *(row[m].text() for m in METHODS),
                     _improvement(row["Improv."])]
            lines.append("| " + " | ".join(cells) + " |")
    lines += pretext_lines(runs)
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    for char, repl in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"),
                       ("#", r"\#"), ("†", r"$^\dagger$")):
        text = text.replace(char, repl)
    return text


def render_latex(runs: pd.DataFrame, tier: str, metric: str = "best_top1") -> str:
    """A booktabs table of one metric (default: the paper's best-epoch top-1)."""
    header = ["Dataset", "Backbone", *METHODS, "Improv."]
    lines = [
        "% Generated by relvit-repro (relvit report); do not edit.",
        r"\begin{table}[t]",
        r"\centering",
        r"\begin{tabular}{ll" + "r" * (len(header) - 2) + "}",
        r"\toprule",
        " & ".join(_latex_escape(h) for h in header) + r" \\",
        r"\midrule",
    ]
    for row in table1_rows(runs, metric):
        cells = [row["Dataset"], row["Backbone"], *(row[m].text(r"$\pm$") for m in METHODS),
                 _improvement(row["Improv."])]
        lines.append(" & ".join(c if "$" in c else _latex_escape(c) for c in cells) + r" \\")
    lines += [
        r"\bottomrule",
        r"\end{tabular}",
        r"\caption{" + _latex_escape(
            f"Table 1 reproduced ({tier} tier): {METRICS[metric]}, mean ± std over seeds. "
            "† not in the paper: supervised for as many epochs as pretrain + finetune."
        ).replace("±", r"$\pm$") + "}",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


def write_table1(sources: list[str | Path], out_stem: str | Path, tier: str) -> pd.DataFrame:
    """Gather the runs (metrics files or folders) and write `<out_stem>.md` and `.tex`."""
    runs = gather_runs(sources)
    out_stem = Path(out_stem)
    atomic_write_text(render_markdown(runs, tier), out_stem.with_suffix(".md"))
    atomic_write_text(render_latex(runs, tier), out_stem.with_suffix(".tex"))
    return runs
