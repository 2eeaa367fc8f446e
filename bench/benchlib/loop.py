"""The train loop stage: epochs of the project's own training loop on in-memory images."""

from __future__ import annotations

import itertools
import sys
import tempfile
import time
from pathlib import Path

import torch

from relvit.config import RunConfig
from relvit.data.loading import Splits, TensorSplit
from relvit.train.loop import Run, build_model
from relvit.train.objective import Objective

from benchlib.measure import (SyncCounter, count_ops, cuda_peak_mb, graphs_recorded_in_first_call,
                              profile_steps, reset_peak, sync, timed)
from benchlib.presets import CONFIGS
from benchlib.steps import compile_note, run_config, step_config
from benchlib.table import Row


class SyntheticRun(Run):
    """`relvit.train.loop.Run` on `samples` random uint8 images in memory: the real training
    epoch (`Run._train_epoch`: batches, learning rate, lagged finiteness check, statistics) with
    no files to read and no evaluation splits."""

    def __init__(self, cfg: RunConfig, out_dir: Path, samples: int):
        self.samples = samples
        super().__init__(cfg, out_dir, progress=False)

    def setup(self) -> torch.nn.Module:
        n, size, classes = self.samples, self.geo.image_size, self.dataset.num_classes
        gen = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen)
        labels = torch.randint(0, classes, (n,), generator=gen)
        mean, std = self.dataset.stats
        self.splits = Splits(TensorSplit(images, labels), {}, [str(c) for c in range(classes)],
                             tuple(mean), tuple(std))
        self.objective = Objective(self.cfg, self.dataset, self.geo, self.splits.mean,
                                   self.splits.std)
        return build_model(self.cfg, self.geo, len(self.splits.classes))


def bench_loop(args, device: torch.device) -> list[Row]:
    """One epoch of `Run._train_epoch` of `--loop-batches` batches, after one untimed epoch;
    `prepare()` runs first, so `--compile` compiles the model as a run does."""
    rows = []
    for dataset, size, patch in CONFIGS:
        if args.sizes and size not in args.sizes:
            continue
        for mode in ("supervised", "pretrain"):
            cfg = run_config(mode, dataset, size, patch, args, args.compile)
            with tempfile.TemporaryDirectory() as tmp:
                run = SyntheticRun(cfg, Path(tmp), args.loop_batches * args.batch)
                run.prepare()
                steps = run.steps_per_epoch()
                epochs = itertools.count()

                def epoch() -> None:
                    run._train_epoch(next(epochs), steps, steps * cfg.optim.epochs)

                graphs = graphs_recorded_in_first_call(args, args.compile)
                if graphs:
                    reset_peak(device)
                started = time.perf_counter()
                epoch()  # warm-up (and compilation), timed separately
                sync(device)
                first = time.perf_counter() - started
                if not graphs:
                    reset_peak(device)
                syncs = SyncCounter(device, args.sync_debug)
                seconds = timed(epoch, 1, device, warmup=0, around=syncs) / steps
                peak = cuda_peak_mb(device)
                ops = {} if args.compile else count_ops(epoch, steps)
                name = "supervised" if mode == "supervised" else "pretrain (fused, jitter)"
                name += compile_note(args) if args.compile else ""
                rows.append(Row(f"train loop: {name}", f"{step_config(args, size, patch)}, "
                                f"{steps} steps", args.batch / seconds, 1000 * seconds,
                                peak_mb=peak, extra={"first_epoch_s": first, "mode": mode,
                                                     "size": size, "compiled": args.compile,
                                                     "steps": steps, **ops}))
                print(f"  {size}px loop {mode}: {1000 * seconds:.1f} ms/step, first epoch "
                      f"{first:.1f} s" + (f", {ops['ops']:,.0f} ops/step" if ops else ""),
                      file=sys.stderr, flush=True)
                syncs.per_step(steps, rows[-1].extra, f"{size}px loop {mode}")
                if args.profile:
                    profile_steps(epoch, 1, device, args.profile / f"{size}px-loop-{mode}",
                                  f"train loop: {name}, {rows[-1].config}")
    return rows


def compare_loop(rows: list[Row]) -> None:
    """Set each train loop row's ratio: its time per step over that of the isolated "+ batch"
    train step of the same size, mode and compilation (when the steps stage ran too)."""
    for row in rows:
        if not row.stage.startswith("train loop"):
            continue
        key = (row.extra["size"], row.extra["mode"], row.extra["compiled"])
        for ref in rows:
            if (ref.stage.startswith("train step") and ref.extra.get("with_batch")
                    and (ref.extra["size"], ref.extra["mode"], ref.extra["compiled"]) == key):
                row.ratio = f"{row.ms_per_step / ref.ms_per_step:.2f}× the isolated step"

