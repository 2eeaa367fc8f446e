"""Throughput benchmark: input pipeline stages and the pretrain vs supervised training step.

Prints one table (stage, config, images/s, ms/step, ratio, peak memory, MFU) and optionally writes
it as JSON; measures ratios within one run because these machines are noisy. Asserts nothing.

    python bench/bench_relvit.py                       # CPU preset: tiny widths, about 2 minutes
    python bench/bench_relvit.py --device cuda         # GPU preset: ViT-S (depth 12), batch 256
    python bench/bench_relvit.py --device cuda --compile --only steps --json out.json

Stages: "decode" (JPEG files through DataLoader workers, the per-sample transform of image-file
datasets), "augment" (batched pad-crop + flip at 32 px; uint8 -> float + normalise at 224 px),
"SSL inputs" (per-patch jitter + permutation + targets, batched, and the per-sample torchvision
reference the original runs), "train step" (forward, loss, backward, clipping, AdamW; bf16 autocast
and fused AdamW on CUDA) of the supervised and the pretrain objective, the latter with the plain
relation loss (the [B, 9, N, N] scores) and the fused one; "+ batch" rows add the batch
construction of `relvit.train.objective` (augmentation, jitter, targets) on the same device.
"relation head + loss" rows measure the memory of the relation head and loss alone at N = 196.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from relvit.config import RunConfig, config_from_dict
from relvit.data.augment import normalize, random_crop, random_hflip
from relvit.data.loading import FileSplit, batches, file_transform, to_float_images
from relvit.data.registry import get_dataset
from relvit.geometry import run_geometry
from relvit.models import losses
from relvit.models.heads import PairwiseScoreHead
from relvit.ssl.jitter import JitterConfig
from relvit.ssl.jitter_reference import reference_jitter_image
from relvit.ssl.patches import patchify, unpatchify
from relvit.ssl.pipeline import jitter_and_shuffle
from relvit.ssl.targets import position_targets, relation_targets
from relvit.train.loop import build_model
from relvit.train.objective import Objective

JITTER = JitterConfig()
H100_BF16_DENSE_TFLOPS = 989.4  # H100 SXM5, dense bf16 tensor-core peak (no sparsity)
# (dataset of the registry, image side, ViT patch): CIFAR-10 ViT-S/4 and ImageNet-style ViT-S/16
CONFIGS = (("cifar10", 32, 4), ("imagenet100", 224, 16))
PRESETS = {  # CPU: sized for 2 cores; GPU: the paper's ViT-S and batch
    "cpu": dict(batch=16, embed_dim=96, depth=2, num_heads=3, steps=3, warmup=1,
                pipeline_batch=64, decode_images=128, reference_images=4, memory_dim=36),
    "gpu": dict(batch=256, embed_dim=384, depth=12, num_heads=6, steps=20, warmup=3,
                pipeline_batch=256, decode_images=1024, reference_images=8, memory_dim=384),
}


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

    def cells(self) -> tuple[str, ...]:
        def fmt(v, spec):
            return "" if v is None else format(v, spec)
        return (self.stage, self.config, fmt(self.images_per_s, ",.0f"),
                fmt(self.ms_per_step, ",.1f"), self.ratio, fmt(self.peak_mb, ",.0f"),
                "" if self.mfu is None else f"{100 * self.mfu:.1f} %")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], repeats: int, device: torch.device, warmup: int = 1) -> float:
    """Mean wall time of `fn` in seconds over `repeats` calls, after `warmup` calls; the device is
    synchronised only around the timed calls, so host and device work overlap as in training."""
    for _ in range(warmup):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - start) / repeats


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


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


def bench_decode(args, device: torch.device) -> list[Row]:
    """JPEGs (256 px, ImageNet-like) -> RandomResizedCrop(224) + flip -> uint8, in workers."""
    from PIL import Image

    spec = get_dataset("imagenet100")
    n = args.decode_images
    with tempfile.TemporaryDirectory() as tmp:
        gen = torch.Generator().manual_seed(0)
        base = (torch.rand(8, 3, 256, 256, generator=gen) * 255).to(torch.uint8)
        paths = []
        for i in range(n):  # a few distinct images, saved as many files (decoding is the cost)
            path = Path(tmp) / f"{i:05d}.jpg"
            Image.fromarray(base[i % 8].permute(1, 2, 0).numpy()).save(path, quality=90)
            paths.append(path)
        split = FileSplit(paths, torch.zeros(n, dtype=torch.long))
        transform = file_transform(spec, 224, train=True)

        def epoch() -> None:
            for images, _ in batches(split, torch.arange(n), args.pipeline_batch, transform,
                                     args.workers, pin_memory=device.type == "cuda"):
                images.to(device, non_blocking=True)

        seconds = timed(epoch, 1, device, warmup=0)
    return [Row(f"decode: JPEG 256 px, {args.workers} workers", "224x224 RandomResizedCrop",
                n / seconds)]


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
        fast = args.pipeline_batch / timed(lambda: batched_pipeline(images, patch, gen),
                                           args.repeats, device)
        rows.append(Row("SSL inputs: jitter + permutation + targets, batched", config, fast,
                        peak_mb=cuda_peak_mb(device)))
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
        "data": {"name": dataset, "image_size": size},
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
    with_batch: bool = False  # include Objective.batch (augmentation, jitter, targets)
    compile: bool = False


def make_step(case: StepCase, dataset: str, size: int, patch: int, args,
              device: torch.device) -> tuple[Callable[..., torch.Tensor], Callable[[], None]]:
    """(loss_fn, step_fn): the forward + loss of one batch (`loss_fn(eager=True)` bypasses
    torch.compile, for counting FLOPs), and a whole optimisation step."""
    cfg = run_config(case.mode, dataset, size, patch, args, case.compile)
    spec, geo = get_dataset(dataset), run_geometry(cfg)
    objective = Objective(cfg, spec, geo, spec.stats[0], spec.stats[1])
    torch.manual_seed(0)
    model = build_model(cfg, geo, spec.num_classes).to(device)
    model.relation_projections = case.fused
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    forward = torch.compile(model) if case.compile else model
    gen = torch.Generator(device=device).manual_seed(0)
    images = torch.rand(args.batch, 3, size, size, device=device)
    labels = torch.randint(0, spec.num_classes, (args.batch,), device=device)
    fixed = objective.batch(images, labels, True, gen)

    def loss_fn(eager: bool = False) -> torch.Tensor:
        batch = objective.batch(images, labels, True, gen) if case.with_batch else fixed
        x = batch.images
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = model(x) if eager else forward(x)
        return objective.losses(out, batch)[0]

    def step() -> None:
        loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return loss_fn, step


def model_flops(loss_fn: Callable[..., torch.Tensor]) -> float:
    """FLOPs of one eager forward + backward (matmuls, convolutions, attention), counted by
    torch's FlopCounterMode (elementwise ops, the jitter's colour ops and AdamW not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        loss_fn(eager=True).backward()
    return float(counter.get_total_flops())


def bench_steps(args, device: torch.device) -> list[Row]:
    cases = [StepCase("supervised", "supervised"),
             StepCase("pretrain, plain relation loss", "pretrain", fused=False),
             StepCase("pretrain, fused relation loss", "pretrain"),
             StepCase("supervised + batch", "supervised", with_batch=True),
             StepCase("pretrain, fused + batch (jitter)", "pretrain", with_batch=True)]
    if args.compile:
        cases = [StepCase("supervised, compiled", "supervised", compile=True),
                 StepCase("pretrain, fused, compiled", "pretrain", compile=True),
                 StepCase("pretrain, fused + batch, compiled", "pretrain", with_batch=True,
                          compile=True)]
    peak_tflops = args.peak_tflops or (H100_BF16_DENSE_TFLOPS if device.type == "cuda" else 0)
    rows = []
    for dataset, size, patch in CONFIGS:
        if args.sizes and size not in args.sizes:
            continue
        config = (f"ViT-S/{patch} d{args.embed_dim}x{args.depth}, {size}px, N={(size // patch)**2},"
                  f" batch {args.batch}{', channels-last' if args.channels_last else ''}")
        base: dict[bool, Row] = {}
        for case in cases:
            loss_fn, step = make_step(case, dataset, size, patch, args, device)
            started = time.perf_counter()
            step()  # compile / first-call warm-up, timed separately
            sync(device)
            first = time.perf_counter() - started
            flops = model_flops(loss_fn)
            saved = None if device.type == "cuda" else saved_for_backward_mb(loss_fn)
            reset_peak(device)
            seconds = timed(step, args.steps, device, warmup=args.warmup)
            peak = cuda_peak_mb(device) if device.type == "cuda" else saved
            row = Row(f"train step: {case.name}", config, args.batch / seconds, 1000 * seconds,
                      peak_mb=peak, extra={"first_step_s": first, "flops": flops, "mode": case.mode,
                                           "with_batch": case.with_batch, "size": size})
            ref = base.setdefault(case.with_batch, row) if case.mode == "supervised" \
                else base.get(case.with_batch, base.get(False))
            if ref is not None:
                mem = f", mem {peak / ref.peak_mb:.2f}×" if peak and ref.peak_mb else ""
                row.ratio = f"{seconds * 1000 / ref.ms_per_step:.2f}×{mem}"
            rows.append(row)
            if peak_tflops:
                row.mfu = flops / seconds / (peak_tflops * 1e12)
            print(f"  {size}px {case.name}: {1000 * seconds:.1f} ms/step, first step {first:.1f} s",
                  file=sys.stderr, flush=True)  # survives a timeout
    return rows


# --------------------------------------------------------------------------- relation memory


def relation_head_loss(fused: bool, batch: int, n: int, dim: int, device: torch.device):
    """The relation head + loss + accuracies of a [batch, n, dim] token map: (fwd + bwd, loss)."""
    torch.manual_seed(0)
    head = PairwiseScoreHead(dim, 9).to(device)
    side = math.isqrt(n)
    tokens = torch.randn(batch, n, dim, device=device, requires_grad=True)
    target = relation_targets(side, side, device=device)

    def loss() -> torch.Tensor:  # with both accuracies, as the training objective
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            if fused:
                return losses.fused_relation_loss(head.project(tokens), target)[0]
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


def probe_memory(fused: bool, batch: int, n: int, dim: int) -> None:
    """In a fresh process: peak RSS growth of one CPU forward + backward, as JSON on stdout."""
    run, loss = relation_head_loss(fused, batch, n, dim, torch.device("cpu"))
    before = rss_mb()
    max_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    started = time.perf_counter()
    run()
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10 - before
    saved = saved_for_backward_mb(loss)
    print(json.dumps({"peak_mb": peak, "saved_mb": saved, "seconds": seconds,
                      "import_peak_above_baseline_mb": max_before - before}))


def bench_relation_memory(args, device: torch.device) -> list[Row]:
    b, n, dim = args.memory_batch, 196, args.memory_dim
    config = f"B={b}, N={n}, width {dim}"
    rows = []
    for fused in (False, True):
        name = "fused (chunked)" if fused else "plain ([B,9,N,N] scores)"
        if device.type == "cuda":
            run, loss = relation_head_loss(fused, b, n, dim, device)
            run()
            sync(device)
            base = torch.cuda.memory_allocated(device)
            reset_peak(device)
            seconds = timed(run, 3, device, warmup=0)
            peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
            saved = saved_for_backward_mb(loss)
        else:
            cmd = [sys.executable, __file__, "--probe-memory", str(int(fused)), str(b), str(n),
                   str(dim)]
            result = json.loads(subprocess.run(cmd, check=True, capture_output=True,
                                               text=True).stdout.strip().splitlines()[-1])
            peak, saved, seconds = result["peak_mb"], result["saved_mb"], result["seconds"]
        rows.append(Row(f"relation head + loss fwd/bwd: {name}", config, b / seconds,
                        1000 * seconds, peak_mb=peak, extra={"saved_mb": saved}))
    rows[1].ratio = f"mem {rows[1].peak_mb / rows[0].peak_mb:.2f}×"
    return rows


# --------------------------------------------------------------------------- report


def projection(rows: list[Row], images: int = 50_000, epochs: int = 100,
               seeds: int = 3) -> dict[str, float] | None:
    """Hours of one Table 1 CIFAR-10 row from the 32 px step rows (training steps only)."""
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
             "supervised": epochs * images / sup / 3600,
             "supervised_2x_epochs": 2 * epochs * images / sup / 3600}
    hours["one_seed"] = sum(hours.values())
    hours[f"{seeds}_seeds"] = seeds * hours["one_seed"]
    return hours


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({os.cpu_count()} cores), {torch.get_num_threads()} threads"


def print_table(rows: list[Row], device: torch.device) -> None:
    header = ("stage", "config", "images/s", "ms/step", "ratio", "peak MB", "MFU")
    cells = [header] + [r.cells() for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    print(f"relvit benchmark on {device_name(device)}, torch {torch.__version__}")
    for i, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print("ratio: train steps vs the supervised step of the same size (time, then peak memory); "
          "SSL inputs vs the per-sample reference.\npeak MB: CUDA allocator peak of the stage; on "
          "the CPU the activations saved for backward (train steps) or the process's peak RSS "
          "growth in a fresh process (relation head + loss).")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="default: gpu on CUDA, else cpu")
    parser.add_argument("--only", nargs="+", choices=["decode", "augment", "ssl", "steps",
                                                      "memory"])
    parser.add_argument("--sizes", nargs="+", type=int, choices=[32, 224])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (decode)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--peak-tflops", type=float, help="MFU denominator (CUDA default: H100)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory-batch", type=int, default=256)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    for key, value in PRESETS["cpu"].items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(value))
    parser.add_argument("--probe-memory", nargs=4, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe_memory:
        torch.set_num_threads(args.threads)
        probe_memory(bool(args.probe_memory[0]), *args.probe_memory[1:])
        return
    device = torch.device(args.device)
    preset = PRESETS[args.preset or ("gpu" if device.type == "cuda" else "cpu")]
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    sections = {"decode": bench_decode, "augment": bench_augment, "ssl": bench_ssl_inputs,
                "steps": bench_steps, "memory": bench_relation_memory}
    rows: list[Row] = []
    timings = {}
    for name, fn in sections.items():
        if args.only and name not in args.only:
            continue
        started = time.perf_counter()
        rows += fn(args, device)
        timings[name] = time.perf_counter() - started
        print(f"[{name}: {timings[name]:.1f} s]", file=sys.stderr, flush=True)
    print_table(rows, device)
    hours = projection(rows)
    if hours:
        print("Projected Table 1 CIFAR-10 row (50k images, 100 epochs each; training steps only, "
              "no evaluation): " + ", ".join(f"{k} {v:.2f} h" for k, v in hours.items()))
    if args.json:
        args.json.write_text(json.dumps({
            "device": device_name(device), "torch": torch.__version__,
            "args": {k: str(v) for k, v in vars(args).items()}, "section_seconds": timings,
            "projection_hours": hours, "rows": [r.__dict__ for r in rows],
        }, indent=2) + "\n")


if __name__ == "__main__":
    main()
