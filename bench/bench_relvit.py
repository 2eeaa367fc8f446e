"""Throughput benchmark: input pipeline stages, the pretrain vs supervised training step and loop.

Prints one table (stage, config, images/s, ms/step, ratio, peak memory, MFU, ops; syncs/step with
--sync-debug on CUDA) and optionally writes it as JSON; measures ratios within one run because
these machines are noisy. Asserts nothing.

    python bench/bench_relvit.py                       # CPU preset: tiny widths, about 2 minutes
    python bench/bench_relvit.py --device cuda         # GPU preset: ViT-S (depth 12), batch 256
    python bench/bench_relvit.py --device cuda --compile --only steps --json out.json
    python bench/bench_relvit.py --device cuda --only steps loop --sync-debug --profile prof
    python bench/bench_relvit.py --device cuda --compile --only steps --rounds 3

Stages (`--only`, default all): "decode" (ImageNet-like JPEG files through DataLoader workers, the
per-sample transform of image-file datasets; after the table, the workers that would feed each
224-px "+ batch" step), "device-decode" (the alternative: a batch of JPEGs decoded on the device,
nvjpeg on CUDA, and cropped there), "augment" (batched pad-crop + flip at 32 px; uint8 -> float +
normalise at 224 px), "ssl" (per-patch jitter + permutation + targets, batched, and the per-sample
torchvision reference the original runs), "steps" (forward, loss, backward, clipping, AdamW; bf16
autocast and fused AdamW on CUDA) of the supervised and the pretrain objective, the latter with the
plain relation loss (the [B, 9, N, N] scores) and the fused one; "+ batch" rows add the batch
construction of `relvit.train.objective` (augmentation, jitter, targets) on the same device;
`--rounds R` times each case in R windows, the cases interleaved, and reports medians and the range
of the paired ratios. "loop" times one epoch of the project's own training loop
(`Run._train_epoch`, eager unless --compile) on `--loop-batches` batches of random in-memory uint8
images, against the isolated "+ batch" step. "memory": the relation head and loss alone at N = 196,
plain and fused (on CUDA also per `--chunk-mb` budget; `--head-align`: the head width padded for
tensor cores; with --compile on CUDA the compiled chunks).

Diagnostics: the "ops" column counts the dispatched non-view ATen ops of one untimed step (about
the kernel launches on a GPU; see `OpCounter`; per device, as the CPU and CUDA run different
jitter and AdamW paths; for a compiled step, in parentheses, the top-level ATen ops that run
outside compiled code, `eager_ops_outside_compiled`), "MiB" what those ops read and write (a
proxy of the memory traffic; with --cpu-autocast the CPU's train steps run under bf16 autocast
as CUDA's, so that their counts stand for a GPU step's: a CPU-only session can weigh a change
for the GPU; --dense-jitter does so for the SSL inputs and "+ batch" steps, with CUDA's jitter
path). --sync-debug counts the host syncs per step in the timed SSL inputs, train steps and loop
(CUDA only; the sites go to stderr and the JSON). --profile DIR writes a torch.profiler table
and chrome trace per train step case, loop and relation head + loss case, outside the timed
calls.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import itertools
import json
import math
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import typing
import unittest.mock
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from relvit.compiled import compile_static
from relvit.config import CompileMode, RunConfig, config_from_dict
from relvit.data.augment import normalize, random_crop, random_hflip
from relvit.data.loading import (
    FileSplit, Splits, TensorSplit, batches, file_transform, to_float_images,
)
from relvit.data.registry import get_dataset
from relvit.geometry import run_geometry
from relvit.models import losses
from relvit.models.heads import PairwiseScoreHead
from relvit.ssl import pipeline
from relvit.ssl.jitter import JitterConfig
from relvit.ssl.jitter_reference import reference_jitter_image
from relvit.ssl.patches import patchify, unpatchify
from relvit.ssl.pipeline import jitter_and_shuffle
from relvit.ssl.targets import position_targets, relation_targets
from relvit.train.loop import Run, build_model
from relvit.train.objective import Objective

JITTER = JitterConfig()
H100_BF16_DENSE_TFLOPS = 989.4  # H100 SXM5, dense bf16 tensor-core peak (no sparsity)
# (dataset of the registry, image side, ViT patch): CIFAR-10 ViT-S/4 and ImageNet-style ViT-S/16
CONFIGS = (("cifar10", 32, 4), ("imagenet100", 224, 16))
PRESETS = {  # CPU: sized for 2 cores; GPU: the paper's ViT-S and batch
    "cpu": dict(batch=16, embed_dim=96, depth=2, num_heads=3, steps=3, warmup=1,
                pipeline_batch=64, decode_images=128, reference_images=4, memory_dim=36,
                loop_batches=2),
    "gpu": dict(batch=256, embed_dim=384, depth=12, num_heads=6, steps=20, warmup=3,
                pipeline_batch=256, decode_images=2048, reference_images=8, memory_dim=384,
                loop_batches=4),
}
# ATen ops that launch no kernel (allocation, metadata); views are left out by `func.is_view`
NO_KERNEL_OPS = frozenset({
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "resize_",
    "lift_fresh", "record_stream", "set_", "is_same_size", "sym_size", "sym_stride",
    "sym_numel", "sym_storage_offset",
})
# counted ops that move no bytes (a view in all but name)
NO_TRAFFIC_OPS = frozenset({"_unsafe_view"})
# with beta=0 these ignore their first input (`input` or the in-place `self`): only written
BETA_OPS = frozenset({"addmm", "addmm_", "baddbmm", "baddbmm_"})


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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], repeats: int, device: torch.device, warmup: int = 1,
          around: contextlib.AbstractContextManager | None = None) -> float:
    """Mean wall time of `fn` in seconds over `repeats` calls, after `warmup` calls; the device is
    synchronised only around the timed calls, so host and device work overlap as in training.
    `around` (e.g. a `SyncCounter`) is entered for the timed calls alone."""
    for _ in range(warmup):
        fn()
    sync(device)
    with around or contextlib.nullcontext():
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        sync(device)
        return (time.perf_counter() - start) / repeats


class SyncCounter:
    """Host syncs in a block, as flagged by `torch.cuda.set_sync_debug_mode("warn")`: `.item()`,
    `bool()`, `.tolist()`, `nonzero`, every blocking copy between host and device (e.g.
    `torch.tensor(..., device="cuda")`), stream syncs; not flagged: CUDA event waits,
    `torch.cuda.synchronize`, non-blocking copies. `count` stays None off CUDA or when disabled;
    `sites` counts the Python lines that raised the warnings."""

    def __init__(self, device: torch.device, enabled: bool):
        self.enabled = enabled and device.type == "cuda"
        self.count: int | None = None
        self.sites: Counter[str] = Counter()

    def __enter__(self) -> SyncCounter:
        if self.enabled:
            self._catch = warnings.catch_warnings(record=True)
            self._caught = self._catch.__enter__()
            warnings.simplefilter("always")
            self._mode = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc) -> None:
        if not self.enabled:
            return
        torch.cuda.set_sync_debug_mode(self._mode)
        self._catch.__exit__(*exc)
        self.count = 0
        for w in self._caught:
            if "synchronizing CUDA operation" in str(w.message):
                self.count += 1
                self.sites[f"{Path(w.filename).name}:{w.lineno}"] += 1
            else:  # other warnings pass on
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

    def per_step(self, steps: int, extra: dict, label: str) -> None:
        """Record syncs per step (and the sites) in a row's `extra`; print them to stderr."""
        if self.count is None:
            return
        extra["syncs_per_step"] = self.count / steps
        extra["sync_sites"] = dict(self.sites.most_common(10))
        sites = ", ".join(f"{k} ×{v}" for k, v in self.sites.most_common(5))
        print(f"  {label}: {self.count / steps:.1f} host syncs/step{' at ' if sites else ''}"
              f"{sites}", file=sys.stderr, flush=True)


def _tensor_bytes(values) -> int:
    """Bytes of the tensors among `values`, broadcast ones (a zero stride) left out."""
    return sum(t.numel() * t.element_size() for t in values
               if isinstance(t, torch.Tensor) and 0 not in t.stride())


class OpCounter(TorchDispatchMode):
    """Counts the ATen ops dispatched in the block that launch work, about the kernel launches on
    a GPU: views (`func.is_view`) and NO_KERNEL_OPS (allocation, metadata) are left out; a
    foreach or fused op counts once; autograd's backward ops count. Per device: the CPU runs the
    sorted jitter and per-tensor AdamW, CUDA the dense jitter and fused AdamW. Not for
    torch.compile-d code (its kernels bypass the dispatcher).

    `bytes`: the memory traffic of those ops, a proxy: every tensor input and output of an op
    counted once, whole (no caches; a gather or scatter as if it touched all of its tensor;
    broadcast inputs, NO_TRAFFIC_OPS and a BETA_OPS input ignored with beta=0 left out)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.bytes = 0
        self.names: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if not func.is_view and name not in NO_KERNEL_OPS:
            self.count += 1
            self.names[name] += 1
            if name not in NO_TRAFFIC_OPS:
                outs = out if isinstance(out, (tuple, list)) else [out]
                inputs = [v for k, v in (kwargs or {}).items() if k != "out"]  # out: written only
                read = args[1:] if name in BETA_OPS and (kwargs or {}).get("beta", 1) == 0 else args
                self.bytes += _tensor_bytes([*read, *inputs, *outs])
        return out


def eager_only() -> contextlib.AbstractContextManager:
    """Every torch.compile-d function runs eagerly in the block, untraced. For a dispatch mode
    (`OpCounter`, FlopCounterMode): torch 2.11 (the lent GPU machines') runs a compiled function
    called under one eagerly, and then keeps running it eagerly for the rest of the process;
    the compiled train steps timed after the FLOP count ran their jitter and relation loss
    uncompiled (`tests/test_bench.py`)."""
    return torch.compiler.set_stance("force_eager")


def count_ops(fn: Callable[[], object], steps: int = 1) -> dict[str, object]:
    """`extra` entries of one untimed call of `fn` that runs `steps` steps: ops, MiB moved (the
    `OpCounter` proxy) and the 10 most frequent ops, per step."""
    with eager_only(), OpCounter() as ops:
        fn()
    return {"ops": ops.count / steps, "mib": ops.bytes / steps / 2**20,
            "top_ops": {k: v / steps for k, v in ops.names.most_common(10)}}


def eager_ops_outside_compiled(fn: Callable[[], object]) -> int:
    """Top-level ATen ops of one untimed call of `fn` that run outside torch.compile-d code
    (torch.profiler; a compiled region's forward and its compiled backward count none): the
    eager launches of a compiled step, where `OpCounter` cannot see. The train steps count their
    forward + loss + backward (the optimiser is a few fused launches on CUDA, many on the CPU);
    on the CPU the jitter outside a region runs eagerly, where CUDA compiles it."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()

    def in_compiled_code(event) -> bool:
        while event is not None:
            if "Compiled" in event.name:  # "Torch-Compiled Region", "CompiledFunction(Backward)"
                return True
            event = event.cpu_parent
        return False

    return sum(1 for e in prof.events() if e.name.startswith("aten::")
               and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))
               and not in_compiled_code(e))


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def profile_steps(fn: Callable[[], object], calls: int, device: torch.device, stem: Path,
                  title: str) -> None:
    """`calls` calls of `fn` under torch.profiler (CPU, and CUDA when used): `<stem>.txt` (the 25
    ops of most self time, device time on CUDA) and `<stem>.json` (a chrome trace)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    stem.parent.mkdir(parents=True, exist_ok=True)
    with profile(activities=activities) as prof:
        for _ in range(calls):
            fn()
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=25)
    Path(f"{stem}.txt").write_text(f"{title}: {calls} calls, sorted by {key}\n{table}\n")
    prof.export_chrome_trace(f"{stem}.json")


def reset_peak(device: torch.device) -> None:
    """Start a peak-memory measurement, the earlier cases' garbage collected first: a run is a
    reference cycle, and would otherwise stay allocated through the next case's peak."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def graphs_recorded_in_first_call(args, compiled: bool) -> bool:
    """Whether a case's first calls record CUDA graphs (compile_mode reduce-overhead): their
    memory pool is allocated then and reused by every replay, so the case's peak is measured
    from before its first call (else the pool, the activations' memory, is missed)."""
    return compiled and args.compile_mode == "reduce-overhead"


def allocated_mb(device: torch.device) -> float:
    """MB allocated on a CUDA device now, the garbage collected first (0 off CUDA): what a case's
    peak is measured above, so that the cases kept for later rounds do not count in it."""
    gc.collect()
    return torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0


def cuda_peak_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def saved_for_backward_mb(fn: Callable[[], torch.Tensor]) -> float:
    """MB of the distinct storages autograd keeps for the backward pass of `fn()`."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values()) / 2**20


# --------------------------------------------------------------------------- input pipeline


PHOTO_SIZE = (375, 500)  # (height, width): ImageNet's most common image size


def photo_like(height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """A uint8 [3, H, W] image with a natural photograph's 1/f amplitude spectrum (correlated
    colour channels). Saved as a JPEG of quality 90 at 500 x 375 it takes about 120 KB, about
    the average ImageNet training JPEG (110 KB), so decoding it costs about as much."""
    fy = torch.fft.fftfreq(height).abs()[:, None]
    fx = torch.fft.rfftfreq(width)[None, :]
    f = (fy ** 2 + fx ** 2).sqrt().clamp_min(1 / max(height, width))
    spectrum = torch.randn(3, height, width // 2 + 1, dtype=torch.complex64,
                           generator=generator) / f
    luma, chroma = torch.fft.irfft2(spectrum, s=(height, width)).split([1, 2])
    chroma = 0.3 * chroma
    rgb = torch.cat([luma + chroma[0:1], luma - 0.5 * chroma[0:1] + chroma[1:], luma - chroma[1:]])
    return ((rgb - rgb.mean()) / rgb.std() * 50 + 120).clamp(0, 255).to(torch.uint8)


def photo_files(folder: Path, n: int, distinct: int = 8) -> list[Path]:
    """`n` JPEG files (quality 90) of `distinct` photo-like images, each saved once and copied:
    decoding, not the variety of the content, is what is timed."""
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:05d}.jpg" for i in range(n)]
    for i, path in enumerate(paths):
        if i < distinct:
            Image.fromarray(photo_like(*PHOTO_SIZE, gen).permute(1, 2, 0).numpy()).save(
                path, quality=90)
        else:
            shutil.copyfile(paths[i % distinct], path)
    return paths


def resized_files(paths: list[Path], folder: Path, shorter_side: int,
                  distinct: int = 8) -> list[Path]:
    """The files of `photo_files` as `relvit resize-images` writes them (the distinct ones
    resized, the rest copied from those)."""
    from relvit.data.resize import ResizeSettings, resize_file

    settings = ResizeSettings(shorter_side)
    out = [folder / path.name for path in paths]
    for i, (path, target) in enumerate(zip(paths, out)):
        if i < distinct:
            resize_file(path, target, settings)
        else:
            shutil.copyfile(out[i % distinct], target)
    return out


def jpeg_kb(paths: list[Path], distinct: int = 8) -> float:
    """Mean size in KB of the distinct files of `photo_files`."""
    return sum(path.stat().st_size for path in paths[:distinct]) / min(distinct, len(paths)) / 1e3


def bench_decode(args, device: torch.device) -> list[Row]:
    """ImageNet-like JPEGs (500 x 375, ~120 KB) -> RandomResizedCrop(224) + flip -> uint8, in
    DataLoader workers with per-image seeding, as a training epoch of an image-file dataset;
    with `--decode-resized S` also their copies made by `relvit resize-images --shorter-side S`.

    Each worker decodes whole batches, so the batch is cut to give every worker at least 4 (a
    training epoch has hundreds), and the images to whole rounds of full batches, one per worker
    (a short last batch would be decoded by one worker while the others idle). The rate is the
    steady one: from the arrival of the last worker's first batch (the workers start together)
    to the arrival of the last batch, the workers' shutdown left out; the start-up (time to the
    first batch) is reported beside it."""
    n, workers = args.decode_images, max(1, args.workers)
    if n < 2 * workers:
        raise SystemExit(f"--decode-images {n} is too few for {args.workers} workers: "
                         f"give at least {2 * workers}")
    height, width = PHOTO_SIZE
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = photo_files(Path(tmp) / "photos", n)
        rows.append(_decode_row(paths, f"JPEG {width}x{height}", args, device))
        if args.decode_resized:
            resized = resized_files(paths, Path(tmp) / "resized", args.decode_resized)
            rows.append(_decode_row(resized, f"JPEG resized to shorter side "
                                    f"{args.decode_resized}", args, device))
            rows[-1].ratio += f", {rows[-1].images_per_s / rows[0].images_per_s:.2f}× original"
    return rows


def _decode_row(paths: list[Path], what: str, args, device: torch.device) -> Row:
    """The decode row of `paths` (see `bench_decode`)."""
    spec = get_dataset("imagenet100")
    workers = max(1, args.workers)
    batch = max(1, min(args.pipeline_batch, len(paths) // (4 * workers)))
    n = len(paths) // (batch * workers) * batch * workers
    paths, count = paths[:n], n // batch
    kb = jpeg_kb(paths)
    split = FileSplit(paths, torch.zeros(n, dtype=torch.long))
    transform = file_transform(spec, 224, train=True)
    started = time.perf_counter()
    arrivals: list[float] = []
    steady = 0  # images after the first batch of every worker
    for i, (images, _) in enumerate(batches(split, torch.arange(n), batch, transform,
                                            args.workers, torch.Generator().manual_seed(0),
                                            pin_memory=device.type == "cuda", seed=0)):
        images.to(device, non_blocking=True)
        if i == count - 1:
            sync(device)
        arrivals.append(time.perf_counter())
        steady += len(images) if i >= workers else 0
    rate = steady / (arrivals[-1] - arrivals[workers - 1])
    return Row(f"decode: {what} (~{kb:.0f} KB), {args.workers} workers",
               "224x224 RandomResizedCrop + flip", rate, ratio=f"{rate / workers:,.0f}/worker",
               extra={"startup_s": arrivals[0] - started, "batch": batch, "images": n,
                      "per_worker": rate / workers, "jpeg_kb": kb, "files": what})


def bench_device_decode(args, device: torch.device) -> list[Row]:
    """The alternative to decoding in CPU workers: a batch of JPEG bytes decoded on the training
    device (`torchvision.io.decode_jpeg` with a list: nvjpeg's batched decode on CUDA), then
    RandomResizedCrop(224) + flip per image there (torchvision's tensor path: bilinear with
    antialias, as PIL's resize but in float). Reading the files is left out (loader workers would
    read bytes). Also reported: the host's time to queue a batch (what a launch-bound step would
    pay for it) and the largest pixel difference from PIL's decode of the same file."""
    from torchvision import transforms as T
    from torchvision.io import ImageReadMode, decode_jpeg

    from relvit.data.formats import decode_image

    batch = args.pipeline_batch
    with tempfile.TemporaryDirectory() as tmp:
        paths = photo_files(Path(tmp), 8)
        kb = jpeg_kb(paths)
        encoded = [torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
                   for path in paths]
        reference = T.functional.pil_to_tensor(decode_image(paths[0]))
    crop_and_flip = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip()])
    inputs = [encoded[i % len(encoded)] for i in range(batch)]

    def decode_batch() -> torch.Tensor:
        images = decode_jpeg(inputs, mode=ImageReadMode.RGB, device=device)
        return torch.stack([crop_and_flip(image) for image in images])

    height, width = PHOTO_SIZE
    decoder = "nvjpeg" if device.type == "cuda" else "libjpeg-turbo"
    stage = (f"decode on the {device.type}: {decoder}, batch {batch}, JPEG {width}x{height} "
             f"(~{kb:.0f} KB)")
    config = "224x224 RandomResizedCrop + flip per image"
    with warnings.catch_warnings():  # torchvision >= 0.29: decoding moves to TorchCodec
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            seconds = timed(decode_batch, args.repeats, device)
        except (RuntimeError, NotImplementedError) as err:  # e.g. a torchvision without nvjpeg
            return [Row(stage, config, ratio=f"failed: {str(err).splitlines()[0][:120]}")]
        queued = []
        for _ in range(args.repeats):
            sync(device)
            started = time.perf_counter()
            decode_batch()
            queued.append(time.perf_counter() - started)
        sync(device)
        decoded = decode_jpeg(encoded[0], mode=ImageReadMode.RGB, device=device).cpu()
    diff = int((decoded.int() - reference.int()).abs().max())
    return [Row(stage, config, batch / seconds,
                ratio=f"host {1e3 * min(queued):.1f} ms/batch, max |Δ| vs PIL {diff}",
                extra={"host_ms_per_batch": 1e3 * min(queued), "max_abs_diff_vs_pil": diff,
                       "jpeg_kb": kb})]


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


def bench_augment(args, device: torch.device) -> list[Row]:
    """The batched augmentation of `Objective.batch` on the training device."""
    b = args.pipeline_batch
    gen = torch.Generator(device=device).manual_seed(0)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    small = torch.randint(0, 256, (b, 3, 32, 32), dtype=torch.uint8, device=device)
    large = torch.randint(0, 256, (b, 3, 224, 224), dtype=torch.uint8, device=device)

    def cifar() -> torch.Tensor:
        x = random_hflip(random_crop(to_float_images(small, 32), 4, gen), gen)
        return normalize(x, mean, std)

    def imagenet() -> torch.Tensor:
        return normalize(to_float_images(large, 224), mean, std)

    rows = []
    for config, fn in (("32x32, pad-crop 4 + flip + normalise", cifar),
                       ("224x224, to float + normalise", imagenet)):
        rows.append(Row("augment: batched", config, b / timed(fn, args.repeats, device)))
    return rows


def batched_pipeline(images: torch.Tensor, patch: int, gen: torch.Generator,
                     compiled: bool = False) -> tuple:
    """relvit: jitter + permutation + targets for a whole batch (what pretraining runs)."""
    grid = (images.shape[-2] // patch, images.shape[-1] // patch)
    out, perm = jitter_and_shuffle(images, patch, JITTER, True, gen, compiled)
    return (out, relation_targets(*grid, perm, dtype=torch.uint8),
            position_targets(grid[0] * grid[1], perm))


def reference_pipeline(images: torch.Tensor, patch: int) -> list:
    """The original's way: one image at a time, torchvision transforms per patch."""
    grid = (images.shape[-2] // patch, images.shape[-1] // patch)
    base = relation_targets(*grid)
    out = []
    for image in images:
        jittered = reference_jitter_image(image, patch, JITTER)
        perm = torch.randperm(grid[0] * grid[1])
        shuffled = unpatchify(patchify(jittered[None], patch)[:, perm], grid)
        out.append((shuffled, base[perm][:, perm], perm))
    return out


def bench_ssl_inputs(args, device: torch.device) -> list[Row]:
    rows = []
    for _, size, patch in CONFIGS:
        images = torch.rand(args.pipeline_batch, 3, size, size, device=device)
        gen = torch.Generator(device=device).manual_seed(0)
        config = f"{size}x{size}, patch {patch}, N={(size // patch) ** 2}"
        reset_peak(device)
        syncs = SyncCounter(device, args.sync_debug)
        fast = args.pipeline_batch / timed(lambda: batched_pipeline(images, patch, gen),
                                           args.repeats, device, around=syncs)
        rows.append(Row("SSL inputs: jitter + permutation + targets, batched", config, fast,
                        peak_mb=cuda_peak_mb(device),
                        extra=count_ops(lambda: batched_pipeline(images, patch, gen))))
        syncs.per_step(args.repeats, rows[-1].extra, f"{size}px SSL inputs")
        # The reference runs like a DataLoader worker: one thread, credited with perfect scaling
        # over `--workers` processes (a conservative ratio).
        n_ref = min(args.reference_images, args.pipeline_batch)
        cpu_images = images[:n_ref].cpu()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        slow = args.workers * n_ref / timed(lambda: reference_pipeline(cpu_images, patch), 1,
                                            torch.device("cpu"), warmup=0)
        torch.set_num_threads(threads)
        rows[-1].ratio = f"{fast / slow:,.1f}× ref"
        rows.append(Row(f"SSL inputs: per-sample reference ×{args.workers} workers", config, slow))
        if args.compile:  # the dense jitter torch.compile-d (config key `compile`)
            started = time.perf_counter()
            batched_pipeline(images, patch, gen, compiled=True)
            print(f"  {size}px SSL inputs compiled: first call "
                  f"{time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
            compiled = args.pipeline_batch / timed(
                lambda: batched_pipeline(images, patch, gen, compiled=True), args.repeats, device)
            rows.append(Row("SSL inputs: jitter + permutation + targets, compiled", config,
                            compiled, ratio=f"{compiled / fast:,.2f}× batched"))
    return rows


# --------------------------------------------------------------------------- training steps


def run_config(mode: str, dataset: str, size: int, patch: int, args,
               compile: bool = False) -> RunConfig:
    return config_from_dict({
        "mode": mode, "device": str(args.device), "compile": compile,
        **({"compile_mode": args.compile_mode} if compile and args.compile_mode else {}),
        **({"compile_step": True} if compile and args.compile_step else {}),
        "data": {"name": dataset, "image_size": size, "workers": 0},
        "model": {"backbone": "vit_small", "patch_size": patch, "embed_dim": args.embed_dim,
                  "depth": args.depth, "num_heads": args.num_heads},
        "optim": {"batch_size": args.batch},
    })


@dataclass
class StepCase:
    """One training-step variant."""

    name: str
    mode: str  # supervised | pretrain
    fused: bool = True  # pretrain: fused relation loss
    with_batch: bool = False  # include the batch's draws and build (augmentation, jitter)
    compile: bool = False


class StepFns(NamedTuple):
    """The calls of one training-step variant (`make_step`)."""

    loss: Callable[..., torch.Tensor]  # forward + loss of one batch (eager=True: uncompiled)
    step: Callable[[], None]  # a whole optimisation step
    forward_backward: Callable[[], None]  # forward + loss + backward, gradients cleared first
    build: Callable[[], object]  # the batch construction alone (`Objective.batch`)


def make_step(case: StepCase, dataset: str, size: int, patch: int, args, device: torch.device
              ) -> StepFns:
    """The calls of one training-step variant: `loss(eager=True)` bypasses torch.compile, for
    counting FLOPs; the batch construction is augmentation, jitter, targets, normalisation."""
    cfg = run_config(case.mode, dataset, size, patch, args, case.compile)
    spec, geo = get_dataset(dataset), run_geometry(cfg)
    objective = Objective(cfg, spec, geo, spec.stats[0], spec.stats[1])
    torch.manual_seed(0)
    model = build_model(cfg, geo, spec.num_classes).to(device)
    model.relation_projections = case.fused
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    gen = torch.Generator(device=device).manual_seed(0)
    images = torch.rand(args.batch, 3, size, size, device=device)
    labels = torch.randint(0, spec.num_classes, (args.batch,), device=device)
    fixed = objective.batch(images, labels, True, gen)
    if args.channels_last:
        fixed.images = fixed.images.contiguous(memory_format=torch.channels_last)
    autocast = device.type == "cuda" or args.cpu_autocast

    def losses_of(net: torch.nn.Module) -> tuple[Callable[..., tuple[torch.Tensor, dict]], ...]:
        """`net`'s losses as the training loop's: of a built batch (`Objective.forward_losses`)
        and of a drawn one (`Objective.step_losses`); CPU autocast an option."""
        return (functools.partial(objective.forward_losses, net, autocast=autocast),
                functools.partial(objective.step_losses, net, autocast=autocast))

    # as the training loop (`--compile-mode`, `--compile-step`: the run config's keys)
    plain = losses_of(model)
    if not case.compile:
        train = plain
    elif cfg.compile_step:
        train = tuple(compile_static(fn, mode=cfg.compile_mode) for fn in plain)
    else:
        train = losses_of(compile_static(model, mode=cfg.compile_mode))

    def loss_fn(eager: bool = False) -> torch.Tensor:
        forward_losses, step_losses = plain if eager else train
        if not case.with_batch:
            return forward_losses(fixed)[0]
        drawn = objective.draw(images, labels, True, gen)
        if args.channels_last:  # the built images keep this layout
            drawn.images = drawn.images.contiguous(memory_format=torch.channels_last)
        return step_losses(drawn)[0]

    def step() -> None:
        loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    def forward_backward() -> None:
        opt.zero_grad(set_to_none=True)  # no accumulation into the last step's gradients
        loss_fn().backward()

    return StepFns(loss_fn, step, forward_backward,
                   lambda: objective.batch(images, labels, True, gen))


@contextlib.contextmanager
def dense_jitter(on: bool):
    """With `on`, the SSL pipeline's jitter takes the dense path (the default on CUDA) on every
    device, so that a CPU run counts the ops and bytes of a GPU's."""
    if not on:
        yield
        return
    with unittest.mock.patch.object(pipeline, "apply_jitter",
                                    functools.partial(pipeline.apply_jitter, dense=True)):
        yield


def model_flops(loss_fn: Callable[..., torch.Tensor]) -> float:
    """FLOPs of one eager forward + backward (matmuls, convolutions, attention), counted by
    torch's FlopCounterMode (elementwise ops, the jitter's colour ops and AdamW not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with eager_only(), FlopCounterMode(display=False) as counter:
        loss_fn(eager=True).backward()
    return float(counter.get_total_flops())


def model_traffic_mib(loss_fn: Callable[..., torch.Tensor]) -> float:
    """MiB read and written (the `OpCounter` proxy) by one eager forward + loss + backward, what
    `model_flops` counts: the part of a step that grows with the batch (AdamW's does not)."""
    return count_ops(lambda: loss_fn(eager=True).backward())["mib"]


def compile_note(args) -> str:
    """What compiled step and loop rows add to their name: the torch.compile mode, and whether
    the step is compiled as one region (`--compile-step`)."""
    notes = ([args.compile_mode] if args.compile_mode else []) + (
        ["step compiled as one region"] if args.compile_step else [])
    return f" ({', '.join(notes)})" if notes else ""


def step_config(args, size: int, patch: int) -> str:
    """The config cell of the train step and train loop rows."""
    return (f"ViT-S/{patch} d{args.embed_dim}x{args.depth}, {size}px, N={(size // patch)**2},"
            f" batch {args.batch}")


def bench_steps(args, device: torch.device) -> list[Row]:
    cases = [StepCase("supervised", "supervised"),
             StepCase("pretrain, plain relation loss", "pretrain", fused=False),
             StepCase("pretrain, fused relation loss", "pretrain"),
             StepCase("supervised + batch", "supervised", with_batch=True),
             StepCase("pretrain, fused + batch (jitter)", "pretrain", with_batch=True)]
    if args.compile:
        cases = [StepCase("supervised, compiled", "supervised", compile=True),
                 StepCase("pretrain, fused, compiled", "pretrain", compile=True),
                 StepCase("supervised + batch, compiled", "supervised", with_batch=True,
                          compile=True),
                 StepCase("pretrain, fused + batch, compiled", "pretrain", with_batch=True,
                          compile=True)]
    peak_tflops = args.peak_tflops or (H100_BF16_DENSE_TFLOPS if device.type == "cuda" else 0)
    rows = []
    for dataset, size, patch in CONFIGS:
        if args.sizes and size not in args.sizes:
            continue
        config = step_config(args, size, patch) + (", channels-last" if args.channels_last else "")
        measured: list[MeasuredStep] = []
        for case in cases:
            before = allocated_mb(device)
            fns = make_step(case, dataset, size, patch, args, device)
            graphs = graphs_recorded_in_first_call(args, case.compile)
            if graphs:
                reset_peak(device)
            started = time.perf_counter()
            fns.step()  # compile / first-call warm-up, timed separately
            sync(device)
            first = time.perf_counter() - started
            flops = model_flops(fns.loss)
            saved = None if device.type == "cuda" else saved_for_backward_mb(fns.loss)
            if not graphs:
                reset_peak(device)
            syncs = SyncCounter(device, args.sync_debug)
            seconds = timed(fns.step, args.steps, device, warmup=args.warmup, around=syncs)
            peak = cuda_peak_mb(device) - before if device.type == "cuda" else saved
            ops = ({"eager_ops": eager_ops_outside_compiled(fns.forward_backward)}
                   if case.compile else {**count_ops(fns.step), "mib": model_traffic_mib(fns.loss)})
            name = case.name + (compile_note(args) if case.compile else "")
            row = Row(f"train step: {name}", config, peak_mb=peak,
                      extra={"first_step_s": first, "flops": flops, "mode": case.mode,
                             "with_batch": case.with_batch, "size": size,
                             "compiled": case.compile, "ms_rounds": [1000 * seconds], **ops})
            print(f"  {size}px {name}: {1000 * seconds:.1f} ms/step, first step {first:.1f} s"
                  + (f", {ops['ops']:,.0f} ops" if "ops" in ops
                     else f", {ops['eager_ops']:,} eager ops"),
                  file=sys.stderr, flush=True)  # survives a timeout
            syncs.per_step(args.steps, row.extra, f"{size}px {name}")
            if args.profile:
                profile_steps(fns.step, 3, device, args.profile / f"{size}px-{slug(name)}",
                              f"train step: {name}, {config}")
            built = (batch_construction_row(case, fns.build, config, args, device)
                     if case.with_batch else None)
            # kept for the later rounds; with one round freed before the next case's peak
            measured.append(MeasuredStep(case, fns if args.rounds > 1 else None, row, built))
            del fns  # else alive when the next case's `before` is measured
        for round_ in range(2, args.rounds + 1):  # the cases interleaved: A B C, A B C, ...
            for m in measured:
                seconds = timed(m.fns.step, args.steps, device, warmup=1)
                m.row.extra["ms_rounds"].append(1000 * seconds)
                print(f"  {size}px round {round_}: {m.row.stage}: {1000 * seconds:.1f} ms/step",
                      file=sys.stderr, flush=True)
        rows += finish_step_rows(measured, args.batch, peak_tflops)
    return rows


class MeasuredStep(NamedTuple):
    """A timed training-step case: its calls (kept only for later rounds), its row, and with
    "+ batch" its batch construction's row."""

    case: StepCase
    fns: StepFns | None
    row: Row
    built: Row | None


def finish_step_rows(measured: list[MeasuredStep], batch: int, peak_tflops: float
                     ) -> list[Row]:
    """Each step row's time: the median of its rounds; its ratio to the supervised step of the
    same kind (with or without the batch construction) in time, the median of the rounds' paired
    ratios with their range when there are several, and in peak memory and bytes moved; then
    the batch construction rows' share of their steps."""
    base: dict[bool, Row] = {}
    rows = []
    for m in measured:
        row, case = m.row, m.case
        rounds = row.extra["ms_rounds"]
        row.ms_per_step = statistics.median(rounds)
        row.images_per_s = 1000 * batch / row.ms_per_step
        if peak_tflops:
            row.mfu = row.extra["flops"] / (row.ms_per_step / 1000) / (peak_tflops * 1e12)
        ref = base.setdefault(case.with_batch, row) if case.mode == "supervised" \
            else base.get(case.with_batch, base.get(False))
        if ref is not None:
            ratios = [t / r for t, r in zip(rounds, ref.extra["ms_rounds"])]
            spread = f" ({min(ratios):.2f}–{max(ratios):.2f})" if len(ratios) > 1 else ""
            mem = (f", mem {row.peak_mb / ref.peak_mb:.2f}×" if row.peak_mb and ref.peak_mb
                   else "")
            moved = (f", MiB {row.extra['mib'] / ref.extra['mib']:.3f}×"
                     if row.extra.get("mib") and ref.extra.get("mib") else "")
            row.ratio = f"{statistics.median(ratios):.2f}×{spread}{mem}{moved}"
        rows.append(row)
        if m.built is not None:
            m.built.ratio = f"{m.built.ms_per_step / row.ms_per_step:.2f}× its step"
            rows.append(m.built)
    return rows


def batch_construction_row(case: StepCase, build: Callable[[], object], config: str, args,
                           device: torch.device) -> Row:
    """`Objective.batch` alone (eager; on CUDA its jitter compiled with --compile; --compile-step
    steps compile the build in their region), timed once after the step that contains it: what
    the "+ batch" step would cost over the plain one if nothing overlapped (its ratio to the
    step, `finish_step_rows`)."""
    seconds = timed(build, args.steps, device, warmup=args.warmup)
    name = "jitter + targets" if case.mode == "pretrain" else "augmentation"
    row = Row(f"batch construction: {case.mode} ({name})" + (", compiled" if case.compile
                                                              else ""),
              config, args.batch / seconds, 1000 * seconds,
              extra={"mode": case.mode, "compiled": case.compile,
                     **({} if case.compile else count_ops(build))})
    print(f"  {row.stage}: {1000 * seconds:.1f} ms/batch", file=sys.stderr, flush=True)
    return row


# --------------------------------------------------------------------------- training loop


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


# --------------------------------------------------------------------------- relation memory


@dataclass(frozen=True)
class RelationCase:
    """A variant of the relation head + loss: the plain one, or the fused one with its options."""

    fused: bool
    budget: int | None = None  # fused: float32 bytes of scores per chunk (None: its default)
    align: int = 1  # fused: the head width zero-padded to a multiple of this
    compiled: bool = False  # fused: each chunk's elementwise work torch.compile-d

    def chunk_samples(self, batch: int, n: int) -> int:
        return losses.relation_chunk_samples(batch, 9, n, n,
                                             self.budget or losses.RELATION_CHUNK_BYTES)

    def name(self, batch: int, n: int, dim: int) -> str:
        if not self.fused:
            return "plain ([B,9,N,N] scores)"
        mib = (self.budget or losses.RELATION_CHUNK_BYTES) // 2**20
        width = dim // 9
        return (f"fused ({mib} MiB chunks of {self.chunk_samples(batch, n)} samples"
                + ("" if self.budget else ", default")
                + (f", head width {width} padded to {-(-width // self.align) * self.align}"
                   if width % self.align else "")
                + (", compiled chunks" if self.compiled else "") + ")")


def relation_head_loss(case: RelationCase, batch: int, n: int, dim: int, device: torch.device):
    """The relation head + loss + accuracies of a [batch, n, dim] token map: (fwd + bwd, loss)."""
    torch.manual_seed(0)
    head = PairwiseScoreHead(dim, 9).to(device)
    side = math.isqrt(n)
    tokens = torch.randn(batch, n, dim, device=device, requires_grad=True)
    target = relation_targets(side, side, device=device)

    def loss() -> torch.Tensor:  # with both accuracies, as the training objective
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            if case.fused:
                return losses.fused_relation_loss(
                    head.project(tokens), target, chunk_samples=case.chunk_samples(batch, n),
                    compiled=case.compiled, align=case.align)[0]
            scores = head(tokens)
            with torch.no_grad():
                losses.relation_accuracy(scores, target)
                losses.relation_accuracy(scores, target, True)
            return losses.relation_loss(scores, target)

    def run() -> None:
        loss().backward()
        tokens.grad = None
        head.zero_grad(set_to_none=True)

    return run, loss


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def probe_memory(probe: str) -> None:
    """In a fresh process: peak RSS growth of one CPU forward + backward and the time of a
    second one, as JSON on stdout.
    `probe`: JSON of the `RelationCase` fields and the batch, n, dim."""
    spec = json.loads(probe)
    sizes = [spec.pop(key) for key in ("batch", "n", "dim")]
    run, loss = relation_head_loss(RelationCase(**spec), *sizes, torch.device("cpu"))
    before = rss_mb()
    max_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    run()  # the first call: its peak is the one the process had to hold
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10 - before
    started = time.perf_counter()
    run()  # the time of a warm call: the first pays one-off allocation and kernel set-up
    seconds = time.perf_counter() - started
    saved = saved_for_backward_mb(loss)
    print(json.dumps({"peak_mb": peak, "saved_mb": saved, "seconds": seconds,
                      "import_peak_above_baseline_mb": max_before - before}))


def relation_cases(args, device: torch.device) -> list[RelationCase]:
    """Plain, fused; then the fused one at each `--chunk-mb` budget (CUDA: time against memory),
    with each `--head-align`, and with `--compile` its compiled chunks (CUDA)."""
    cuda = device.type == "cuda"
    return ([RelationCase(False), RelationCase(True)]
            + [RelationCase(True, budget=mb * 2**20) for mb in (args.chunk_mb if cuda else [])]
            + [RelationCase(True, align=align) for align in args.head_align if align > 1]
            + ([RelationCase(True, compiled=True)] if args.compile and cuda else []))


def bench_relation_memory(args, device: torch.device) -> list[Row]:
    """The relation head + loss variants of `relation_cases` at N = 196: time and peak memory of
    forward + backward (CUDA allocator; on the CPU peak RSS growth of a fresh process each)."""
    b, n, dim = args.memory_batch, 196, args.memory_dim
    config = f"B={b}, N={n}, width {dim}"
    rows = []
    for case in relation_cases(args, device):
        name = case.name(b, n, dim)
        if device.type == "cuda":
            run, loss = relation_head_loss(case, b, n, dim, device)
            run()
            sync(device)
            base = torch.cuda.memory_allocated(device)
            reset_peak(device)
            seconds = timed(run, 3, device, warmup=0)
            peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
            saved = saved_for_backward_mb(loss)
        else:
            probe = json.dumps({**case.__dict__, "batch": b, "n": n, "dim": dim})
            cmd = [sys.executable, __file__, "--probe-memory", probe]
            result = json.loads(subprocess.run(cmd, check=True, capture_output=True,
                                               text=True).stdout.strip().splitlines()[-1])
            peak, saved, seconds = result["peak_mb"], result["saved_mb"], result["seconds"]
            run = None
        rows.append(Row(f"relation head + loss fwd/bwd: {name}", config, b / seconds,
                        1000 * seconds, peak_mb=peak, extra={"saved_mb": saved}))
        if case.fused:
            rows[-1].ratio = (f"{seconds * 1000 / rows[0].ms_per_step:.2f}×, "
                              f"mem {rows[-1].peak_mb / rows[0].peak_mb:.2f}×")
        if args.profile:
            run = run or relation_head_loss(case, b, n, dim, device)[0]
            profile_steps(run, 3, device, args.profile / f"relation-{slug(name)}",
                          f"relation head + loss: {name}, {config}")
    return rows


# --------------------------------------------------------------------------- report


def projection(rows: list[Row], images: int = 50_000, epochs: int = 100,
               seeds: int = 3) -> dict[str, float] | None:
    """Hours of one Table 1 CIFAR-10 row from the 32 px step rows (training steps only): the
    paper tier's pretrain, finetune and supervised runs; the † same-epochs supervised run (200
    epochs, not in the paper tier) apart, outside `one_seed`."""
    def speed(mode: str) -> float | None:
        best = [r.images_per_s for r in rows if r.stage.startswith("train step")
                and r.extra.get("size") == 32 and r.extra.get("mode") == mode
                and r.extra.get("with_batch") and r.images_per_s]
        return max(best) if best else None

    pre, sup = speed("pretrain"), speed("supervised")
    if not pre or not sup:
        return None
    hours = {"pretrain": epochs * images / pre / 3600,
             "finetune": epochs * images / sup / 3600,
             "supervised": epochs * images / sup / 3600}
    hours["one_seed"] = sum(hours.values())
    hours[f"{seeds}_seeds"] = seeds * hours["one_seed"]
    hours["same_epochs_extra"] = 2 * epochs * images / sup / 3600  # †, where a tier runs it
    return hours


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
          "\npeak MB: CUDA allocator peak of the stage; on the CPU the activations saved for "
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="default: gpu on CUDA, else cpu")
    parser.add_argument("--only", nargs="+", choices=["decode", "device-decode", "augment",
                                                      "ssl", "steps", "loop", "memory"],
                        help="stages to run (default: all)")
    parser.add_argument("--sizes", nargs="+", type=int, choices=[32, 224])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (decode)")
    parser.add_argument("--decode-resized", type=int, metavar="S",
                        help="decode: also the copies resized to shorter side S "
                             "(relvit resize-images)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--compile-mode", choices=typing.get_args(CompileMode),
                        help="steps and loop with --compile: this torch.compile mode for the "
                             "model (run config key `compile_mode`; reduce-overhead: CUDA "
                             "graphs); default torch's default")
    parser.add_argument("--compile-step", action="store_true",
                        help="steps and loop with --compile: the step from its draws to its "
                             "loss (batch build, model, losses) compiled as one region (run "
                             "config key `compile_step`)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--cpu-autocast", action="store_true",
                        help="train steps on the CPU under bf16 autocast, as on CUDA: their ops "
                             "and MiB as a GPU step's (slow; for counting, not timing)")
    parser.add_argument("--dense-jitter", action="store_true",
                        help="the SSL inputs and '+ batch' steps with the dense jitter (CUDA's "
                             "path) on any device: their ops and MiB as a GPU's")
    parser.add_argument("--peak-tflops", type=float, help="MFU denominator (CUDA default: H100)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=1,
                        help="steps: time each case in this many windows, the cases interleaved "
                             "(A B C, A B C, ...): its ms/step the median of its rounds, its "
                             "ratio the median (min-max) of the rounds' paired ratios; the "
                             "cases stay built between rounds, each case's peak memory measured "
                             "above what was allocated before it was built")
    parser.add_argument("--memory-batch", type=int, default=256)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--chunk-mb", nargs="+", type=int, default=[64, 1024],
                        help="memory stage on CUDA: also the fused relation loss with chunks of "
                             "these many MiB of float32 scores (1024: batch 256 at N = 196 in "
                             "one chunk)")
    parser.add_argument("--head-align", nargs="+", type=int, default=[8],
                        help="memory stage: also the fused relation loss with the head width "
                             "zero-padded to a multiple of each (16-byte rows of bf16 for tensor "
                             "cores: ViT-S's 42 to 48)")
    parser.add_argument("--sync-debug", action="store_true",
                        help="count host syncs per step (torch.cuda.set_sync_debug_mode) in the "
                             "timed SSL inputs, train steps and train loop; on the CPU accepted, "
                             "reports nothing")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="torch.profiler of 3 steps per train step case (one epoch per train "
                             "loop), untimed: DIR/<size>px-<case>.txt (top ops) and .json "
                             "(chrome trace); 3 calls per memory stage case: "
                             "DIR/relation-<case>.*")
    for key, value in PRESETS["cpu"].items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(value))
    parser.add_argument("--markdown-from", nargs="+", type=Path, metavar="JSON",
                        help="print the rows of these --json files as Markdown tables and exit")
    parser.add_argument("--probe-memory", metavar="JSON", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, not {args.rounds}")
    if args.markdown_from:
        print(markdown_from_json(args.markdown_from), end="")
        return
    if args.probe_memory:
        torch.set_num_threads(args.threads)
        probe_memory(args.probe_memory)
        return
    device = torch.device(args.device)
    preset = PRESETS[args.preset or ("gpu" if device.type == "cuda" else "cpu")]
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    torch.set_num_threads(args.threads)  # TF32 left as training leaves it (off)
    sections = {"decode": bench_decode, "device-decode": bench_device_decode,
                "augment": bench_augment, "ssl": bench_ssl_inputs,
                "steps": bench_steps, "loop": bench_loop, "memory": bench_relation_memory}
    rows: list[Row] = []
    timings = {}

    def dump(hours: dict[str, float] | None = None) -> None:
        """Write the JSON (after every stage too, so that a run cut by a time cap leaves one)."""
        if args.json:
            args.json.write_text(json.dumps({
                "device": device_name(device), "torch": torch.__version__,
                "args": {k: str(v) for k, v in vars(args).items()}, "section_seconds": timings,
                "projection_hours": hours, "rows": [r.__dict__ for r in rows],
            }, indent=2) + "\n")

    for name, fn in sections.items():
        if args.only and name not in args.only:
            continue
        started = time.perf_counter()
        with dense_jitter(args.dense_jitter):
            rows += fn(args, device)
        timings[name] = time.perf_counter() - started
        print(f"[{name}: {timings[name]:.1f} s]", file=sys.stderr, flush=True)
        compare_loop(rows)
        dump()
    print_table(rows, device, args.sync_debug and device.type == "cuda")
    if args.rounds > 1 and any(r.stage.startswith("train step") for r in rows):
        print(f"Train steps: ms/step the median of {args.rounds} interleaved rounds; ratio the "
              "median (min–max) of the rounds' paired ratios.")
    hours = projection(rows)
    for line in workers_to_feed(rows):
        print(line)
    if hours:
        print("Projected Table 1 CIFAR-10 row (50k images, 100 epochs each; training steps only, "
              "no evaluation): " + ", ".join(f"{k} {v:.2f} h" for k, v in hours.items()))
    dump(hours)


if __name__ == "__main__":
    main()
