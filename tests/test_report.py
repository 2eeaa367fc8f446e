"""The Table 1 renderer on a fixed set of run directories: exact expected output."""

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from relvit.cli import main
from relvit.report.gather import gather_runs
from relvit.report.gather import gather_planned, load_paper_table1
from relvit.report.table1 import Table1, render_latex, render_markdown

RUNS = [  # (method dir, mode, label, seed, best_top1, last_top1)
    ("supervised", "supervised", "", 0, 90.0, 89.0),
    ("supervised", "supervised", "", 1, 92.0, 91.0),
    ("supervised", "supervised", "", 2, 91.0, 90.0),
    ("relvit", "finetune", "", 0, 95.0, 94.5),
    ("relvit", "finetune", "", 1, 96.0, 95.5),
    ("relvit", "finetune", "", 2, 94.0, 93.5),
    ("supervised_same_epochs", "supervised", "same-epochs", 0, 93.0, 92.0),
]

PRETRAIN = [("pretrain", "pretrain", "", 0, 80.0, 60.0), ("pretrain", "pretrain", "", 1, 84.0, 64.0)]

EXPECTED_MD = """\
# Table 1 — smoke tier

Reproduced with relvit-repro, tier **smoke** (embedded data, tiny models: these numbers check the pipeline, they are not comparable to the paper's). Mean ± sample std over seeds 0, 1, 2.

† not in the paper: a supervised run trained for as many epochs as pretrain + finetune.

## Best-epoch top-1 accuracy (%), as the paper reports it (method spec Q17)

| Dataset | Backbone | Supervised | RelViT | Improv. | Supervised, same epochs † |
|---|---|---:|---:|---:|---:|
| Digits (sklearn) | ViT-S/4 | 60.00 (n=1) | — | — | — |
| Digits (sklearn) | ViT/4 (D=72, depth 4) | 91.00 ± 1.00 | 95.00 ± 1.00 | +4.00 | 93.00 (n=1) |

## Last-epoch top-1 accuracy (%)

| Dataset | Backbone | Supervised | RelViT | Improv. | Supervised, same epochs † |
|---|---|---:|---:|---:|---:|
| Digits (sklearn) | ViT-S/4 | 59.00 (n=1) | — | — | — |
| Digits (sklearn) | ViT/4 (D=72, depth 4) | 90.00 ± 1.00 | 94.50 ± 1.00 | +4.50 | 92.00 (n=1) |

## Pretext task: held-out accuracy of the pretrain runs (%), last epoch

Relation accuracy leaves out the trivial diagonal; chance is 1/8 for relations (8 off-diagonal classes, uniform guess) and 1/N for N positions.

| Dataset | Backbone | Run | Relations | Positions | Chance (relations / positions) |
|---|---|---|---:|---:|---:|
| Digits (sklearn) | ViT/4 (D=72, depth 4) | pretrain | 82.00 ± 2.83 | 62.00 ± 2.83 | 12.50 / 6.25 |
"""


def write_runs(root):
    for method, mode, label, seed, best, last in RUNS + PRETRAIN:
        run = root / "digits" / "vit_small" / method / f"seed{seed}"
        run.mkdir(parents=True)
        metrics = {"mode": mode, "label": label, "seed": seed, "dataset": "digits",
                   "dataset_title": "Digits (sklearn)", "backbone": "vit_small",
                   "backbone_label": "ViT/4 (D=72, depth 4)"}
        if mode == "pretrain":
            metrics.update(pretext_positions=16,
                           last={"val_acc_rel": best / 100, "val_acc_pos": last / 100})
        else:
            metrics.update(best_top1=best, last_top1=last)
        (run / "metrics.json").write_text(json.dumps(metrics))
    other = root / "digits" / "vit_s4" / "supervised" / "seed0"
    other.mkdir(parents=True)
    (other / "metrics.json").write_text(json.dumps({
        "mode": "supervised", "label": "", "seed": 0, "dataset": "digits",
        "dataset_title": "Digits (sklearn)", "backbone": "vit_small", "backbone_label": "ViT-S/4",
        "best_top1": 60.0, "last_top1": 59.0}))


def test_markdown_is_exactly_as_expected(tmp_path):
    write_runs(tmp_path)
    assert render_markdown(Table1(gather_runs([tmp_path])), "smoke") == EXPECTED_MD
    # the note follows the data, not the tier's name: the CI tier runs on the digits too
    ci = render_markdown(Table1(gather_runs([tmp_path])), "ci")
    assert "they are not comparable to the paper's" in ci
    assert "not comparable to the paper's" in render_latex(Table1(gather_runs([tmp_path])), "ci")


def test_a_run_moved_aside_while_the_runs_are_read_is_left_out(tmp_path, monkeypatch, caplog):
    """`relvit report` during a long run: a run folder moved aside (`--replace-changed`) between
    the listing and the reading had ended the report with FileNotFoundError."""
    from relvit.report import gather

    write_runs(tmp_path)
    listed = gather.find_files([tmp_path], "metrics.json")
    monkeypatch.setattr(gather, "find_files", lambda *args, **kwargs: listed)
    gone = listed[0]
    gone.parent.rename(gone.parent.with_name(gone.parent.name + ".replaced-20261129-120000"))
    with caplog.at_level("WARNING", logger="relvit"):
        runs = gather_runs([tmp_path])
    assert sorted(runs["run"]) == sorted(str(path.parent) for path in listed[1:])
    assert f"{gone}: gone since the folder was listed; left out" in caplog.text


def test_one_seed_is_not_called_a_mean_and_std(tmp_path):
    """"Mean ± sample std over seeds 0." for the one seed of a run by hand, in the Markdown and
    in the LaTeX caption."""
    write_runs(tmp_path)
    for run in tmp_path.rglob("seed[12]"):
        for path in run.iterdir():
            path.unlink()
        run.rmdir()
    table = Table1(gather_runs([tmp_path]))
    text = render_markdown(table, "custom")
    assert ". One seed (0): no spread to show." in text and "sample std over" not in text
    caption = render_latex(table, "custom")  # the caption had said "mean ± std over seeds"
    assert "One seed (0): no spread to show." in caption and "std over" not in caption


def test_two_runs_of_one_seed_in_a_cell_are_refused(tmp_path):
    """A folder given twice over (a copy, or runs of another config) pooled its runs into the
    cell's mean: "82.17 ± 8.12" over seeds 0, 0, 1, 2. The error names both runs (only the
    copy's had been checked)."""
    from relvit.report.compare import compare

    write_runs(tmp_path / "a")
    copy = tmp_path / "b" / "digits" / "vit_small" / "supervised" / "seed0"
    copy.mkdir(parents=True)
    copy.joinpath("metrics.json").write_bytes(
        (tmp_path / "a" / "digits" / "vit_small" / "supervised" / "seed0" / "metrics.json"
         ).read_bytes())
    message = "Digits (sklearn) / ViT/4 (D=72, depth 4) / supervised: seed 0 has several runs"
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        render_markdown(Table1(gather_runs([tmp_path])), "smoke")
    assert str(copy) in str(err.value)
    assert str(tmp_path / "a" / "digits" / "vit_small" / "supervised" / "seed0") in str(err.value)
    with pytest.raises(ValueError, match=re.escape(message)):
        compare([tmp_path])
    render_markdown(Table1(gather_runs([tmp_path / "a"])), "smoke")  # one run per seed
    # a record without a label (None in the frame) is named as well
    for path in (copy, tmp_path / "a" / "digits" / "vit_small" / "supervised" / "seed0"):
        metrics = json.loads((path / "metrics.json").read_text())
        (path / "metrics.json").write_text(json.dumps({**metrics, "label": None}))
    with pytest.raises(ValueError, match=re.escape(message)):
        render_markdown(Table1(gather_runs([tmp_path])), "smoke")


def test_every_note_is_plain_ascii_latex():
    """pdflatex: the notes' `code`, "quotes", § and dashes had reached the captions raw."""
    from relvit.report import detection_tables, provenance, table1

    notes = [*table1.NOTES.values(), table1.FAILED_NOTE, table1.RESIZED_NOTE,
             table1.EMBEDDED_NOTE, provenance.STALE_NOTE,
             detection_tables.notes([{"dataset": "coco2017", "run_dataset": "digit_scenes",
                                      "metrics": "/nowhere/metrics.json"}])]
    for note in notes:
        # Markdown takes a bare <run> for an HTML tag and shows nothing
        assert not re.search(r"<\w+>", re.sub(r"`[^`]*`", "", note)), note
        latex = table1.latex_escape(note)
        assert latex.isascii() and "`" not in latex.replace("``", "") and '"' not in latex, latex
    assert table1.latex_escape('`a_b` "x" § — –') == r"\texttt{a\_b} ``x'' \S{} --- --"
    # a tier name is any string: each special character once, none of the escapes' own again
    assert table1.latex_escape(r"v2$ {a}~^\ ±") == \
        r"v2\$ \{a\}\textasciitilde{}\textasciicircum{}\textbackslash{} $\pm$"


def test_a_cell_with_failed_seeds_says_how_many(tmp_path):
    """A cell says how many of its seeds failed; a failed run read from its metrics.json is
    counted failed only, not also "no value" (a run of Table 1 had not been checked)."""
    from relvit.report.table1 import seed_cell

    assert seed_cell(pd.Series([90.0, 92.0]), failed=1).text() == "91.00 ± 1.41 [1 failed]"
    assert seed_cell(pd.Series([], dtype=float), failed=2).text() == "failed"
    write_runs(tmp_path)
    path = tmp_path / "digits" / "vit_small" / "supervised" / "seed2" / "metrics.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "status": "failed",
                                "error": "non-finite loss", "best_top1": None,
                                "last_top1": None}))
    table = Table1(gather_runs([tmp_path]))
    cell = table.ours("Digits (sklearn)", "ViT/4 (D=72, depth 4)", "supervised", "", "best_top1")
    assert cell.text() == "91.00 ± 1.41 [1 failed]"
    assert not table.any_unscored


def test_a_cell_short_of_its_planned_seeds_says_so():
    from relvit.report.table1 import seed_cell

    two = pd.Series([90.0, 92.0])
    assert seed_cell(two, planned=3).text() == "91.00 ± 1.41 (n=2 of 3)"
    assert seed_cell(two, planned=2).text() == "91.00 ± 1.41"
    assert seed_cell(two, failed=1, planned=3).text() == "91.00 ± 1.41 [1 failed]"
    assert seed_cell(pd.Series([90.0]), planned=3).text() == "90.00 (n=1 of 3)"


def test_a_finished_run_without_a_value_is_marked_not_counted_as_still_to_run(tmp_path):
    """A finished run whose metrics.json has no finite value (none, NaN, infinite) had been
    dropped from its cell as a seed still to run ("(n=2 of 3)"); an infinite one had made the
    mean infinite."""
    from relvit.report.table1 import NO_VALUE_NOTE, seed_cell

    assert seed_cell(pd.Series([90.0, 92.0, float("nan")]), planned=3, unscored=1).text() \
        == "91.00 ± 1.41 [1 no value]"
    assert seed_cell(pd.Series([90.0, float("inf")]), planned=2, unscored=1).text() \
        == "90.00 (n=1) [1 no value]"
    assert seed_cell(pd.Series([None], dtype=object), unscored=1).text() == "no value"
    write_runs(tmp_path)
    relvit = tmp_path / "digits" / "vit_small" / "relvit"
    for seed, value in ((1, float("nan")), (2, float("inf"))):
        metrics = json.loads((relvit / f"seed{seed}" / "metrics.json").read_text())
        (relvit / f"seed{seed}" / "metrics.json").write_text(json.dumps(
            {**metrics, "best_top1": value, "last_top1": None}))
    pretrain = tmp_path / "digits" / "vit_small" / "pretrain" / "seed1" / "metrics.json"
    metrics = json.loads(pretrain.read_text())
    pretrain.write_text(json.dumps({**metrics, "last": {"val_acc_pos": 0.6}}))
    table = Table1(gather_runs([tmp_path]))
    text = render_markdown(table, "smoke")
    assert "| 91.00 ± 1.00 | 95.00 (n=1) [2 no value] | +4.00 |" in text
    assert "| 90.00 ± 1.00 | 94.50 (n=1) [2 no value] | +4.50 |" in text
    assert "| pretrain | 80.00 (n=1) [1 no value] | 60.00 ± 0.00 |" in text
    assert NO_VALUE_NOTE in text and "no value" in render_latex(table, "smoke")


def test_latex_table(tmp_path):
    write_runs(tmp_path)
    tex = render_latex(Table1(gather_runs([tmp_path])), "smoke")
    assert r"Digits (sklearn) & ViT/4 (D=72, depth 4) & 91.00 $\pm$ 1.00 & 95.00 $\pm$ 1.00 & " \
           r"+4.00 & 93.00 (n=1) \\" in tex
    assert r"\toprule" in tex and r"Supervised, same epochs $^\dagger$" in tex
    assert "smoke tier" in tex
    # a cell holding a $ had been written unescaped, and every _ or % in it with it
    for path in tmp_path.rglob("metrics.json"):
        path.write_text(path.read_text().replace("Digits (sklearn)", "Digits_$2 100%"))
    tex = render_latex(Table1(gather_runs([tmp_path])), "smoke")
    assert r"Digits\_\$2 100\% & ViT/4 (D=72, depth 4) & 91.00 $\pm$ 1.00 & " in tex


def test_cli_report_writes_both_files_and_rejects_junk(tmp_path, capsys, caplog):
    """`relvit report` writes the .md and .tex and names junk and files of another kind; a run
    config (*.yaml) given directly, with no metrics in it, is taken without an error (that had
    gone unchecked)."""
    write_runs(tmp_path / "runs")
    assert main(["report", "--table1", str(tmp_path / "t1"), "--tier", "smoke",
                 str(tmp_path / "runs")]) == 0
    assert not caplog.records  # the paper's numbers found (from the repository's root)
    assert main(["report", "--table1", str(tmp_path / "t0"), "--paper", str(tmp_path / "no.csv"),
                 str(tmp_path / "runs")]) == 0
    assert "no.csv: not found, so Table 1 has no paper columns" in caplog.text
    assert (tmp_path / "t1.md").read_text() == EXPECTED_MD
    assert (tmp_path / "t1.tex").is_file()
    bad = tmp_path / "runs" / "digits" / "broken" / "metrics.json"
    bad.parent.mkdir()
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="broken/metrics.json: not a metrics file"):
        gather_runs([tmp_path / "runs"])
    assert main(["report", "--table1", str(tmp_path / "t2"), str(tmp_path / "absent")]) == 1
    assert "absent: no such metrics file, run config or directory" in capsys.readouterr().err
    # a file of another kind given directly had been left out without a word
    (tmp_path / "best.pt").write_bytes(b"PK")
    assert main(["report", "--table1", str(tmp_path / "t3"), str(tmp_path / "best.pt")]) == 1
    assert "best.pt: neither a run's metrics.json nor a run config (*.yaml)" in \
        capsys.readouterr().err
    (tmp_path / "seed0.yaml").write_text("mode: supervised\n")  # a plan, no metrics: no error
    assert gather_runs([tmp_path / "seed0.yaml"]).empty
    (tmp_path / "empty").mkdir()
    caplog.clear()
    assert main(["report", "--table1", str(tmp_path / "t4"), str(tmp_path / "empty")]) == 0
    assert "no metrics.json and no run config in" in caplog.text and "Table 1 is empty" in \
        caplog.text
    assert "# Table 1 — custom tier" in (tmp_path / "t4.md").read_text()  # without --tier


def test_an_output_stem_with_a_dot_keeps_it():
    """"out/table1.ci" had written out/table1.md, over another table."""
    from relvit.report.table1 import output_file

    assert output_file("out/table1.ci", ".md") == Path("out/table1.ci.md")
    assert output_file("out/table1", ".tex") == Path("out/table1.tex")
    assert output_file("out/table1.md", ".tex") == Path("out/table1.tex")


def test_a_run_no_column_shows_is_named(tmp_path, caplog):
    """A joint run given to `relvit report` had been left out without a word."""
    write_runs(tmp_path / "runs")
    joint = tmp_path / "runs" / "digits" / "vit_small" / "joint" / "seed0"
    joint.mkdir(parents=True)
    (joint / "metrics.json").write_text(json.dumps({
        "mode": "joint", "label": "", "seed": 0, "dataset": "digits",
        "dataset_title": "Digits (sklearn)", "backbone": "vit_small",
        "backbone_label": "ViT/4 (D=72, depth 4)", "best_top1": 99.0, "last_top1": 98.0}))
    with caplog.at_level("WARNING", logger="relvit"):
        assert main(["report", "--table1", str(tmp_path / "t1"), "--tier", "smoke",
                     str(tmp_path / "runs")]) == 0
    assert f"Table 1 has no column for 1 run(s), left out (a joint run, or a label of no " \
           f"column): {joint}" in caplog.text
    assert (tmp_path / "t1.md").read_text() == EXPECTED_MD


@pytest.mark.parametrize("change, said", [
    ({"seed": "zero"}, "not a run's metrics file (seed: expected a whole number, got 'zero')"),
    ({"dataset": None},
     "not a run's metrics file (dataset: expected a dataset of relvit/data/registry.py, got None)"),
    ({"dataset": "cifar-10"},  # "unknown dataset 'cifar-10'", naming no file
     "not a run's metrics file (dataset: expected a dataset of relvit/data/registry.py, "
     "got 'cifar-10')"),
    ({"mode": 3}, "not a run's metrics file (mode: expected a name, got 3)"),
    ({"seed": True}, "not a run's metrics file (seed: expected a whole number, got True)"),
    ({"mode": "detect", "seed": "x"},
     "not a run's metrics file (seed: expected a whole number, got 'x')"),
    ({"seed": "drop"}, "not a run's metrics file (seed: expected a whole number, got None)"),
    ({"backbone_label": "drop"},  # a TypeError's traceback
     "not a run's metrics file (backbone_label: expected a name, got None)"),
    ({"dataset_title": 7}, "not a run's metrics file (dataset_title: expected a name, got 7)"),
    (b"\xff{}", "not a metrics file ('utf-8' codec can't decode"),
])
def test_a_metrics_file_that_cannot_place_its_run_is_named(tmp_path, capsys, change, said):
    """Hand-edited or damaged records: the errors had named no file ("invalid literal for
    int() with base 10: 'zero'", "unknown dataset None", a bare UTF-8 codec error)."""
    write_runs(tmp_path / "runs")
    path = next((tmp_path / "runs").rglob("metrics.json"))
    if isinstance(change, bytes):
        path.write_bytes(change)
    else:
        metrics = {**json.loads(path.read_text()), **change}
        path.write_text(json.dumps({k: v for k, v in metrics.items() if v != "drop"}))
    assert main(["report", "--table1", str(tmp_path / "t"), str(tmp_path / "runs")]) == 1
    assert f"{path}: {said}" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["report", "--table1", "t"], ["compare", "--out", "c"]])
def test_another_csv_as_the_paper_is_named(tmp_path, capsys, command):
    """--paper given another CSV: "relvit: error: table", naming neither file nor column."""
    write_runs(tmp_path / "runs")
    other = tmp_path / "compare.csv"
    other.write_text("cell,verdict\na,ok\n")
    assert main([*command[:2], str(tmp_path / command[2]), "--paper", str(other),
                 str(tmp_path / "runs")]) == 1
    assert f"{other}: not the paper's tables (no column table, dataset" in \
        capsys.readouterr().err


# the finetune run 0.004 below the paper's 90.23: its Δ rounds to +0.00, not -0.00
PAPER_RUNS = [("supervised", 0, 86.0), ("supervised", 1, 87.0), ("finetune", 0, 90.226)]


def test_paper_columns_and_planned_cells(tmp_path):
    """CIFAR-10 runs sit beside the paper's numbers; a planned SVHN row with no run is empty."""
    for mode, seed, top1 in PAPER_RUNS:
        run = tmp_path / "runs" / f"{mode}{seed}"
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps({
            "mode": mode, "label": "", "seed": seed, "dataset": "cifar10",
            "dataset_title": "CIFAR-10", "backbone_label": "ViT-S/4", "best_top1": top1,
            "last_top1": top1}))
    plans = tmp_path / "configs"
    plans.mkdir()
    for mode in ("supervised", "finetune", "pretrain"):
        (plans / f"svhn-{mode}.yaml").write_text(
            f"mode: {mode}\ndata: {{name: svhn}}\nmodel: {{backbone: vit_small}}\n")
    # the detection runs of Tables 2-3 and their pretraining share the folders: not Table 1's
    for mode in ("detect", "pretrain"):
        (plans / f"scenes-{mode}.yaml").write_text(
            f"mode: {mode}\ndata: {{name: digit_scenes}}\nmodel: {{backbone: swin_tiny}}\n")
        run = tmp_path / "runs" / f"scenes-{mode}"
        run.mkdir()
        (run / "metrics.json").write_text(json.dumps({
            "mode": mode, "label": "", "seed": 0, "dataset": "digit_scenes",
            "dataset_title": "Digit scenes", "backbone_label": "Swin-T",
            **({"last": {"val_acc_rel": 0.5, "val_acc_pos": 0.5}} if mode == "pretrain" else {})}))
    planned = gather_planned([plans])
    assert len(planned) == 5
    table = Table1(gather_runs([tmp_path / "runs"]), planned,
                   load_paper_table1("results/paper/tables.csv"))
    assert table.header() == ["Dataset", "Backbone", "Supervised", "paper", "Δ", "RelViT",
                              "paper", "Δ", "Improv.", "paper"]
    assert table.rows("best_top1") == [
        ["CIFAR-10", "ViT-S/4", "86.50 ± 0.71", "86.09 ± 0.46", "+0.41", "90.23 (n=1)",
         "90.23 ± 0.09", "+0.00", "+3.73", "+4.14"],
        ["SVHN", "ViT-S/4", "—", "96.01 ± 0.07", "—", "—", "97.14 ± 0.03", "—", "—", "+1.13"],
    ]
    assert "$\\Delta$" in render_latex(table, "paper")
    # the paper reports the best epoch: the last-epoch table has no paper columns
    assert table.header("last_top1") == ["Dataset", "Backbone", "Supervised", "RelViT",
                                         "Improv."]
    assert len(table.rows("last_top1")[0]) == 5
    last = render_markdown(table, "paper").split("## Last-epoch")[1]
    assert "paper" not in last.split("\n\n")[1]
    latex = render_latex(table, "paper")
    assert "−" not in latex and "reproduced $-$ paper" in latex  # pdflatex has no U+2212
    assert "Digit scenes" not in render_markdown(table, "paper")
    assert "not comparable" not in render_markdown(table, "paper")


def test_the_papers_printed_slips_come_from_its_data(tmp_path):
    """The note beside the paper's columns named CIFAR-100's +5.85 (its numbers give +5.80) as
    fixed text, whatever paper file was given."""
    import shutil

    from test_compare import write_results

    from relvit.report.table1 import write_table1

    write_results(tmp_path)
    note = "(the paper prints +5.85 for CIFAR-100, where its own numbers give +5.80)."
    write_table1([tmp_path / "runs"], tmp_path / "t1", "test", "results/paper/tables.csv")
    assert note in (tmp_path / "t1.md").read_text()
    assert "computed from the numbers (the paper prints +5.85 for CIFAR-100" in (
        tmp_path / "t1.tex").read_text()  # the caption had called the column the paper's
    paper = tmp_path / "paper" / "tables.csv"  # without printed-improvements.csv beside it
    paper.parent.mkdir()
    shutil.copy("results/paper/tables.csv", paper)
    write_table1([tmp_path / "runs"], tmp_path / "t2", "test", paper)
    text = (tmp_path / "t2.md").read_text()
    assert "computed from the numbers." in text and "prints" not in text
    printed = paper.with_name("printed-improvements.csv")
    printed.write_text("table,dataset,backbone,metric,printed_improvement\n"
                       "1,CIFAR-10,ViT-S/4,top1,4.00\n")
    write_table1([tmp_path / "runs"], tmp_path / "t3", "test", paper)
    assert "(the paper prints +4.00 for CIFAR-10, where its own numbers give +4.14)." in (
        tmp_path / "t3.md").read_text()


def test_compare_without_the_papers_tables_says_where_they_are_looked_for(tmp_path, capsys):
    """Run outside the repository's root: a bare "No such file or directory" had been all."""
    write_runs(tmp_path / "runs")
    missing = tmp_path / "results" / "paper" / "tables.csv"
    assert main(["compare", "--out", str(tmp_path / "c"), "--paper", str(missing),
                 str(tmp_path / "runs")]) == 1
    assert f"{missing}: the paper's tables not found (a path from the repository's root" in \
        capsys.readouterr().err
