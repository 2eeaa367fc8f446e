"""relvit compare: verdicts on synthetic runs, the paper's Improv. slips, stale runs, provenance."""

import csv
import io
import json
import shutil
import statistics
from pathlib import Path

import pandas as pd
import pytest
import yaml

from relvit.cli import main
from relvit.config import HASH_EXCLUDES
from relvit.report.compare import (CSV_COLUMNS, NO_VALUE, NOT_IN_PAPER, NOT_RUN, OTHER_MODEL, OUT,
                                   STAND_IN, WITHIN, Criterion, compare, improvement_checks,
                                   out_of_tolerance, to_csv, to_markdown, write_verdict)
from relvit.report.criterion import PAPER_ROUNDING
from relvit.report.gather import gather_runs
from relvit.report.provenance import (file_config_hash, is_stale, planned_config, resized_sides,
                                     run_id, summarize)
from relvit.report.table1 import Table1, render_markdown
from relvit.train import provenance
from relvit.workflow import detection_plan_rows

PAPER = "results/paper/tables.csv"
# (dataset, method dir, mode, label, backbone label, {seed: best_top1})
TABLE1_RUNS = [
    ("cifar10", "supervised", "supervised", "", "ViT-S/4", {0: 86.0, 1: 86.5, 2: 86.2}),
    ("cifar10", "relvit", "finetune", "", "ViT-S/4", {0: 85.0, 1: 85.5, 2: 85.2}),
    ("cifar10", "supervised_same_epochs", "supervised", "same-epochs", "ViT-S/4", {0: 88.0}),
    ("imagenet", "supervised", "supervised", "", "ViT-S/32", {0: 64.7}),
    ("digits", "supervised", "supervised", "", "ViT/4 (D=36, depth 1, 3 heads)", {0: 80.0}),
]
TITLES = {"cifar10": "CIFAR-10", "imagenet": "Imagenet", "digits": "Digits (sklearn)",
          "svhn": "SVHN", "cifar100": "CIFAR-100"}


def run_config(dataset: str, mode: str, label: str, seed: int) -> dict:
    model = {"backbone": "vit_small"}
    if dataset == "digits":
        model.update(embed_dim=36, depth=1, num_heads=3)
    return {"mode": mode, "label": label, "seed": seed, "data": {"name": dataset},
            "model": model}


def write_results(root, runs=TABLE1_RUNS, planned_only=(("svhn", "relvit", "finetune"),)):
    """results/configs/<id>.yaml and results/runs/<id>/metrics.json, as the workflow lays them
    out, with the config hash a finished run records."""
    for dataset, method, mode, label, backbone, seeds in runs:
        for seed, top1 in seeds.items():
            run_id = f"{dataset}/vit_small/{method}/seed{seed}"
            config = root / "configs" / f"{run_id}.yaml"
            config.parent.mkdir(parents=True, exist_ok=True)
            config.write_text(yaml.safe_dump(run_config(dataset, mode, label, seed)))
            metrics = root / "runs" / run_id / "metrics.json"
            metrics.parent.mkdir(parents=True)
            metrics.write_text(json.dumps({
                "mode": mode, "label": label, "seed": seed, "dataset": dataset,
                "dataset_title": TITLES[dataset], "backbone_label": backbone,
                "best_top1": top1, "last_top1": top1 - 0.5, "wall_time_s": 10.0 + seed,
                "peak_memory_mb": 100.0 * (seed + 1), "device": "cpu (test)",
                "git_sha": "abc123", "image": "none", "config_hash": file_config_hash(config)}))
    for dataset, method, mode in planned_only:
        config = root / "configs" / f"{dataset}/vit_small/{method}/seed0.yaml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(yaml.safe_dump(run_config(dataset, mode, "", 0)))


def cells_by_key(cells):
    return {(c.table, c.dataset, c.method, c.metric): c for c in cells}


def test_table1_verdicts(tmp_path):
    write_results(tmp_path)
    cells = cells_by_key(compare([tmp_path / "configs", tmp_path / "runs"], paper_csv=PAPER))
    sup = cells[(1, "CIFAR-10", "Supervised", "top1")]
    # |86.23 - 86.09| <= 2 * sqrt(0.46² + σ²) = 1.05 (σ = 0.25): within the paper's ±
    assert sup.verdict == WITHIN and sup.rule == "2σ"
    sigma = statistics.stdev([86.0, 86.5, 86.2])
    assert sup.bound == pytest.approx(2 * (0.46 ** 2 + sigma ** 2) ** 0.5)
    assert sup.delta == pytest.approx(86.2333 - 86.09, abs=1e-3)
    assert sup.provenance["seeds"] == "0, 1, 2" and sup.planned_seeds == [0, 1, 2]
    assert sup.provenance["wall_time_s"] == "33" and sup.provenance["peak_memory_mb"] == "300"
    assert sup.provenance["git_sha"] == "abc123" and sup.provenance["stale"] == ""
    assert len(sup.provenance["config_hash"].split("; ")) == 3  # one per seed
    assert cells[(1, "CIFAR-10", "RelViT", "top1")].verdict == OUT  # 85.23 vs 90.23 ± 0.09
    # ImageNet-1K: no ± in the paper, one seed: the tolerance (0.9) decides; 64.70 vs 65.34
    imagenet = cells[(1, "Imagenet", "Supervised", "top1")]
    assert imagenet.rule == "tolerance" and imagenet.bound == 0.9
    assert imagenet.verdict == WITHIN
    strict = cells_by_key(compare([tmp_path / "configs", tmp_path / "runs"], paper_csv=PAPER,
                                  criterion=Criterion(tolerance=0.1)))
    assert strict[(1, "Imagenet", "Supervised", "top1")].verdict == OUT
    assert cells[(1, "SVHN", "RelViT", "top1")].verdict == NOT_RUN
    assert cells[(1, "Digits (sklearn)", "Supervised", "top1")].verdict == STAND_IN
    assert cells[(1, "CIFAR-10", "Supervised, same epochs", "top1")].verdict == NOT_IN_PAPER
    assert not any(c.failed for c in cells.values() if c.verdict != OUT)
    # compare.csv: the paper's mean and std, then ours
    row = next(csv.DictReader(io.StringIO(to_csv([sup]))))
    assert [row[k] for k in ("paper", "paper_std", "mean", "std")] == [
        "86.0900", "0.4600", "86.2333", f"{sigma:.4f}"]
    # Table 1's rows in the paper's (the registry's) order of datasets, not the alphabet's
    table = Table1(gather_runs([tmp_path / "runs"]))
    assert [title for title, _ in table.keys] == ["Digits (sklearn)", "CIFAR-10", "Imagenet"]
    # the paper has SVHN before CIFAR-100, against both orders of the alphabet (by name, title)
    more = [(dataset, "supervised", "supervised", "", "ViT-S/4", {0: 90.0})
            for dataset in ("cifar100", "svhn")]
    write_results(tmp_path / "more", runs=more, planned_only=())
    table = Table1(gather_runs([tmp_path / "runs", tmp_path / "more" / "runs"]))
    assert [title for title, _ in table.keys] == ["Digits (sklearn)", "CIFAR-10", "SVHN",
                                                  "CIFAR-100", "Imagenet"]


def test_a_cells_planned_seeds_are_its_configs_not_its_runs(tmp_path):
    """A Table 1 cell with one of three planned seeds run: compare lists the planned configs'
    seeds (0, 1, 2) and the cell says "(n=1 of 3)"; every test cell had run all it planned."""
    write_results(tmp_path)
    for seed in (1, 2):
        shutil.rmtree(tmp_path / "runs" / f"cifar10/vit_small/supervised/seed{seed}")
    cells = cells_by_key(compare([tmp_path / "configs", tmp_path / "runs"], paper_csv=PAPER))
    sup = cells[(1, "CIFAR-10", "Supervised", "top1")]
    assert sup.planned_seeds == [0, 1, 2] and sup.provenance["seeds"] == "0"
    assert sup.ours.text() == "86.00 (n=1 of 3)"


def test_imagenet_paper_value_is_what_the_test_assumes():
    paper = pd.read_csv(PAPER)
    row = paper[(paper.dataset == "Imagenet") & (paper.method == "Supervised")]
    assert abs(64.7 - float(row["value"].iloc[0])) <= 0.9 and pd.isna(row["std"].iloc[0])


def test_cli_exit_codes_and_files(tmp_path, capsys):
    """compare's exit codes, its .md and .csv; the .md's bound says its rule ("0.53 (2σ)", the
    rule had gone unchecked), and a tolerance of 0 (an exact check) is accepted, a negative one
    refused (`>= 0` had gone unchecked at its edge)."""
    write_results(tmp_path)
    out = tmp_path / "tables" / "compare"
    sources = [str(tmp_path / "configs"), str(tmp_path / "runs")]
    assert main(["compare", "--out", str(out), "--tier", "test", *sources]) == 1
    assert "OUT: table 1 CIFAR-10 ViT-S/4 RelViT top1" in capsys.readouterr().err
    md, table = out.with_suffix(".md").read_text(), pd.read_csv(out.with_suffix(".csv"))
    assert "| 1 | CIFAR-10 | ViT-S/4 | RelViT | top1 | 90.23 ± 0.09 | 85.23 ± 0.25 | -5.00 | " \
           "0.53 (2σ) | **OUT** |" in md
    assert "**OUT**" in md and "**inconsistent**" in md
    assert set(table["verdict"]) == {WITHIN, OUT, NOT_RUN, STAND_IN, NOT_IN_PAPER}
    assert main(["compare", "--out", str(out), "--no-fail", *sources]) == 0
    # only the stand-in ran: nothing comparable, nothing fails
    stand_in = tmp_path / "smoke"
    write_results(stand_in, [r for r in TABLE1_RUNS if r[0] == "digits"], ())
    assert main(["compare", "--out", str(out), str(stand_in)]) == 0
    assert main(["compare", "--out", str(out), "--tolerance", "0", str(stand_in)]) == 0
    assert Criterion(tolerance=0).tolerance == 0
    assert main(["compare", "--out", str(out), "--tolerance", "-1", str(stand_in)]) == 1
    assert "tolerance >= 0" in capsys.readouterr().err
    assert main(["compare", "--out", str(out), "--tolerance", "inf", str(stand_in)]) == 1
    assert "finite, got sigmas=2.0, tolerance=inf" in capsys.readouterr().err  # all had passed


def test_cli_outside_the_checkout_finds_the_printed_values_beside_the_paper(tmp_path,
                                                                           monkeypatch):
    """--improvements defaulted to a path under the current folder: outside the checkout,
    compare stopped with "No such file" though --paper was given."""
    write_results(tmp_path)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "compare"
    paper = Path(__file__).resolve().parents[1] / PAPER
    assert main(["compare", "--out", str(out), "--paper", str(paper), "--no-fail",
                 str(tmp_path / "runs")]) == 0
    assert "**inconsistent**" in out.with_suffix(".md").read_text()


def test_an_improvements_file_of_another_kind_is_named(tmp_path, capsys):
    """The paper's tables given as --improvements had raised an AttributeError; a binary file a
    bare UTF-8 codec error."""
    write_results(tmp_path)
    binary = tmp_path / "garbage.bin"
    binary.write_bytes(b"\xd0\xff\x00")
    for given, said in ((PAPER, "no column printed_improvement"), (binary, "utf-8")):
        assert main(["compare", "--out", str(tmp_path / "c"), "--improvements", str(given),
                     str(tmp_path / "runs")]) == 1
        err = capsys.readouterr().err
        assert f"{given}: not the paper's printed improvements (" in err and said in err, err


def detection_results(tmp_path, stand_in: bool, box: tuple[float, float, float]):
    tables = {"3": {"datasets": ["coco2017"], "backbones": ["vit_small"]}}
    workflow = {"results": str(tmp_path), "seeds": [0],
                "detection": {"tables": tables, **({"stand_in": "digit_scenes"} if stand_in
                                                   else {})}}
    rows = detection_plan_rows(workflow, PAPER)
    supervised = next(r for r in rows if r["variant"] == "supervised")
    path = tmp_path / "runs" / supervised["run_id"] / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"mode": "detect", "seed": 0, "backbone_label": "ViT-S/16",
                                "last_map": {"bbox": dict(zip(("mAP", "mAP50", "mAP75"), box))}}))
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(rows))
    return plan


def test_detection_verdicts(tmp_path):
    """Tables 2-3 cells against the paper; on a stand-in, or with a resized backbone ("not
    comparable (other model)", which had gone unchecked for detection), none is compared."""
    # COCO Supervised in the paper: 20.43, 35.36, 20.27 (no ±: the tolerance decides)
    plan = detection_results(tmp_path / "real", False, (20.0, 37.0, 20.27))
    cells = cells_by_key(compare([], plan, PAPER))
    assert [cells[(3, "COCO mini-val", "Supervised", m)].verdict
            for m in ("mAP", "mAP50", "mAP75")] == [WITHIN, OUT, WITHIN]
    assert cells[(3, "COCO mini-val", "RelViT (upstream ✓, perm ✗, mega ✗)", "mAP")].verdict \
        == NOT_RUN
    plan = detection_results(tmp_path / "smoke", True, (2.0, 5.0, 1.0))
    cells = compare([], plan, PAPER)
    assert {c.verdict for c in cells} == {STAND_IN, NOT_RUN} and not any(c.failed for c in cells)
    # a resized backbone on the real dataset: its row is not the paper's model, not compared
    plan = detection_results(tmp_path / "resized", False, (20.0, 37.0, 20.27))
    path = next((tmp_path / "resized" / "runs").rglob("metrics.json"))
    path.write_text(json.dumps({**json.loads(path.read_text()),
                                "backbone_label": "ViT/8 (D=36, depth 1, 3 heads)"}))
    cells = cells_by_key(compare([], plan, PAPER))
    assert [cells[(3, "COCO mini-val", "Supervised", m)].verdict
            for m in ("mAP", "mAP50", "mAP75")] == [OTHER_MODEL] * 3


def test_a_failed_detection_run_is_counted_failed_not_averaged(tmp_path):
    """compare averaged a failed run's last_map (had its record one) into the row's mean, where
    the tables leave it out."""
    plan = detection_results(tmp_path, False, (20.0, 35.0, 20.0))
    rows = json.loads(plan.read_text())
    supervised = next(r for r in rows if r["variant"] == "supervised")
    failed = tmp_path / "runs" / supervised["run_id"].replace("seed0", "seed1") / "metrics.json"
    failed.parent.mkdir(parents=True)
    failed.write_text(json.dumps({"mode": "detect", "seed": 1, "status": "failed",
                                  "last_map": {"bbox": {"mAP": 0.0, "mAP50": 0.0,
                                                        "mAP75": 0.0}}}))
    plan.write_text(json.dumps(rows + [{**supervised, "seed": 1, "metrics": str(failed),
                                        "run_id": supervised["run_id"].replace("seed0",
                                                                               "seed1")}]))
    cell = cells_by_key(compare([], plan, PAPER))[(3, "COCO mini-val", "Supervised", "mAP")]
    assert (cell.ours.mean, cell.ours.n, cell.ours.failed) == (20.0, 1, 1)
    # compare.csv says why a seed is not in the mean (it had n 1 and seeds "0, 1" only)
    row = next(csv.DictReader(io.StringIO(to_csv([cell]))))
    assert (row["n"], row["failed_seeds"], row["no_value_seeds"]) == ("1", "1", "0")


def test_runs_without_a_value_are_no_value_not_not_run(tmp_path):
    """A cell whose runs finished without a finite value had the verdict "not run"."""
    write_results(tmp_path)
    for seed in (0, 1, 2):
        path = tmp_path / "runs" / f"cifar10/vit_small/relvit/seed{seed}" / "metrics.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "best_top1": None}))
    cells = cells_by_key(compare([tmp_path / "configs", tmp_path / "runs"], paper_csv=PAPER))
    cell = cells[(1, "CIFAR-10", "RelViT", "top1")]
    assert (cell.verdict, cell.ours.unscored, cell.failed) == (NO_VALUE, 3, False)
    # detection: a finished run whose evaluation gave no box mAP
    plan = detection_results(tmp_path / "det", False, (20.0, 35.0, 20.0))
    path = next((tmp_path / "det" / "runs").rglob("metrics.json"))
    path.write_text(json.dumps({**json.loads(path.read_text()),
                                "last_map": {"bbox": {"mAP": None, "mAP50": 35.0}}}))
    cells = cells_by_key(compare([], plan, PAPER))
    assert cells[(3, "COCO mini-val", "Supervised", "mAP")].verdict == NO_VALUE
    assert cells[(3, "COCO mini-val", "Supervised", "mAP50")].verdict == WITHIN
    assert cells[(3, "COCO mini-val", "Supervised", "mAP75")].verdict == NO_VALUE
    assert cells[(3, "COCO mini-val", "RelViT (upstream ✓, perm ✗, mega ✗)", "mAP")].verdict \
        == NOT_RUN


def test_improv_flags_are_the_papers_known_slips():
    """/work/shared/paper/README.md: CIFAR-100 +5.85 (5.80), KITTI mAP50 +7.99 (7.79), Table 2 ViT
    mAP75 and Table 3 SVHN mAP / mAP75 from the last RelViT row instead of the best."""
    checks = improvement_checks()
    flagged = {(k.table, k.dataset, k.backbone, k.metric): k for k in checks if not k.consistent}
    assert set(flagged) == {(1, "CIFAR-100", "ViT-S/4", "top1"),
                            (3, "KITTI", "ViT-S", "mAP_box50"),
                            (2, "VOC-2007", "ViT", "mAP75"),
                            (3, "SVHN", "ViT-S", "mAP_box"), (3, "SVHN", "ViT-S", "mAP_box75")}
    assert flagged[(1, "CIFAR-100", "ViT-S/4", "top1")].computed == pytest.approx(5.80)
    assert flagged[(3, "KITTI", "ViT-S", "mAP_box50")].computed == pytest.approx(7.79)
    assert "no row" in flagged[(3, "KITTI", "ViT-S", "mAP_box50")].note
    assert "mega yes" in flagged[(3, "SVHN", "ViT-S", "mAP_box75")].note
    assert len(checks) == 25


def test_editing_a_run_config_after_the_run_makes_it_stale(tmp_path):
    write_results(tmp_path)
    run = tmp_path / "runs" / "cifar10/vit_small/relvit/seed1"
    config = planned_config(run / "metrics.json")
    assert config == tmp_path / "configs" / "cifar10/vit_small/relvit/seed1.yaml"
    metrics = json.loads((run / "metrics.json").read_text())
    assert is_stale(metrics, run / "metrics.json") is False
    # the device is not part of the hash: moving a run to a GPU does not make it stale
    raw = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**raw, "device": "cuda"}))
    assert is_stale(metrics, run / "metrics.json") is False
    config.write_text(yaml.safe_dump({**raw, "optim": {"lr": 0.123}}))
    assert is_stale(metrics, run / "metrics.json") is True
    cells = cells_by_key(compare([tmp_path / "configs", tmp_path / "runs"], paper_csv=PAPER))
    assert cells[(1, "CIFAR-10", "RelViT", "top1")].provenance["stale"] == str(run)
    assert cells[(1, "CIFAR-10", "Supervised", "top1")].provenance["stale"] == ""
    assert "**1 cell is stale**" in to_markdown(list(cells.values()), [], "test", Criterion())
    table = render_markdown(Table1(gather_runs([tmp_path / "runs"])), "test")
    assert "85.23 ± 0.25 [stale]" in table and "[stale]: a run of this cell" in table
    # a run older than the config_hash key: the hash of the config.yaml it wrote decides
    del metrics["config_hash"]
    (run / "config.yaml").write_text(yaml.safe_dump(raw))
    assert is_stale(metrics, run / "metrics.json") is True


def test_a_hash_recorded_before_hash_excludes_grew_does_not_make_a_run_stale(tmp_path):
    """metrics.json's hash of a run made before data.root left the hash differs from any hash
    taken now: the config.yaml the run wrote, hashed as now, decides (a damaged one falls back
    to the recorded hash)."""
    write_results(tmp_path)
    run = tmp_path / "runs" / "cifar10/vit_small/relvit/seed1"
    config = planned_config(run / "metrics.json")
    metrics = {**json.loads((run / "metrics.json").read_text()), "config_hash": "0123abcd"}
    assert is_stale(metrics, run / "metrics.json") is True  # no config.yaml: the record's
    (run / "config.yaml").write_text(config.read_text())
    assert is_stale(metrics, run / "metrics.json") is False
    (run / "config.yaml").write_text("optim: [")
    assert is_stale(metrics, run / "metrics.json") is True


def test_a_finetune_of_a_stale_or_redone_pretrain_run_is_stale(tmp_path, monkeypatch):
    """A RelViT cell had stayed unmarked while the pretrain run it started from was stale (its
    config changed; only the pretext table said so) or had been redone since."""
    import hashlib

    monkeypatch.chdir(tmp_path)  # init_checkpoint: a path from the workflow's folder
    runs = [("cifar10", "pretrain", "pretrain", "", "ViT-S/4", {0: 50.0}),
            ("cifar10", "relvit", "finetune", "", "ViT-S/4", {0: 85.0})]
    write_results(Path("results"), runs=runs, planned_only=())
    best = Path("results/runs/cifar10/vit_small/pretrain/seed0/best.pt")
    best.write_bytes(b"the pretrain weights")
    finetune = Path("results/runs/cifar10/vit_small/relvit/seed0/metrics.json")
    record = json.loads(finetune.read_text())
    record.update(init_checkpoint=str(best),
                  init_sha256=hashlib.sha256(best.read_bytes()).hexdigest())
    finetune.write_text(json.dumps(record))
    assert is_stale(record, finetune) is False
    best.write_bytes(b"the weights of the pretrain run redone")
    assert is_stale(record, finetune) is True
    best.write_bytes(b"the pretrain weights")
    assert is_stale(record, finetune) is False
    planned = Path("results/configs/cifar10/vit_small/pretrain/seed0.yaml")
    raw = yaml.safe_load(planned.read_text())
    planned.write_text(yaml.safe_dump({**raw, "optim": {"epochs": 10}}))
    assert is_stale(record, finetune) is True
    cells = cells_by_key(compare([Path("results")], paper_csv=Path(__file__).parents[1] / PAPER))
    assert cells[(1, "CIFAR-10", "RelViT", "top1")].provenance["stale"] == str(finetune.parent)


def test_another_tiers_results_inside_a_given_folder_are_left_out(tmp_path, caplog):
    """results/ holds the CI tier's results/ci: `relvit compare results/` had averaged the
    CI tier's runs into the smoke tier's cells without a word."""
    write_results(tmp_path / "results")
    ci_runs = [("cifar10", "supervised", "supervised", "", "ViT-S/4", {3: 10.0})]
    write_results(tmp_path / "results" / "ci", runs=ci_runs, planned_only=())
    with caplog.at_level("WARNING", logger="relvit"):
        cells = cells_by_key(compare([tmp_path / "results"], paper_csv=PAPER))
    assert cells[(1, "CIFAR-10", "Supervised", "top1")].provenance["seeds"] == "0, 1, 2"
    assert (f"{tmp_path / 'results' / 'ci'}: another tier's results folder (it holds runs/) "
            f"inside {tmp_path / 'results'}, left out: give it on its own") in caplog.text
    alone = cells_by_key(compare([tmp_path / "results" / "ci"], paper_csv=PAPER))
    assert alone[(1, "CIFAR-10", "Supervised", "top1")].provenance["seeds"] == "3"


def test_the_pretext_table_marks_stale_runs_and_seeds_still_to_run(tmp_path):
    """The pretrain runs' table had neither mark: an edited config showed "25.33 (n=1)"."""
    from relvit.report.gather import gather_planned

    for seed in (0, 1):
        config = tmp_path / "configs" / f"digits/vit_small/pretrain/seed{seed}.yaml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(yaml.safe_dump(run_config("digits", "pretrain", "", seed)))
    run = tmp_path / "runs" / "digits/vit_small/pretrain/seed0"
    run.mkdir(parents=True)
    config = tmp_path / "configs" / "digits/vit_small/pretrain/seed0.yaml"
    run.joinpath("metrics.json").write_text(json.dumps({
        "mode": "pretrain", "label": "", "seed": 0, "dataset": "digits",
        "dataset_title": TITLES["digits"], "backbone_label": "ViT/4 (D=36, depth 1, 3 heads)",
        "pretext_positions": 16, "last": {"val_acc_rel": 0.2533, "val_acc_pos": 0.5},
        "config_hash": file_config_hash(config)}))

    def pretext_row():
        table = Table1(gather_runs([tmp_path / "runs"]), gather_planned([tmp_path / "configs"]))
        text = render_markdown(table, "test")
        return next(line for line in text.splitlines() if "| pretrain |" in line), text

    row, text = pretext_row()
    assert "| 25.33 (n=1 of 2) | 50.00 (n=1 of 2) |" in row and "[stale]" not in text
    raw = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**raw, "optim": {"epochs": 40}}))
    row, text = pretext_row()
    assert "| 25.33 (n=1 of 2) [stale] | 50.00 (n=1 of 2) [stale] |" in row
    assert "[stale]: a run of this cell" in text


def test_container_image_and_config_hash(monkeypatch, tiny_config):
    for name in provenance.IMAGE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert provenance.container_image() == "none"
    monkeypatch.setenv("RELVIT_IMAGE", "ghcr.io/x/relvit:1")
    assert provenance.container_image() == "ghcr.io/x/relvit:1"
    monkeypatch.setenv("APPTAINER_CONTAINER", "/images/relvit.sif")
    assert provenance.container_image() == "/images/relvit.sif"
    a = tiny_config("supervised").to_dict()
    assert provenance.config_hash(a) == provenance.config_hash({**a, "device": "cuda:1"})
    assert provenance.config_hash(a) == provenance.config_hash({**a, "precision": "fp32"})
    assert provenance.config_hash(a) != provenance.config_hash({**a, "seed": 1})
    assert len(provenance.config_hash(a)) == 16


def test_config_hash_leaves_out_the_init_checkpoint(tiny_config):
    """Hashing init_checkpoint would make a finetune stale whenever its pretrain path moves."""
    a = tiny_config("finetune").to_dict()
    assert provenance.config_hash(a) == provenance.config_hash(
        {**a, "init_checkpoint": "/elsewhere/runs/digits/vit/pretrain/seed0/best.pt"})
    assert "init_checkpoint" in HASH_EXCLUDES


def test_a_tiny_run_records_its_provenance(tmp_path, monkeypatch, tiny_config):
    from relvit.train.loop import train

    for name in provenance.IMAGE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SINGULARITY_CONTAINER", "relvit.sif")
    cfg = tiny_config("supervised", optim={"epochs": 1})
    metrics = train(cfg, tmp_path / "runs" / "run", progress=False)
    written = json.loads((tmp_path / "runs" / "run" / "metrics.json").read_text())
    assert written == metrics
    for key in ("git_sha", "device", "seed", "wall_time_s", "peak_memory_mb"):
        assert written[key] is not None, key
    assert written["image"] == "relvit.sif"
    # the hash of the planned config (device "auto" there) matches the run's
    planned = tmp_path / "configs" / "run.yaml"
    planned.parent.mkdir()
    planned.write_text(yaml.safe_dump({**cfg.to_dict(), "device": "auto"}))
    assert written["config_hash"] == file_config_hash(planned)
    assert is_stale(written, tmp_path / "runs" / "run" / "metrics.json") is False


def test_stale_detection_rows_are_marked_in_tables_2_3(tmp_path):
    from relvit.report.detection_tables import render_markdown as render_detection

    plan = detection_results(tmp_path, False, (20.0, 35.0, 20.0))
    rows = json.loads(plan.read_text())
    supervised = next(r for r in rows if r["variant"] == "supervised")
    config = tmp_path / "configs" / f"{supervised['run_id']}.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(yaml.safe_dump({"mode": "detect", "data": {"name": "coco2017"}}))
    path = tmp_path / "runs" / supervised["run_id"] / "metrics.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "config_hash": "0" * 16}))
    text = render_detection(3, rows, pd.read_csv(PAPER), "test")
    assert "| COCO mini-val | Supervised [stale] |" in text and "[stale]: a run" in text
    cells = cells_by_key(compare([], plan, PAPER))
    assert cells[(3, "COCO mini-val", "Supervised", "mAP")].provenance["stale"]


def test_out_of_tolerance_reads_a_written_compare_csv(tmp_path):
    """What rule compare_verdict fails on: the OUT rows of compare.csv, named, no other verdict
    (not run, failed, no value, not comparable had gone unchecked); write_verdict then fails
    naming them in its log and writes no verdict file; another CSV is refused with its path."""
    header = ",".join(CSV_COLUMNS)
    rows = ["1,CIFAR-10,ViT-S/4,RelViT,top1,90.23,0.09,84.0000,,1,0,0,-6.23,0.18,2 sigma,OUT",
            "1,SVHN,ViT-S/4,RelViT,top1,97.14,0.03,97.1000,,1,0,0,-0.04,0.06,2 sigma,within"]
    rows += [f"1,SVHN,ViT-S/4,Supervised,top1,96.01,0.07,,,0,0,0,,,,{verdict}"
             for verdict in ("not run", "run failed", "no value", "not comparable (stand-in)",
                             "not comparable (other model)", "not in the paper")]
    path = tmp_path / "compare.csv"
    path.write_text("\n".join([header] + [r + "," * (len(CSV_COLUMNS) - 16) for r in rows]))
    assert out_of_tolerance(path) == [
        "table 1 CIFAR-10 ViT-S/4 RelViT top1: 84.0000 vs paper 90.23 (|Δ| > 0.18)"]
    with pytest.raises(ValueError, match=r"^1 cell\(s\) out of tolerance"):
        write_verdict(path, tmp_path / "verdict.txt", tmp_path / "verdict.log")
    assert "table 1 CIFAR-10 ViT-S/4 RelViT top1" in (tmp_path / "verdict.log").read_text()
    assert not (tmp_path / "verdict.txt").exists()
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="other.csv: not a compare.csv"):
        out_of_tolerance(tmp_path / "other.csv")


def test_the_verdict_on_a_full_disk_names_its_file_and_leaves_none_empty(tmp_path,
                                                                         monkeypatch):
    """rule compare_verdict wrote with Path.write_text: a full disk left an empty log and said
    only "[Errno 28] No space left on device"."""
    import errno

    from relvit.report import compare as compare_module

    path = tmp_path / "compare.csv"
    path.write_text(",".join(CSV_COLUMNS) + "\n")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("relvit.atomic.tempfile.mkstemp", full)
    log_path = tmp_path / "logs" / "verdict.log"
    with pytest.raises(OSError, match=f"cannot write {log_path} \\(No space left on device\\)"):
        compare_module.write_verdict(path, tmp_path / "verdict.txt", log_path)
    assert not log_path.exists() and not (tmp_path / "verdict.txt").exists()


def test_a_delta_at_the_bound_is_within():
    """64.44 - 65.34 is -0.9000000000000057 in floats: the cell prints Δ -0.90, bound 0.90."""
    from relvit.report.compare import judge
    from relvit.report.criterion import Criterion
    from relvit.report.table1 import Cell

    paper = Cell(65.34, None, 1)  # ImageNet-1K supervised: no ± printed, the 0.9 tolerance
    assert judge(paper, Cell(64.44, None, 1), Criterion())[0] == WITHIN
    assert judge(paper, Cell(66.24, None, 1), Criterion())[0] == WITHIN
    assert judge(paper, Cell(64.43, None, 1), Criterion())[0] != WITHIN


def test_one_seed_takes_the_papers_spread_for_its_own():
    """A single run has no sample std: the bound had fallen to 2·σ_paper (0.06 points on SVHN),
    narrower than for three seeds of the same mean; the paper's per-run ± stands in for it."""
    from relvit.report.compare import judge
    from relvit.report.criterion import Criterion
    from relvit.report.table1 import Cell

    paper = Cell(97.07, 0.03, 3)
    bound = Criterion().bound(paper, Cell(97.15, None, 1))[0]
    assert bound == pytest.approx(2 * 2 ** 0.5 * 0.03)
    assert judge(paper, Cell(97.15, None, 1), Criterion())[0] == WITHIN  # Δ 0.08 <= 0.085
    assert judge(paper, Cell(97.15, 0.0, 3), Criterion())[0] == OUT  # three equal seeds: σ = 0


def test_a_delta_within_the_papers_rounding_of_the_bound_is_within():
    """The paper prints to 0.01, so its 68.28 is anything in [68.275, 68.285]: Δ +0.904 against
    the 0.9 tolerance had been OUT, printed as "0.90 > 0.90"."""
    from relvit.report.compare import judge
    from relvit.report.criterion import Criterion
    from relvit.report.table1 import Cell

    paper = Cell(68.28, None, 1)
    assert judge(paper, Cell(69.184, None, 1), Criterion())[0] == WITHIN
    assert judge(paper, Cell(69.186, None, 1), Criterion())[0] == OUT
    # the bound plus the rounding is itself within, on either side (`<=` had gone unchecked)
    assert Criterion.agrees(0.9 + PAPER_ROUNDING, 0.9)
    assert Criterion.agrees(-(0.9 + PAPER_ROUNDING), 0.9)


def test_detection_rows_are_named_as_the_tables_name_them(tmp_path):
    from relvit.report.compare import detection_cells
    from relvit.report.criterion import Criterion
    from relvit.workflow import detection_plan_rows

    workflow = {"results": str(tmp_path), "seeds": [0], "detection": {"tables": {
        "2": {"datasets": ["voc2007"], "backbones": ["swin_tiny", "t2t_vit_14"]}}}}
    cells = detection_cells(detection_plan_rows(workflow, PAPER), pd.read_csv(PAPER),
                            Criterion())
    methods = {(c.backbone, c.method) for c in cells}
    assert ("Swin-T", "RelSwin (upstream ✓, perm ✓, mega ✗)") in methods
    assert ("T2T-ViT-14", "RelT2T-ViT (upstream ✗, perm ✗, mega ✗)") in methods


def test_run_id_is_the_part_after_the_last_runs_folder():
    """The first `runs` folder of a results tree under a folder named runs would give p/... ."""
    assert run_id("/x/runs/p/results/runs/a/b/metrics.json") == "a/b"
    assert run_id("/x/elsewhere/metrics.json") is None


def provenance_rows(**columns) -> pd.DataFrame:
    """Rows of gather_runs with their provenance columns, `columns` (one list each) given."""
    n = len(next(iter(columns.values())))
    base = {"run": [f"digits/vit/relvit/seed{i}" for i in range(n)], "seed": list(range(n)),
            "config_hash": ["h"] * n, "git_sha": ["g"] * n, "image": [None] * n,
            "device": ["cpu"] * n, "world_size": [1] * n, "execution": [None] * n,
            "wall_time_s": [1.0] * n, "peak_memory_mb": [2.0] * n, "stale": [None] * n,
            "resized": [None] * n}
    return pd.DataFrame({**base, **columns})


def test_summarize_takes_an_unknown_stale_for_not_stale():
    """Runs without a planned config (stale None) would be flagged stale in every table."""
    assert summarize(provenance_rows(stale=[None]))["stale"] == ""


def test_seeds_and_resized_sides_are_listed_in_numeric_order():
    """A cell's seeds read in path order (seed10 before seed2) are listed as numbers, and its
    resized copies smallest side first, whatever the runs' order: neither order was checked."""
    assert summarize(provenance_rows(seed=[10, 2, 0]))["seeds"] == "0, 2, 10"
    assert resized_sides(provenance_rows(resized=[512.0, 256.0, 512.0])) == "256/512"


def test_a_cell_says_its_runs_processes_and_execution_settings(tmp_path):
    """The README promised compare shows metrics.json's world_size and execution per cell; it
    showed neither, and precision or compile can move a number by rounding."""
    write_results(tmp_path)
    settings = {"device": "cuda", "compile": True, "compile_mode": "default",
                "compile_step": False, "precision": "bf16", "data.workers": 8, "data.root": "d"}
    for seed, world, precision in ((0, 1, "bf16"), (1, 4, "fp32"), (2, 1, "bf16")):
        path = tmp_path / "runs" / f"cifar10/vit_small/supervised/seed{seed}/metrics.json"
        record = json.loads(path.read_text())
        record.update(world_size=world, execution={**settings, "precision": precision})
        path.write_text(json.dumps(record))
    cells = compare([tmp_path / "configs", tmp_path / "runs"], paper_csv=PAPER)
    sup = cells_by_key(cells)[(1, "CIFAR-10", "Supervised", "top1")]
    assert sup.provenance["processes"] == "1; 4"
    assert sup.provenance["execution"] == (
        "precision=bf16 compile=True compile_mode=default compile_step=False; "
        "precision=fp32 compile=True compile_mode=default compile_step=False")
    row = next(r for r in csv.DictReader(io.StringIO(to_csv(cells)))
               if r["method"] == "Supervised" and r["dataset"] == "CIFAR-10")
    assert row["processes"] == "1; 4" and row["execution"].startswith("precision=bf16 ")
    assert "| processes | execution |" in to_markdown(cells, [], "test", Criterion())


def test_a_planned_config_with_a_key_twice_is_named(tmp_path):
    """Training refuses a run config that gives a key twice; the reports had read it, the
    second value winning, for the cell and for the staleness hash."""
    from relvit.report.gather import gather_planned

    config = tmp_path / "configs" / "digits/vit_small/pretrain/seed0.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(yaml.safe_dump(run_config("digits", "pretrain", "", 0)) + "seed: 1\n")
    with pytest.raises(ValueError, match=f"{config}: not a run config .*duplicate key 'seed'"):
        gather_planned([tmp_path / "configs"])
    with pytest.raises(ValueError, match=f"{config}: not a run config .*duplicate key 'seed'"):
        file_config_hash(config)


def test_the_config_hash_does_not_depend_on_key_order(tiny_config):
    """to_dict()'s order is its dataclasses' field order: a refactor reordering fields must not
    change every recorded hash (finished runs would count as another config and train again)."""
    from relvit.train.provenance import config_hash

    config = tiny_config("supervised").to_dict()
    shuffled = {key: (dict(reversed(value.items())) if isinstance(value, dict) else value)
                for key, value in reversed(config.items())}
    assert shuffled == config and list(shuffled) != list(config)
    assert config_hash(shuffled) == config_hash(config)
