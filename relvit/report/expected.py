"""The regression guard of a tier: its expected metrics, with tolerances from the seed spread.

A *cell* is a run id without its seed (`digits/vit_small/relvit`): the seeds of a cell are
averaged, as in the tables. For every cell the expected file holds the mean of each checked
metric over the tier's seeds, the seed-to-seed standard deviation (measured over the tier's seeds
plus any extra seeds of a spread run) and the tolerance derived from it:

    tolerance = max(FLOOR, K * seed_std * sqrt(2 / n))

The difference of two means of n independent seeds has standard deviation seed_std * sqrt(2 / n),
so a change that only reshuffles the random draws (another CPU, a library's rounding) stays
inside K = 3 of them; a change of the method itself moves a metric further. On the same machine
and versions the runs are deterministic and the difference is 0.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from relvit.atomic import atomic_write_text
from relvit.config import is_whole_number, parse_yaml
from relvit.layout import METRICS
from relvit.report.criterion import FLOAT_SLACK
from relvit.report.gather import find_files
from relvit.report.numbers import MAP_NUMBERS, PRETEXT_NUMBERS, TOP1_NUMBERS, reported_numbers
from relvit.report.provenance import read_metrics

K = 3.0
FLOOR = 0.5  # points (%, AP): below this a difference is not worth a failed CI run

# metrics.json numbers checked per mode, all in percent / AP points
CHECKED = {"pretrain": PRETEXT_NUMBERS, "finetune": TOP1_NUMBERS, "supervised": TOP1_NUMBERS,
           "joint": TOP1_NUMBERS, "detect": MAP_NUMBERS}


class ExpectedError(ValueError):
    """An expected file or a run directory that cannot be read."""


def checked_values(metrics: dict[str, Any], source: Path) -> dict[str, float]:
    """The numbers of one run's metrics.json that the guard checks."""
    mode = metrics.get("mode")
    available = reported_numbers(metrics)
    if mode not in CHECKED:
        raise ExpectedError(f"{source}: unknown mode {mode!r} (known: {', '.join(CHECKED)})")
    values = {}
    for name in CHECKED[mode]:
        value = available[name]
        if value is None:
            continue  # e.g. a detection run on boxes only has no mask mAP
        values[name] = float(value)
    return values


def collect(runs_root: str | Path) -> dict[str, dict[int, dict[str, float]]]:
    """cell -> seed -> checked values, from every metrics.json under `runs_root`."""
    root = Path(runs_root)
    cells: dict[str, dict[int, dict[str, float]]] = {}
    sources: dict[tuple[str, int], Path] = {}
    for path in find_files([root], METRICS):
        try:
            metrics = read_metrics(path)
        except ValueError as err:
            raise ExpectedError(str(err)) from err
        seed = metrics.get("seed")
        if not is_whole_number(seed):
            raise ExpectedError(f"{path}: not a metrics file (seed: expected a whole number, "
                                f"got {seed!r})")
        run = path.parent.relative_to(root)  # <cell>/<seed folder>
        if len(run.parts) < 2:  # a run or cell folder given: the cell had been "." or an error
            raise ExpectedError(f"{path}: give the tier's runs folder (RUNS in "
                                f"RUNS/<cell>/<seed>/{METRICS}), not {root}")
        cell = run.parent.as_posix()
        if (cell, seed) in sources:
            raise ExpectedError(f"{sources[cell, seed]} and {path}: two runs of {cell} with seed "
                                f"{seed}; keep one")
        sources[cell, seed] = path
        cells.setdefault(cell, {})[seed] = checked_values(metrics, path)
    if not cells:
        raise ExpectedError(f"{root}: no metrics.json found (has the tier run?)")
    return cells


def tolerance(seed_std: float, n: int) -> float:
    """How far the mean of `n` seeds may move: K seed standard deviations of a difference of
    two such means, at least FLOOR points."""
    return max(FLOOR, K * seed_std * math.sqrt(2 / n))


def expected_cells(runs: dict[str, dict[int, dict[str, float]]],
                   spread: dict[str, dict[int, dict[str, float]]] | None = None) -> dict:
    """The expected file's cells: means over the tier's seeds, spread over all seeds seen."""
    cells = {}
    for cell, by_seed in sorted(runs.items()):
        all_seeds = {**(spread or {}).get(cell, {}), **by_seed}
        for seed, values in sorted(all_seeds.items()):
            for name, value in values.items():
                if not math.isfinite(value):
                    raise ExpectedError(f"{cell} seed {seed}: {name} is {value}, not a number "
                                        f"to expect; rerun that run or leave it out")
        entry: dict[str, Any] = {"seeds": sorted(by_seed), "spread_seeds": sorted(all_seeds)}
        for name in sorted({n for values in by_seed.values() for n in values}):
            ours = [v[name] for v in by_seed.values() if name in v]
            lacking = sorted(seed for seed, values in all_seeds.items() if name not in values)
            if lacking:
                raise ExpectedError(f"{cell}: no {name} from seed(s) {lacking} (a failed run?); "
                                    f"rerun them or leave them out")
            seen = [v[name] for v in all_seeds.values() if name in v]
            std = statistics.stdev(seen) if len(seen) > 1 else 0.0
            entry[name] = {"expected": round(statistics.fmean(ours), 4),
                           "seed_std": round(std, 4),
                           "tolerance": round(tolerance(std, len(ours)), 4)}
        cells[cell] = entry
    return cells


HEADER = """\
# Expected metrics of the {tier} tier ({config}), checked by `relvit regress`.
# Written by `relvit regress --refresh` (.ci/refresh-expected runs the tier and refreshes this
# file): a change of these numbers is a change of the method's results and shows in review.
# Per cell (a run id without its seed) and metric: the mean over `seeds`, the seed-to-seed
# standard deviation over `spread_seeds`, and tolerance = max({floor}, {k} * seed_std * sqrt(2/n))
# with n = len(seeds) (relvit/report/expected.py).
"""


def write_expected(path: str | Path, cells: dict, tier: str, config: str) -> None:
    """Write the expected file; ExpectedError, writing nothing, if `path` holds another kind of
    file (a run config or metrics.json given by mistake had been overwritten)."""
    path = Path(path)
    if path.exists():
        try:
            _load_expected(path)
        except ExpectedError as err:
            raise ExpectedError(f"{err}: not an expected-metrics file, so not replaced") from None
    text = HEADER.format(tier=tier, config=config, floor=FLOOR, k=K)
    text += yaml.safe_dump({"tier": tier, "config": config, "cells": cells}, sort_keys=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(text, path)


def _load_expected(path: Path) -> dict:
    """The YAML of an expected file with a `cells` mapping (its cells unchecked)."""
    if not path.is_file():
        raise ExpectedError(f"{path}: no expected file (write one with relvit regress --refresh)")
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"))  # a key twice: an error
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ExpectedError(f"{path}: not YAML ({err})") from err
    if not isinstance(data, dict) or not isinstance(data.get("cells"), dict):
        raise ExpectedError(f"{path}: no 'cells' mapping")
    return data


def read_expected(path: str | Path) -> dict:
    path = Path(path)
    data = _load_expected(path)
    problems = _cell_problems(data["cells"])
    if problems:
        raise ExpectedError(f"{path}: " + "; ".join(problems))
    return data


def _is_number(value: Any) -> bool:
    return (is_whole_number(value) or isinstance(value, float)) and math.isfinite(value)


def _cell_problems(cells: dict) -> list[str]:
    """What in an expected file's cells cannot be checked (a hand edit): every cell needs its
    seeds and at least one metric with a numeric expected value and tolerance, so that the
    guard never passes a cell it did not check."""
    known = sorted({name for names in CHECKED.values() for name in names})
    problems = [] if cells else ["cells: empty, nothing to check"]
    for cell, entry in cells.items():
        if not isinstance(entry, dict):
            problems.append(f"cells.{cell}: expected a mapping of seeds and metrics")
            continue
        seeds = entry.get("seeds")
        if (not isinstance(seeds, list) or not seeds
                or not all(is_whole_number(s) for s in seeds)):
            problems.append(f"cells.{cell}.seeds: expected a non-empty list of seeds, "
                            f"got {seeds!r}")
        metrics = {k: v for k, v in entry.items() if k not in ("seeds", "spread_seeds")}
        if not metrics:
            problems.append(f"cells.{cell}: no metric to check (known: {', '.join(known)})")
        for metric, spec in metrics.items():
            where = f"cells.{cell}.{metric}"
            if metric not in known:
                problems.append(f"{where}: not a checked metric (known: {', '.join(known)})")
            elif not isinstance(spec, dict):
                problems.append(f"{where}: expected a mapping with expected and tolerance")
            else:
                problems += [f"{where}.{key}: expected a finite number, got {spec.get(key)!r}"
                             for key in ("expected", "tolerance") if not _is_number(spec.get(key))]
                if _is_number(spec.get("tolerance")) and spec["tolerance"] < 0:
                    problems.append(f"{where}.tolerance: negative ({spec['tolerance']})")
    return problems


@dataclass(frozen=True)
class Check:
    cell: str
    metric: str
    expected: float | None
    tolerance: float | None
    got: float | None
    verdict: str  # ok | FAIL | missing | unexpected

    @property
    def failed(self) -> bool:
        return self.verdict != "ok"


def check(expected: dict, runs: dict[str, dict[int, dict[str, float]]]) -> list[Check]:
    """Every expected metric against the runs; missing and unexpected cells are failures too."""
    results = []
    for cell, entry in expected["cells"].items():
        seeds = entry.get("seeds", [])
        for metric, spec in entry.items():
            if metric in ("seeds", "spread_seeds"):
                continue
            got_seeds = [runs.get(cell, {}).get(s, {}).get(metric) for s in seeds]
            if any(v is None for v in got_seeds):
                missing = [s for s, v in zip(seeds, got_seeds) if v is None]
                results.append(Check(cell, metric, spec["expected"], spec["tolerance"], None,
                                     f"missing (seeds {missing})"))
                continue
            got = statistics.fmean(got_seeds)
            ok = abs(got - spec["expected"]) <= spec["tolerance"] + FLOAT_SLACK  # + and - alike
            results.append(Check(cell, metric, spec["expected"], spec["tolerance"], got,
                                 "ok" if ok else "FAIL"))
    for cell in sorted(set(runs) - set(expected["cells"])):
        results.append(Check(cell, "*", None, None, None, "unexpected (not in the expected file)"))
    return results


def format_checks(results: list[Check]) -> str:
    """A Markdown table of the checks, failures first."""
    def number(x: float | None) -> str:
        return "—" if x is None else f"{x:.2f}"

    lines = ["| cell | metric | expected | ± tol | got | Δ | verdict |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in sorted(results, key=lambda r: (not r.failed, r.cell, r.metric)):
        if r.got is None or r.expected is None:
            delta = "—"
        else:  # rounded first, so that an exact match shows +0.00, not -0.00
            delta = f"{round(r.got - r.expected, 2) + 0.0:+.2f}"
        lines.append(f"| {r.cell} | {r.metric} | {number(r.expected)} | {number(r.tolerance)} | "
                     f"{number(r.got)} | {delta} | {r.verdict} |")
    failed = sum(r.failed for r in results)
    lines.append("")
    lines.append(f"{len(results) - failed} of {len(results)} checks within tolerance"
                 + (f"; {failed} FAILED" if failed else ""))
    return "\n".join(lines) + "\n"
