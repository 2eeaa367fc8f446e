"""relvit figures: bar charts per table and training curves, from synthetic runs."""

import pytest
from test_compare import PAPER, detection_results, write_results

from relvit.cli import main
from relvit.report.compare import compare
from relvit.report.figures import curve_group, training_curves, write_figures

PNG, PDF = b"\x89PNG\r\n\x1a\n", b"%PDF-"


def add_histories(runs_root):
    """A history.csv beside every metrics.json: a classification or a pretrain run's columns."""
    for metrics in runs_root.rglob("metrics.json"):
        pretrain = "pretrain" in metrics.parent.parent.name
        columns = ["epoch", "lr", "train_loss", "val_loss"] + (
            ["val_acc_rel", "val_acc_pos"] if pretrain else ["val_acc_clf"])
        rows = [[str(e), "0.001", f"{2 / e:.3f}", f"{2.2 / e:.3f}"]
                + [f"{0.1 * e:.2f}"] * (2 if pretrain else 1) for e in range(1, 6)]
        (metrics.parent / "history.csv").write_text(
            "\n".join(",".join(r) for r in [columns, *rows]) + "\n")


def assert_file(path, magic):
    assert path.is_file(), path
    data = path.read_bytes()
    assert data.startswith(magic) and len(data) > 2000, path


def test_bar_charts_and_curves(tmp_path):
    write_results(tmp_path, planned_only=())
    add_histories(tmp_path / "runs")
    plan = detection_results(tmp_path / "det", True, (2.0, 5.0, 1.0))
    cells = compare([tmp_path / "configs", tmp_path / "runs"], plan, PAPER)
    metrics = sorted((tmp_path / "runs").rglob("metrics.json"))
    written = write_figures(cells, [1, 3], metrics, tmp_path / "figures")
    for table in (1, 3):
        assert_file(tmp_path / "figures" / f"table{table}.png", PNG)
        assert_file(tmp_path / "figures" / f"table{table}.pdf", PDF)
    curves = tmp_path / "figures" / "curves"
    expected = {"cifar10/vit_small/relvit", "cifar10/vit_small/supervised",
                "cifar10/vit_small/supervised_same_epochs", "imagenet/vit_small/supervised",
                "digits/vit_small/supervised"}
    assert {str(p.relative_to(curves).with_suffix("")) for p in curves.rglob("*.png")} == expected
    for path in curves.rglob("*.png"):
        assert_file(path, PNG)
    assert len(written) == 4 + len(expected)


def test_curves_join_the_epochs_that_were_evaluated(tmp_path, monkeypatch):
    """A detection run evaluates every `eval_every` epochs: its mAP curve is drawn through those
    epochs, not through the empty ones between (which would draw nothing), with a dot at each,
    so that a run evaluated once shows too."""
    from matplotlib.axes import Axes

    run = tmp_path / "runs" / "digit_scenes" / "vit_small" / "det_supervised" / "seed0"
    run.mkdir(parents=True)
    (run / "history.csv").write_text("epoch,lr,train_loss,val_bbox_mAP\n1,0.001,2.9,\n"
                                     "2,0.001,2.2,2.77\n3,0.001,1.9,\n4,0.001,1.7,11.29\n")
    (run / "metrics.json").write_text('{"mode": "detect", "seed": 0}')
    drawn = {}
    plot = Axes.plot

    def spy(ax, x, y, *args, **kwargs):
        drawn[kwargs["label"]] = (list(x), list(y), kwargs.get("marker"))
        return plot(ax, x, y, *args, **kwargs)

    monkeypatch.setattr(Axes, "plot", spy)
    training_curves([run / "metrics.json"], tmp_path / "figures")
    assert drawn == {"train_loss seed0": ([1, 2, 3, 4], [2.9, 2.2, 1.9, 1.7], None),
                     "box mAP seed0": ([2, 4], [2.77, 11.29], ".")}
    assert_file(tmp_path / "figures" / "curves" / "digit_scenes/vit_small/det_supervised.png", PNG)


@pytest.mark.parametrize("path,group", [
    ("r/runs/cifar10/vit_small/supervised/seed12/metrics.json", "cifar10/vit_small/supervised"),
    ("r/runs/a/b/metrics.json", "a/b"),  # under runs/, not a run id of the workflow's form
    ("elsewhere/x/y/metrics.json", "x")])  # outside the layout: the folder's parent
def test_a_runs_curves_go_in_the_figure_of_its_id_without_the_seed(path, group):
    assert curve_group(path) == group


def test_curves_need_a_history(tmp_path):
    write_results(tmp_path, planned_only=())
    metrics = tmp_path / "runs" / "cifar10/vit_small/supervised/seed1/metrics.json"
    assert curve_group(metrics) == "cifar10/vit_small/supervised"
    with pytest.raises(ValueError, match="history.csv: cannot read the run's history"):
        training_curves([metrics], tmp_path / "figures")
    (metrics.parent / "history.csv").write_bytes(b"epoch,train_loss\n1,\xff\n")
    with pytest.raises(ValueError, match="history.csv: cannot read the run's history .*utf-8"):
        training_curves([metrics], tmp_path / "figures")  # was a bare UnicodeDecodeError
    for given in (metrics.parent, metrics.with_name("nope.json")):  # had named ../history.csv
        with pytest.raises(ValueError, match=f"{given}: not a run's metrics.json"):
            training_curves([given], tmp_path / "figures")


def test_a_run_that_failed_before_its_first_epoch_is_named_not_drawn(tmp_path, monkeypatch):
    """A finetune of a failed pretrain run, or a non-finite loss in epoch 1, leaves a failed
    metrics.json and no history.csv: the figures job had failed on it, and with it the DAG's
    `all`. The group's figure is still written (a declared output), naming the seed."""
    import json

    from matplotlib.figure import Figure

    runs = tmp_path / "runs" / "digits" / "vit_small" / "relvit"
    for seed in (0, 1):
        (runs / f"seed{seed}").mkdir(parents=True)
    (runs / "seed0" / "metrics.json").write_text(json.dumps(
        {"seed": 0, "mode": "finetune", "status": "failed", "error": "its pretrain run failed"}))
    (runs / "seed1" / "metrics.json").write_text(json.dumps(
        {"seed": 1, "mode": "finetune", "backbone_label": "ViT/4 (D=36, depth 1, 3 heads)"}))
    (runs / "seed1" / "history.csv").write_text("epoch,train_loss,val_acc_clf\n1,2.0,0.5\n")
    titles = []
    suptitle = Figure.suptitle
    monkeypatch.setattr(Figure, "suptitle",
                        lambda fig, text, **kw: titles.append(text) or suptitle(fig, text, **kw))
    metrics = [runs / f"seed{seed}" / "metrics.json" for seed in (0, 1)]
    assert training_curves(metrics, tmp_path / "figures", "smoke") == [
        tmp_path / "figures" / "curves" / "digits/vit_small/relvit.png"]
    # the model the runs record and the tier: the group's "vit_small" is a resized one here
    assert titles == ["digits/vit_small/relvit — ViT/4 (D=36, depth 1, 3 heads), smoke tier\n"
                      "failed before a first epoch: seed0"]
    assert_file(tmp_path / "figures" / "curves" / "digits/vit_small/relvit.png", PNG)
    (runs / "seed1" / "history.csv").unlink()  # a finished run without one is still an error
    with pytest.raises(ValueError, match="seed1/history.csv: cannot read the run's history"):
        training_curves(metrics, tmp_path / "figures")


def test_cli_figures(tmp_path):
    write_results(tmp_path, planned_only=())
    add_histories(tmp_path / "runs")
    metrics = [str(p) for p in (tmp_path / "runs").rglob("metrics.json")]
    assert main(["figures", "--out", str(tmp_path / "fig"), str(tmp_path / "configs"),
                 str(tmp_path / "runs"), "--curves", *metrics]) == 0
    assert_file(tmp_path / "fig" / "table1.png", PNG)
    assert not (tmp_path / "fig" / "table2.png").exists()


def test_a_chart_names_its_tier_and_marks_stale_and_missing_cells(tmp_path, monkeypatch):
    import dataclasses

    from matplotlib.figure import Figure

    from relvit.report.compare import NOT_RUN
    from relvit.report.figures import bar_chart
    from relvit.report.table1 import NO_CELL

    write_results(tmp_path, planned_only=())
    cells = [c for c in compare([tmp_path / "configs", tmp_path / "runs"], None, PAPER)
             if c.table == 1]
    stale = dataclasses.replace(cells[0], provenance={**cells[0].provenance,
                                                      "stale": "cifar10/vit_small/x/seed0"})
    cells = [stale, *cells[1:]]
    drawn = {}

    def keep(fig, path, **kwargs):
        drawn["title"] = fig._suptitle.get_text()
        drawn["alphas"] = [patch.get_alpha() for patch in fig.axes[0].patches]

    monkeypatch.setattr(Figure, "savefig", keep)
    bar_chart(cells, 1, tmp_path / "fig", tier="ci")
    assert drawn["title"].startswith("Table 1, ci tier:") and "faded: stale" in drawn["title"]
    assert drawn["alphas"][0] == 0.4 and drawn["alphas"].count(0.4) == 1
    planned = [dataclasses.replace(cells[1], verdict=NOT_RUN, ours=NO_CELL), *cells[2:]]
    bar_chart(planned, 1, tmp_path / "fig", tier="ci")
    assert "no bar: not run" in drawn["title"]
    # not comparable for a resized model, or run on a resized copy: marked, not drawn plain
    from relvit.report.compare import OTHER_MODEL

    def hatches(fig, path, **kwargs):
        drawn["hatches"] = [patch.get_hatch() for patch in fig.axes[0].patches]
        drawn["title"] = fig._suptitle.get_text()

    monkeypatch.setattr(Figure, "savefig", hatches)
    marked = [dataclasses.replace(cells[0], verdict=OTHER_MODEL),
              dataclasses.replace(cells[1], provenance={**cells[1].provenance, "resized": "256"}),
              *cells[2:]]
    bar_chart(marked, 1, tmp_path / "fig", tier="ci")
    assert drawn["hatches"][0] == "xx" and drawn["hatches"][1] is None
    assert "hatched xx: a resized model" in drawn["title"]
    assert "dashed edge: run on a resized copy" in drawn["title"]


def _curve_runs(tmp_path):
    """Two seeds of one classification run, with history.csv (top-1 as a fraction)."""
    runs = tmp_path / "runs" / "cifar10" / "vit_small" / "supervised"
    metrics = []
    for seed, acc in ((0, ("0.5", "0.625")), (1, ("0.25", "0.75"))):
        run = runs / f"seed{seed}"
        run.mkdir(parents=True)
        (run / "history.csv").write_text("epoch,lr,train_loss,val_loss,val_acc_clf\n"
                                         f"1,0.001,2.5,2.75,{acc[0]}\n2,0.001,2.0,2.25,{acc[1]}\n")
        (run / "metrics.json").write_text(f'{{"mode": "finetune", "seed": {seed}}}')
        metrics.append(run / "metrics.json")
    return metrics


def test_curves_draw_both_losses_and_top1_in_percent_a_colour_per_seed(tmp_path, monkeypatch):
    """The metric panel is in % (a fraction × 100), both losses are drawn, and each seed has its
    own colour in both panels."""
    from matplotlib.axes import Axes

    from relvit.report.figures import training_curves

    drawn = {}
    plot = Axes.plot

    def spy(ax, x, y, *args, **kwargs):
        drawn[kwargs["label"]] = (list(x), [round(v, 6) for v in y], kwargs.get("color"))
        return plot(ax, x, y, *args, **kwargs)

    monkeypatch.setattr(Axes, "plot", spy)
    training_curves(_curve_runs(tmp_path), tmp_path / "figures")
    assert {label: xy for label, (*xy, _) in drawn.items()} == {
        "train_loss seed0": [[1, 2], [2.5, 2.0]], "val_loss seed0": [[1, 2], [2.75, 2.25]],
        "top-1 (%) seed0": [[1, 2], [50.0, 62.5]],
        "train_loss seed1": [[1, 2], [2.5, 2.0]], "val_loss seed1": [[1, 2], [2.75, 2.25]],
        "top-1 (%) seed1": [[1, 2], [25.0, 75.0]]}
    for series in ("train_loss", "val_loss", "top-1 (%)"):
        assert drawn[f"{series} seed0"][2] != drawn[f"{series} seed1"][2], series


def _bar_cells():
    from relvit.report.compare import OUT, WITHIN, Comparison
    from relvit.report.table1 import Cell

    return [Comparison(1, "cifar10", "vit_small", "relvit", "top-1",
                       paper=Cell(90.0, 1.0, 3), ours=Cell(91.0, 0.5, 3), verdict=WITHIN),
            Comparison(1, "svhn", "vit_small", "supervised", "top-1",
                       paper=Cell(80.0, 2.0, 3), ours=Cell(70.0, 4.0, 3), verdict=OUT),
            Comparison(3, "digit_scenes", "vit_small", "det_supervised", "box AP",
                       paper=Cell(40.0, None, 1), ours=Cell(35.0, None, 1), verdict=WITHIN)]


def test_a_bar_chart_draws_its_tables_cells_ours_beside_the_papers(tmp_path, monkeypatch):
    """Ours and the paper's bars carry their own means and stds, only the table's cells are
    drawn, a cell out of tolerance (only it) has a red edge, and table 1 names datasets."""
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from relvit.report.figures import bar_chart

    bars, seen = {}, {}
    bar = Axes.bar

    def spy(ax, x, height, *args, **kwargs):
        container = bar(ax, x, height, *args, **kwargs)
        bars[kwargs["label"]] = (list(height), list(kwargs["yerr"]), container)
        return container

    def keep(fig, path, **kwargs):
        seen["panels"] = len(fig.axes)
        seen["ticks"] = [t.get_text() for t in fig.axes[0].get_xticklabels()]

    monkeypatch.setattr(Axes, "bar", spy)
    monkeypatch.setattr(Figure, "savefig", keep)
    bar_chart(_bar_cells(), 1, tmp_path / "fig")
    assert bars["reproduced"][:2] == ([91.0, 70.0], [0.5, 4.0])
    assert bars["paper"][:2] == ([90.0, 80.0], [1.0, 2.0])
    assert seen == {"panels": 1, "ticks": ["cifar10\nrelvit", "svhn\nsupervised"]}
    edges = [(p.get_edgecolor(), p.get_linewidth()) for p in bars["reproduced"][2]]
    assert edges[1] == ((1.0, 0.0, 0.0, 1.0), 2) and edges[0][0] != (1.0, 0.0, 0.0, 1.0)


def test_cli_figures_draws_every_tables_chart_with_the_default_criterion(tmp_path, monkeypatch):
    """Cells of Tables 1 and 2 (compare's output, stubbed): a chart for each; the criterion
    of no --sigmas / --tolerance is compare's default."""
    from types import SimpleNamespace

    import relvit.report.compare as compare_module
    import relvit.report.figures as figures_module
    from relvit.report.criterion import Criterion

    seen = {}

    def compare(runs, plan, paper, criterion):
        seen["criterion"] = criterion
        return [SimpleNamespace(table=2), SimpleNamespace(table=1), SimpleNamespace(table=2)]

    def write_figures(cells, tables, curves, out, tier):
        seen["tables"], seen["tier"] = tables, tier
        return []

    monkeypatch.setattr(compare_module, "compare", compare)
    monkeypatch.setattr(figures_module, "write_figures", write_figures)
    assert main(["figures", "--out", str(tmp_path / "fig")]) == 0
    assert seen == {"criterion": Criterion(), "tables": [1, 2], "tier": "custom"}
    assert main(["figures", "--out", str(tmp_path / "fig"), "--sigmas", "3",
                 "--tolerance", "0.5"]) == 0
    assert seen["criterion"] == Criterion(3.0, 0.5)
