"""The benchmark's table: its rows, printed or as Markdown, the decode workers a step needs and
the projected wall time of a Table 1 row."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class Row:
    """One line of the table."""

    stage: str
    config: str
    images_per_s: float | None = None
    ms_per_step: float | None = None
    ratio: str = ""
    peak_mb: float | None = None
    mfu: float | None = None
    extra: dict = field(default_factory=dict)

    def ops_cell(self) -> str:
        """ATen ops per step (`OpCounter`), or for a compiled step in parentheses those that run
        outside compiled code (`eager_ops_outside_compiled`)."""
        if "eager_ops" in self.extra:
            return f"({self.extra['eager_ops']:,})"
        return "" if self.extra.get("ops") is None else format(self.extra["ops"], ",.0f")

    def cells(self, syncs: bool = False) -> tuple[str, ...]:
        """The printed cells; `syncs` adds the host syncs per step (--sync-debug)."""
        def fmt(v, spec):
            return "" if v is None else format(v, spec)
        cells = (self.stage, self.config, fmt(self.images_per_s, ",.0f"),
                 fmt(self.ms_per_step, ",.1f"), self.ratio, fmt(self.peak_mb, ",.0f"),
                 "" if self.mfu is None else f"{100 * self.mfu:.1f} %",
                 self.ops_cell(), fmt(self.extra.get("mib"), ",.0f"))
        return cells + (fmt(self.extra.get("syncs_per_step"), ",.1f"),) if syncs else cells


def workers_to_feed(rows: list[Row]) -> list[str]:
    """For each 224-px "+ batch" train step measured with the decode stage: the decode workers
    (at the measured rate per worker) that keep up with it."""
    decode = [r for r in rows if "per_worker" in r.extra]
    if not decode:
        return []

    def need(step: Row, row: Row) -> str:
        per_worker = row.extra["per_worker"]
        what = f" ({row.extra['files']})" if len(decode) > 1 else ""
        return (f"{math.ceil(step.images_per_s / per_worker)} at {per_worker:,.0f} images/s "
                f"each{what}")

    return [f"decode workers to feed {r.stage} ({r.config}, {r.images_per_s:,.0f} images/s): "
            + ", ".join(need(r, d) for d in decode)
            for r in rows if r.stage.startswith("train step") and r.extra.get("with_batch")
            and r.extra.get("size") == 224 and r.images_per_s]


ROW_IMAGES, ROW_EPOCHS = 50_000, 100  # CIFAR-10's training split; the paper's epochs per run


def row_hours(pretrain_images_per_s: float, supervised_images_per_s: float,
              images: int = ROW_IMAGES, epochs: int = ROW_EPOCHS,
              seeds: int = 3) -> dict[str, float]:
    """Hours of one Table 1 CIFAR-10 row at these training rates (training steps only): the
    paper tier's pretrain, finetune (at the supervised rate: the same classifier's step) and
    supervised runs; the † same-epochs supervised run (200 epochs, not in the paper tier)
    apart, outside `one_seed`."""
    pre, sup = pretrain_images_per_s, supervised_images_per_s
    hours = {"pretrain": epochs * images / pre / 3600,
             "finetune": epochs * images / sup / 3600,
             "supervised": epochs * images / sup / 3600}
    hours["one_seed"] = sum(hours.values())
    hours[f"{seeds}_seeds"] = seeds * hours["one_seed"]
    hours["same_epochs_extra"] = 2 * epochs * images / sup / 3600  # †, where a tier runs it
    return hours


def projection_line(hours: dict[str, float], rates: str) -> str:
    """`row_hours` as the benchmark prints it, `rates` saying where its images/s came from."""
    return (f"Projected Table 1 CIFAR-10 row ({ROW_IMAGES // 1000}k images, {ROW_EPOCHS} epochs "
            f"each, {rates}; training steps only, no evaluation): "
            + ", ".join(f"{k} {v:.2f} h" for k, v in hours.items()))


def projection(rows: list[Row]) -> dict[str, float] | None:
    """`row_hours` at the fastest 32 px "+ batch" step rows of each mode, if both ran."""
    def speed(mode: str) -> float | None:
        best = [r.images_per_s for r in rows if r.stage.startswith("train step")
                and r.extra.get("size") == 32 and r.extra.get("mode") == mode
                and r.extra.get("with_batch") and r.images_per_s]
        return max(best) if best else None

    pre, sup = speed("pretrain"), speed("supervised")
    return row_hours(pre, sup) if pre and sup else None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({os.cpu_count()} cores), {torch.get_num_threads()} threads"


def table_header(syncs: bool = False) -> tuple[str, ...]:
    """The column names of `Row.cells`."""
    header = ("stage", "config", "images/s", "ms/step", "ratio", "peak MB", "MFU", "ops", "MiB")
    return header + (("syncs/step",) if syncs else ())


def print_table(rows: list[Row], device: torch.device, syncs: bool = False) -> None:
    header = table_header(syncs)
    cells = [header] + [r.cells(syncs) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    print(f"relvit benchmark on {device_name(device)}, torch {torch.__version__}")
    for i, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print("ratio: train steps vs the supervised step of the same size (time, then peak memory); "
          "batch construction vs the \"+ batch\" step it is part of; SSL inputs vs the per-sample "
          "reference; train loop vs the isolated \"+ batch\" step."
          "\npeak MB (of 2**20 bytes, as the runs' records count them): CUDA allocator peak of "
          "the stage; on the CPU the activations saved for "
          "backward (train steps) or the process's peak RSS growth in a fresh process (relation "
          "head + loss).\nops: dispatched non-view ATen ops per step or batch (about the kernel "
          "launches on a GPU), from one untimed call; for compiled steps, in parentheses, the "
          "top-level ATen ops outside compiled code (torch.profiler). MiB: what those ops "
          "read and write, a proxy of the memory traffic (each tensor once, whole, no caches); "
          "for train steps that of forward + loss + backward, as the MFU's FLOPs."
          + ("\nsyncs/step: host syncs flagged by torch.cuda.set_sync_debug_mode (CUDA only)."
             if syncs else ""))


def markdown_table(rows: list[Row], syncs: bool = False) -> str:
    """The table of `print_table` as Markdown (numbers right-aligned), for docs/performance.md."""
    header = table_header(syncs)
    align = ["---" if name in ("stage", "config", "ratio") else "---:" for name in header]
    lines = [header, align] + [r.cells(syncs) for r in rows]
    return "\n".join("| " + " | ".join(c.replace("|", "\\|") for c in line) + " |"
                     for line in lines) + "\n"


def markdown_from_json(paths: list[Path]) -> str:
    """Markdown tables of the rows that earlier runs wrote with --json (a GPU run's results read
    here): one per file, headed by its device and torch version."""
    parts = []
    for path in paths:
        try:
            data = json.loads(path.read_text())
            rows = [Row(**row) for row in data["rows"]]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise SystemExit(f"{path}: not a bench --json file ({err})") from err
        syncs = any("syncs_per_step" in row.extra for row in rows)
        parts.append(f"{path} ({data.get('device', '?')}, torch {data.get('torch', '?')}):\n\n"
                     + markdown_table(rows, syncs))
    return "\n".join(parts)

