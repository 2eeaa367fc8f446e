"""The CI regression guard (relvit regress): expected file, tolerances, verdicts, exit codes."""

import json
import math
import statistics
from pathlib import Path

import pytest
import yaml

from relvit.cli import main
from relvit.report import expected
from relvit.report.expected import checked_values
from relvit.report.numbers import reported_numbers


def write_run(root, run_id, seed, **metrics):
    """A metrics.json as the training loop writes it (the keys the guard reads)."""
    path = root / run_id / f"seed{seed}" / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"seed": seed, **metrics}))


def finetune(top1):
    return {"mode": "finetune", "best_top1": top1, "last_top1": top1 - 1}


def tier(root, top1s=(90.0, 91.0, 92.0), rel=(0.40, 0.42, 0.44), box=(11.0, 12.0)):
    for seed, top1 in enumerate(top1s):
        write_run(root, "digits/vit/relvit", seed, **finetune(top1))
    for seed, acc in enumerate(rel):
        write_run(root, "digits/vit/pretrain", seed, mode="pretrain",
                  last={"val_acc_rel": acc, "val_acc_pos": acc / 2})
    for seed, ap in enumerate(box):
        write_run(root, "scenes/vit/det_joint", seed, mode="detect",
                  last_map={"bbox": {"mAP": ap}, "segm": {"mAP": ap / 2}})
    return root


def test_expected_file_holds_means_spread_and_tolerance(tmp_path):
    cells = expected.expected_cells(expected.collect(tier(tmp_path / "runs")))
    relvit = cells["digits/vit/relvit"]
    assert relvit["seeds"] == [0, 1, 2]
    assert relvit["best_top1"]["expected"] == 91.0
    assert relvit["best_top1"]["seed_std"] == 1.0
    assert relvit["best_top1"]["tolerance"] == pytest.approx(3 * math.sqrt(2 / 3), abs=1e-4)
    pretrain = cells["digits/vit/pretrain"]
    assert pretrain["pretext_rel_acc"]["expected"] == pytest.approx(42.0)  # percent
    assert set(cells["scenes/vit/det_joint"]) >= {"box_mAP", "mask_mAP"}


def test_spread_seeds_are_pooled_but_not_averaged_in(tmp_path):
    runs = expected.collect(tier(tmp_path / "runs", top1s=(90.0, 90.0, 90.0)))
    spread_root = tmp_path / "spread"
    for seed, top1 in [(3, 80.0), (4, 85.0)]:  # both below: a mean of all five is 87
        write_run(spread_root, "digits/vit/relvit", seed, **finetune(top1))
    cell = expected.expected_cells(runs, expected.collect(spread_root))["digits/vit/relvit"]
    assert cell["best_top1"]["expected"] == 90.0  # the tier's own seeds only
    assert cell["spread_seeds"] == [0, 1, 2, 3, 4]
    assert cell["best_top1"]["seed_std"] == pytest.approx(
        statistics.stdev([90.0, 90.0, 90.0, 80.0, 85.0]), abs=1e-3)


def test_floor_when_seeds_agree(tmp_path):
    runs = expected.collect(tier(tmp_path / "runs", top1s=(90.0, 90.0, 90.0)))
    assert expected.expected_cells(runs)["digits/vit/relvit"]["best_top1"]["tolerance"] \
        == expected.FLOOR


def refresh(tmp_path, runs):
    exp = tmp_path / "expected" / "ci.yaml"
    assert main(["regress", str(runs), "--expected", str(exp), "--refresh"]) == 0
    return exp


def test_unchanged_runs_pass_and_a_moved_metric_fails(tmp_path, capsys):
    """Unchanged runs pass, a mean moved past its tolerance fails; the report lists the failed
    checks first and counts them (neither the order nor the count had been checked)."""
    runs = tier(tmp_path / "runs")
    exp = refresh(tmp_path, runs)
    assert exp.read_text().startswith("# Expected metrics of the ci tier")
    assert main(["regress", str(runs), "--expected", str(exp)]) == 0
    assert "FAIL" not in capsys.readouterr().out
    # one seed 5 points down moves the mean by 1.67, within 3 * 1 * sqrt(2/3) = 2.45
    metrics = runs / "digits/vit/relvit/seed0/metrics.json"
    metrics.write_text(json.dumps({"seed": 0, **finetune(85.0)}))
    assert main(["regress", str(runs), "--expected", str(exp)]) == 0
    metrics.write_text(json.dumps({"seed": 0, **finetune(80.0)}))  # mean moves 3.33 > 2.45
    report = tmp_path / "check.md"
    assert main(["regress", str(runs), "--expected", str(exp), "--report", str(report)]) == 1
    out = capsys.readouterr().out
    assert "| digits/vit/relvit | best_top1 | 91.00 | 2.45 | 87.67 | -3.33 | FAIL |" in out
    assert "FAILED" in report.read_text()
    # the failures first (digits/vit/pretrain sorts before them), then the count of each
    text = report.read_text()
    verdicts = [line.split(" | ")[-1] for line in text.splitlines() if line.startswith("| ")]
    assert verdicts[1:] == ["FAIL |", "FAIL |", "ok |", "ok |", "ok |", "ok |"]
    assert "4 of 6 checks within tolerance; 2 FAILED" in text


def test_missing_seed_and_unexpected_cell_fail(tmp_path, capsys):
    runs = tier(tmp_path / "runs")
    exp = refresh(tmp_path, runs)
    (runs / "scenes/vit/det_joint/seed1/metrics.json").unlink()
    write_run(runs, "digits/vit/supervised", 0, mode="supervised", best_top1=1, last_top1=1)
    assert main(["regress", str(runs), "--expected", str(exp)]) == 1
    out = capsys.readouterr().out
    assert "| scenes/vit/det_joint | box_mAP | 11.50 |" in out and "missing (seeds [1])" in out
    assert "| digits/vit/supervised | * |" in out and "unexpected" in out


def test_a_failed_run_is_a_missing_seed(tmp_path, capsys):
    """A run recorded as failed (a non-finite loss) has no numbers: its seed is missing."""
    runs = tier(tmp_path / "runs")
    exp = refresh(tmp_path, runs)
    failed = runs / "digits/vit/relvit/seed2/metrics.json"
    failed.write_text(json.dumps({"seed": 2, "mode": "finetune", "status": "failed",
                                  "error": "non-finite loss nan at epoch 2, step 1"}))
    assert main(["regress", str(runs), "--expected", str(exp)]) == 1
    out = capsys.readouterr().out
    assert "| digits/vit/relvit | best_top1 |" in out and "missing (seeds [2])" in out


def test_refresh_refuses_a_failed_run(tmp_path):
    """--refresh had written the other seeds' mean with the tolerance of their count, under all
    three seeds: an expected file that the same runs then failed."""
    runs = tier(tmp_path / "runs")
    (runs / "digits/vit/relvit/seed2/metrics.json").write_text(json.dumps(
        {"seed": 2, "mode": "finetune", "status": "failed", "error": "non-finite loss"}))
    with pytest.raises(expected.ExpectedError, match=r"digits/vit/relvit: no best_top1 from "
                                                     r"seed\(s\) \[2\] \(a failed run\?\)"):
        expected.expected_cells(expected.collect(runs))


def test_two_runs_of_one_seed_are_refused_naming_both(tmp_path):
    """The guard had kept whichever of the two sorted last."""
    runs = tier(tmp_path / "runs")
    copy = runs / "digits/vit/relvit/seed0-copy/metrics.json"
    copy.parent.mkdir()
    copy.write_text(json.dumps({"seed": 0, **finetune(10.0)}))
    with pytest.raises(expected.ExpectedError, match="seed0/metrics.json and .*seed0-copy/"
                                                     "metrics.json: two runs of "
                                                     "digits/vit/relvit with seed 0"):
        expected.collect(runs)


def test_bad_inputs_name_the_file(tmp_path, capsys):
    runs = tier(tmp_path / "runs")
    assert main(["regress", str(runs), "--expected", str(tmp_path / "none.yaml")]) == 1
    assert "none.yaml: no expected file" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"tier": "ci"}))
    assert main(["regress", str(runs), "--expected", str(bad)]) == 1
    assert "bad.yaml: no 'cells' mapping" in capsys.readouterr().err
    broken = runs / "digits/vit/relvit/seed1/metrics.json"
    broken.write_text("{not json")
    assert main(["regress", str(runs), "--expected", str(bad)]) == 1
    assert f"{broken}: not a metrics file" in capsys.readouterr().err
    assert main(["regress", str(tmp_path / "empty"), "--expected", str(bad)]) == 1


@pytest.mark.parametrize("cell, message", [
    ({"seeds": [0], "best_top1": 18.0}, "cells.c.best_top1: expected a mapping"),
    ({"seeds": [0]}, "cells.c: no metric to check"),
    ({"seeds": [0], "best_top1": {"expected": 1.0, "tolerance": "2.0"}},
     "cells.c.best_top1.tolerance: expected a finite number, got '2.0'"),
    ({"seeds": [0], "best_top1": {"expected": 1.0}},
     "cells.c.best_top1.tolerance: expected a finite number, got None"),
    ({"seeds": [0], "best_top1": {"expected": 1.0, "tolerance": float("inf")}},
     "cells.c.best_top1.tolerance: expected a finite number, got inf"),
    ({"seeds": [0], "best_top1": {"expected": 1.0, "tolerance": True}},
     "cells.c.best_top1.tolerance: expected a finite number, got True"),
    ({"seeds": [0], "best_top1": {"tolerance": 1.0}},
     "cells.c.best_top1.expected: expected a finite number, got None"),
    ({"seeds": ["0"], "best_top1": {"expected": 1.0, "tolerance": 1.0}},
     "cells.c.seeds: expected a non-empty list of seeds, got ['0']"),
    ({"seeds": [0], "best_top1": {"expected": 1.0, "tolerance": -1}},
     "cells.c.best_top1.tolerance: negative"),
    ({"seeds": 0, "best_top1": {"expected": 1.0, "tolerance": 1.0}},
     "cells.c.seeds: expected a non-empty list of seeds, got 0"),
    ({"seeds": [], "best_top1": {"expected": 1.0, "tolerance": 1.0}}, "cells.c.seeds"),
    ({"seeds": [0], "top1": {"expected": 1.0, "tolerance": 1.0}},
     "cells.c.top1: not a checked metric (known: best_top1, box_mAP"),
    ("90", "cells.c: expected a mapping of seeds and metrics"),
])
def test_a_hand_edited_expected_file_is_refused_naming_the_key(tmp_path, capsys, cell, message):
    """A metric that was no mapping was skipped: "0 of 0 checks within tolerance", exit 0, the
    guard off; a tolerance as a string or seeds as a number raised a bare TypeError."""
    runs = tier(tmp_path / "runs")
    path = tmp_path / "expected.yaml"
    path.write_text(yaml.safe_dump({"cells": {"c": cell}}))
    assert main(["regress", str(runs), "--expected", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}: " in err and message in err


def test_a_zero_tolerance_is_an_exact_check(tmp_path):
    """Allowed: on the same machine and versions the runs are deterministic."""
    path = tmp_path / "expected.yaml"
    cell = {"seeds": [0], "best_top1": {"expected": 90.0, "tolerance": 0}}
    path.write_text(yaml.safe_dump({"cells": {"digits/vit/relvit": cell}}))
    assert expected.read_expected(path)["cells"]["digits/vit/relvit"] == cell


def test_an_expected_file_without_cells_checks_nothing_and_fails(tmp_path, capsys):
    path = tmp_path / "expected.yaml"
    path.write_text(yaml.safe_dump({"cells": {}}))
    assert main(["regress", str(tier(tmp_path / "runs")), "--expected", str(path)]) == 1
    assert "cells: empty, nothing to check" in capsys.readouterr().err


@pytest.mark.parametrize("seed", ["one", True])
def test_a_run_whose_seed_is_no_number_is_named(tmp_path, capsys, seed):
    """`true` is no seed either (Python would count it as seed 1)."""
    runs = tier(tmp_path / "runs")
    path = runs / "digits/vit/relvit/seed1/metrics.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "seed": seed}))
    assert main(["regress", str(runs), "--refresh", "--expected", str(tmp_path / "e.yaml")]) == 1
    assert f"{path}: not a metrics file (seed: expected a whole number, got {seed!r})" in \
        capsys.readouterr().err


def test_refresh_refuses_a_non_finite_number(tmp_path):
    """--refresh crashed in statistics.stdev ("'float' object has no attribute 'numerator'")."""
    from relvit.report.expected import ExpectedError, expected_cells

    runs = {"digits/vit_small/supervised": {0: {"best_top1": 90.0}, 1: {"best_top1": math.nan}}}
    with pytest.raises(ExpectedError, match="digits/vit_small/supervised seed 1: best_top1 is "
                                            "nan, not a number to expect"):
        expected_cells(runs)


def test_run_directories_moved_aside_are_not_counted(tmp_path):
    runs = tier(tmp_path / "runs")
    aside = runs / "digits/vit/relvit/seed0.replaced-20261127-010203/metrics.json"
    aside.parent.mkdir()
    aside.write_text(json.dumps({"seed": 0, **finetune(10.0)}))  # an older config's result
    assert expected.collect(runs)["digits/vit/relvit"][0]["best_top1"] == 90.0


def test_tolerance_counts_the_tiers_seeds_not_the_spread_seeds(tmp_path):
    """n = all seeds seen would shrink the tolerance the CI guard applies to a 2-seed mean."""
    runs = expected.collect(tier(tmp_path / "runs", top1s=(90.0, 92.0)))
    spread_root = tmp_path / "spread"
    for seed, top1 in [(2, 85.0), (3, 95.0), (4, 100.0)]:
        write_run(spread_root, "digits/vit/relvit", seed, **finetune(top1))
    top1 = expected.expected_cells(runs, expected.collect(spread_root))["digits/vit/relvit"]
    std = statistics.stdev([90.0, 92.0, 85.0, 95.0, 100.0])
    assert top1["best_top1"]["seed_std"] == pytest.approx(std, abs=1e-4)
    assert top1["best_top1"]["tolerance"] == pytest.approx(max(0.5, 3 * std * math.sqrt(2 / 2)),
                                                           abs=1e-4)


def test_a_seed_in_both_runs_counts_the_tiers_value(tmp_path):
    """A spread folder holding one of the tier's seeds (another run of it) does not replace the
    tier's number in the spread."""
    runs = expected.collect(tier(tmp_path / "runs", top1s=(90.0, 90.0, 90.0)))
    spread_root = tmp_path / "spread"
    for seed, top1 in [(1, 50.0), (3, 100.0)]:
        write_run(spread_root, "digits/vit/relvit", seed, **finetune(top1))
    cell = expected.expected_cells(runs, expected.collect(spread_root))["digits/vit/relvit"]
    assert cell["spread_seeds"] == [0, 1, 2, 3]
    assert cell["best_top1"]["seed_std"] == pytest.approx(statistics.stdev([90.0] * 3 + [100.0]),
                                                          abs=1e-4)


def test_a_mean_exactly_at_the_tolerance_passes():
    """The tolerance is the largest move allowed, not the first one refused."""
    spec = {"cells": {"c": {"seeds": [0], "m": {"expected": 1.0, "tolerance": 0.5}}}}
    assert [c.verdict for c in expected.check(spec, {"c": {0: {"m": 1.5}}})] == ["ok"]
    assert [c.verdict for c in expected.check(spec, {"c": {0: {"m": 1.5625}}})] == ["FAIL"]
    # at the tolerance on either side, whatever the float rounding (+ had failed, - passed)
    spec = {"cells": {"c": {"seeds": [0], "m": {"expected": 90.1852, "tolerance": 5.1535}}}}
    for got in (95.3387, 85.0317):
        assert [c.verdict for c in expected.check(spec, {"c": {0: {"m": got}}})] == ["ok"]


def test_a_records_numbers_are_read_in_percent_and_ap_points():
    """`reported_numbers`, the one reader of a record's numbers for the tables and the guard:
    the pretext accuracies (fractions in the record) in percent, the rest as recorded."""
    pretrain = {"mode": "pretrain", "last": {"val_acc_rel": 0.25, "val_acc_pos": 0.5}}
    detect = {"mode": "detect", "last": {}, "last_map": {"bbox": {"mAP": 12.5}}}
    assert reported_numbers(pretrain) == {
        "best_top1": None, "last_top1": None, "pretext_rel_acc": 25.0, "pretext_pos_acc": 50.0,
        "box_mAP": None, "mask_mAP": None}
    assert checked_values(pretrain, Path("p")) == {"pretext_rel_acc": 25.0,
                                                   "pretext_pos_acc": 50.0}
    assert checked_values(detect, Path("d")) == {"box_mAP": 12.5}  # boxes only: no mask mAP


def test_refresh_never_replaces_another_kind_of_file(tmp_path, capsys):
    """`--expected config/ci.yaml` (the --tier-config default's neighbour) had been overwritten
    with expected metrics; a file that is not UTF-8 had given an error without its name."""
    runs = tier(tmp_path / "runs")
    config = tmp_path / "ci.yaml"
    config.write_text("tier: ci\nseeds: [0, 1, 2]\n")
    assert main(["regress", str(runs), "--expected", str(config), "--refresh"]) == 1
    assert "no 'cells' mapping: not an expected-metrics file, so not replaced" in \
        capsys.readouterr().err
    assert config.read_text() == "tier: ci\nseeds: [0, 1, 2]\n"
    exp = refresh(tmp_path, runs)  # an expected file is refreshed
    assert main(["regress", str(runs), "--expected", str(exp), "--refresh"]) == 0
    binary = tmp_path / "garbage.bin"
    binary.write_bytes(b"\xd0\xff\x00")
    assert main(["regress", str(runs), "--expected", str(binary)]) == 1
    assert f"{binary}: not YAML" in capsys.readouterr().err


def test_a_run_or_cell_folder_given_as_the_runs_is_named(tmp_path, capsys):
    """A cell folder had been refreshed as one cell named "."; a run folder had given "... is not
    in the subpath of ..."."""
    runs = tier(tmp_path / "runs")
    for given in (runs / "digits/vit/relvit", runs / "digits/vit/relvit/seed0"):
        assert main(["regress", str(given), "--expected", str(tmp_path / "e.yaml"),
                     "--refresh"]) == 1
        assert f"give the tier's runs folder (RUNS in RUNS/<cell>/<seed>/metrics.json), not " \
               f"{given}" in capsys.readouterr().err
    assert not (tmp_path / "e.yaml").exists()


def test_refresh_options_without_refresh_are_refused(tmp_path, capsys):
    """--spread, --tier and --tier-config had been ignored without a word in a check."""
    runs = tier(tmp_path / "runs")
    exp = refresh(tmp_path, runs)
    assert main(["regress", str(runs), "--expected", str(exp), "--spread", str(runs),
                 "--tier", "zzz"]) == 1
    assert "--spread, --tier: only with --refresh" in capsys.readouterr().err


def test_a_key_given_twice_in_an_expected_file_is_refused(tmp_path, capsys):
    """YAML keeps the last of two equal keys: a cell given twice had silently lost the first."""
    runs = tier(tmp_path / "runs")
    exp = refresh(tmp_path, runs)
    exp.write_text(exp.read_text().replace("cells:\n", "cells:\n  digits/vit/relvit: {}\n", 1))
    assert main(["regress", str(runs), "--expected", str(exp)]) == 1
    assert f"{exp}: not YAML" in capsys.readouterr().err
