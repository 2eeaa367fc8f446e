"""Side by side, epoch by epoch: training runs of the same config and seed, eager and otherwise.

    python bench/compare_runs.py RUNS_DIR [BASELINE OTHER ...] [--across PRETRAIN SUPERVISED ...]
        [--project]

Reads each run's history.csv (`relvit <mode> --out RUNS_DIR/NAME`) and prints, per pair and
epoch, the training loss of both runs and their relative difference, the validation loss and
accuracies, the epoch's wall time and training images/s; then per pair the largest loss
difference and the median epoch time without the first epoch (which holds the compiles), and
of its evaluation where history.csv has it (eval_time_s), and the peak memory of both runs
from their metrics.json (allocated, and on a GPU reserved, which counts CUDA graphs' private
pools; a run cut by a time cap has none).

`--across PRETRAIN SUPERVISED` compares a pretrain run with the supervised run of the same kind
(the issue's target: the pretrain step at most 1.10x the supervised one): their training
images/s (the median of the epochs after the first), the ratio of their step times and of
their peak memory. `--project` adds, per such pair, the projected wall time of a Table 1
CIFAR-10 row at those rates (for 32 px runs). Used by bench/gpu_run_check.sh. Exit status 1
when a run has no history (it failed or was cut before its first epoch ended), or when a pair's
training losses differ by more than LOSS_AGREEMENT somewhere.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

from benchlib.table import projection_line, row_hours
from relvit.layout import HISTORY, METRICS
from relvit.train.columns import TRAIN_LOSS, VAL_LOSS, VAL_POSITIONS, VAL_RELATIONS, VAL_TOP1


def read_history(run: Path) -> list[dict[str, float]]:
    """history.csv rows as floats (empty cells dropped)."""
    path = run / HISTORY
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no history (the run failed or was cut short; see "
                                f"{run}.log)")
    with path.open(newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)}
                for row in csv.DictReader(f)]


def read_peak_memory(run: Path, key: str = "peak_memory_mb") -> float | None:
    """The run's peak memory `key` (metrics.json, written when it finished), else None."""
    path = run / METRICS
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get(key)


def peak_memory_line(base_name: str, base: float | None, other_name: str,
                     other: float | None, what: str = "peak memory") -> str:
    """Both runs' peak memory, and other / base when both finished."""
    shown = [f"{peak:,.0f} MB" if peak is not None else "— (unfinished)"
             for peak in (base, other)]
    ratio = f" (other/base {other / base:.2f}x)" if base and other is not None else ""
    return f"{what} {base_name} / {other_name}: {shown[0]} / {shown[1]}{ratio}"


def peak_memory_lines(runs: Path, base_name: str, other_name: str) -> list[str]:
    """Both runs' allocated peak memory, and on a GPU (where metrics.json has it) reserved."""
    lines = []
    for key, what in (("peak_memory_mb", "peak memory"),
                      ("peak_memory_reserved_mb", "peak memory reserved")):
        peaks = [read_peak_memory(runs / name, key) for name in (base_name, other_name)]
        if key == "peak_memory_mb" or any(peak is not None for peak in peaks):
            lines.append(peak_memory_line(base_name, peaks[0], other_name, peaks[1], what))
    return lines


# Runs of one config and seed agree to bf16 rounding: eager against CUDA graphs, with or without
# the step region, differed by at most 6.7e-4 (H100 and H200, docs/performance.md)
LOSS_AGREEMENT = 2e-3


def _relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), 1e-12)


def largest_loss_difference(base: list[dict[str, float]], other: list[dict[str, float]]
                            ) -> float:
    """The largest relative difference of the two runs' training losses, epoch by epoch."""
    return max(_relative(a[TRAIN_LOSS], b[TRAIN_LOSS]) for a, b in zip(base, other))


def compare(base_name: str, base: list[dict[str, float]], other_name: str,
            other: list[dict[str, float]]) -> list[str]:
    """Lines of the table of one pair, then its summary line."""
    val_keys = sorted(k for k in base[0]
                      if k in (VAL_LOSS, VAL_TOP1, VAL_RELATIONS, VAL_POSITIONS))
    lines = [f"{base_name} vs {other_name}",
             f"epoch  {TRAIN_LOSS} (base / other, rel. diff)  "
             + "  ".join(f"{k} (base / other)" for k in val_keys)
             + "  epoch s (base / other)  images/s (base / other)"]
    for a, b in zip(base, other):
        vals = "  ".join(f"{a.get(k, float('nan')):.4f} / {b.get(k, float('nan')):.4f}"
                         for k in val_keys)
        lines.append(
            f"{int(a['epoch']):5d}  {a[TRAIN_LOSS]:.5f} / {b[TRAIN_LOSS]:.5f}, "
            f"{_relative(a[TRAIN_LOSS], b[TRAIN_LOSS]):.2e}  {vals}  "
            f"{a['epoch_time_s']:.2f} / {b['epoch_time_s']:.2f}  "
            f"{a.get('train_images_per_s', 0):,.0f} / {b.get('train_images_per_s', 0):,.0f}")
    pairs = list(zip(base, other))
    worst = largest_loss_difference(base, other)
    verdict = "" if worst <= LOSS_AGREEMENT else f" (OVER {LOSS_AGREEMENT:.0e}: they disagree)"
    summary = (f"{other_name}: {len(other)} of {len(base)} epochs; largest {TRAIN_LOSS} rel. "
               f"diff {worst:.2e}{verdict}")
    if len(pairs) > 1:
        t_base = statistics.median(a["epoch_time_s"] for a, _ in pairs[1:])
        t_other = statistics.median(b["epoch_time_s"] for _, b in pairs[1:])
        summary += (f"; median epoch after the first {t_base:.2f} s vs {t_other:.2f} s "
                    f"(speed-up base/other {t_base / t_other:.2f}x); first epoch "
                    f"{pairs[0][0]['epoch_time_s']:.1f} vs {pairs[0][1]['epoch_time_s']:.1f} s")
        if all("eval_time_s" in row for pair in pairs for row in pair):  # runs since 2026-11-28
            e_base = statistics.median(a["eval_time_s"] for a, _ in pairs[1:])
            e_other = statistics.median(b["eval_time_s"] for _, b in pairs[1:])
            summary += (f"; evaluation, median after the first {1000 * e_base:.1f} ms vs "
                        f"{1000 * e_other:.1f} ms")
    return [*lines, summary, ""]


def training_rate(history: list[dict[str, float]]) -> float | None:
    """Training images/s: the median of the epochs after the first (which holds the compiles);
    None with fewer than two epochs."""
    rates = [row["train_images_per_s"] for row in history[1:] if row.get("train_images_per_s")]
    return statistics.median(rates) if rates else None


def across(runs: Path, pretrain_name: str, supervised_name: str,
           project: bool) -> list[str]:
    """Lines comparing a pretrain run with the supervised run of the same kind: the step-time
    ratio from their training rates, their peak memory, and with `project` a Table 1 row's
    hours at those rates."""
    pre, sup = (training_rate(read_history(runs / n)) for n in (pretrain_name, supervised_name))
    title = f"{pretrain_name} vs {supervised_name}"
    if pre is None or sup is None:
        return [f"{title}: no training rate after the first epoch", ""]
    lines = [f"{title}: training {pre:,.0f} vs {sup:,.0f} images/s (median of the epochs after "
             f"the first); pretrain step / supervised step {sup / pre:.2f}x",
             *peak_memory_lines(runs, supervised_name, pretrain_name)]
    if project:
        lines.append(projection_line(row_hours(pre, sup), f"at the training rates of {title}"))
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, help="folder holding the run directories")
    parser.add_argument("names", nargs="*", help="BASELINE OTHER pairs of run directory names")
    parser.add_argument("--across", nargs=2, action="append", default=[],
                        metavar=("PRETRAIN", "SUPERVISED"),
                        help="a pretrain run and the supervised run of the same kind: their "
                             "step-time and peak-memory ratios (repeatable)")
    parser.add_argument("--project", action="store_true",
                        help="with --across: a Table 1 CIFAR-10 row's hours at their rates")
    args = parser.parse_args(argv)
    if args.project and not args.across:
        parser.error("--project needs --across PRETRAIN SUPERVISED")
    if not args.names and not args.across:
        parser.error("nothing to compare: give BASELINE OTHER pairs or --across")
    if len(args.names) % 2:
        parser.error(f"names come in BASELINE OTHER pairs; got {len(args.names)} names")
    failed = False
    for base_name, other_name in zip(args.names[::2], args.names[1::2]):
        try:
            base, other = (read_history(args.runs / n) for n in (base_name, other_name))
        except FileNotFoundError as e:
            print(e)
            failed = True
            continue
        if not base or not other:
            print(f"{base_name} vs {other_name}: an empty history")
            failed = True
            continue
        lines = compare(base_name, base, other_name, other)
        lines[-1:-1] = peak_memory_lines(args.runs, base_name, other_name)
        print("\n".join(lines))
        failed |= largest_loss_difference(base, other) > LOSS_AGREEMENT
    for pretrain_name, supervised_name in args.across:
        try:
            print("\n".join(across(args.runs, pretrain_name, supervised_name, args.project)))
        except FileNotFoundError as e:
            print(e)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
