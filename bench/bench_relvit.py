"""Throughput benchmark: the SSL input pipeline and the pretrain vs supervised training step.

Prints one table (stage, config, images/s or ms/step, ratio, peak memory); measures ratios within
one run because these machines are noisy. Asserts nothing.

    python bench/bench_relvit.py                    # defaults sized for a 2-core CPU
    python bench/bench_relvit.py --device cuda --batch 256 --steps 20

Input pipeline = per-patch jitter + patch permutation + SSL targets (relations, positions).
"batched" is relvit's tensor code on a whole batch; "per-sample reference" applies torchvision's
transforms patch by patch, one image at a time, as the original dataset code does (spec §2.1).
"""

from __future__ import annotations

import argparse
import resource
import time
from typing import Callable

import torch

from relvit.models.backbones import build_backbone
from relvit.models.relvit import RelViT, SSLTasks
from relvit.ssl.jitter import JitterConfig
from relvit.ssl.jitter_reference import reference_jitter_image
from relvit.ssl.patches import patchify, unpatchify
from relvit.ssl.pipeline import jitter_and_shuffle
from relvit.ssl.targets import position_targets, relation_targets

JITTER = JitterConfig()


def timed(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median wall time of `fn` in seconds (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def batched_pipeline(images: torch.Tensor, patch: int, gen: torch.Generator) -> tuple:
    """relvit: jitter + permutation + targets for a whole batch (what pretraining runs)."""
    grid = (images.shape[-2] // patch, images.shape[-1] // patch)
    out, perm = jitter_and_shuffle(images, patch, JITTER, True, gen)
    return out, relation_targets(*grid, perm), position_targets(grid[0] * grid[1], perm)


def reference_pipeline(images: torch.Tensor, patch: int, jitter_only: bool = False) -> list:
    """The original's way: one image at a time, torchvision transforms per patch."""
    grid = (images.shape[-2] // patch, images.shape[-1] // patch)
    n = grid[0] * grid[1]
    base = relation_targets(*grid)
    out = []
    for image in images:
        jittered = reference_jitter_image(image, patch, JITTER)
        if jitter_only:
            out.append(jittered)
            continue
        perm = torch.randperm(n)
        shuffled = unpatchify(patchify(jittered[None], patch)[:, perm], grid)
        out.append((shuffled, base[perm][:, perm], perm))
    return out


def bench_pipeline(args, device: torch.device) -> list[tuple]:
    rows = []
    for size, patch in ((32, 4), (224, 32)):
        images = torch.rand(args.pipeline_batch, 3, size, size, device=device)
        gen = torch.Generator(device=device).manual_seed(0)
        n_ref = min(args.reference_images, args.pipeline_batch)
        cpu_images = images[:n_ref].cpu()
        config = f"{size}x{size}, patch {patch}, N={(size // patch) ** 2}"
        cases = (
            ("jitter", lambda: jitter_and_shuffle(images, patch, JITTER, False, gen), True),
            ("jitter + permutation + targets", lambda: batched_pipeline(images, patch, gen),
             False),
        )
        for stage, batched, jitter_only in cases:
            fast = timed(batched, args.repeats, device)
            # The reference runs like a DataLoader worker: one thread. Credit it with perfect
            # scaling over as many workers as the batched code has threads (conservative ratio).
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            slow = timed(lambda: reference_pipeline(cpu_images, patch, jitter_only), 1,
                         torch.device("cpu"))
            torch.set_num_threads(threads)
            fast_ips, slow_ips = args.pipeline_batch / fast, threads * n_ref / slow
            rows.append((f"{stage}: per-sample reference ×{threads} workers", config,
                         f"{slow_ips:,.0f} img/s", "1.00×", ""))
            rows.append((f"{stage}: batched", config, f"{fast_ips:,.0f} img/s",
                         f"{fast_ips / slow_ips:,.1f}×", f"{peak_mb(device):,.0f}"))
    return rows


def bench_steps(args, device: torch.device) -> list[tuple]:
    """One optimisation step of ViT-S/4 at 32x32: supervised vs pretrain (relations + positions)."""
    from relvit.models import losses

    rows = []
    times = {}
    images = torch.rand(args.batch, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (args.batch,), device=device)
    for mode in ("supervised", "pretrain"):
        torch.manual_seed(0)
        ssl = mode == "pretrain"
        backbone = build_backbone("vit_small", img_size=32, patch_size=4, pos_embed=not ssl,
                                  depth=args.depth)
        model = RelViT(backbone, None if ssl else 10,
                       SSLTasks(relations=ssl, positions=ssl), num_positions=64).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
        rel_t, pos_t = relation_targets(8, 8).to(device), position_targets(64).to(device)

        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                out = model(images)
            if ssl:
                loss = losses.relation_loss(out["relations"], rel_t) + \
                    losses.token_classification_loss(out["positions"], pos_t)
            else:
                loss = torch.nn.functional.cross_entropy(out["logits"].float(), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times[mode] = timed(step, args.steps, device)
        memory = f"{peak_mb(device):,.0f}"
        ratio = times[mode] / times["supervised"]
        config = f"ViT-S/4 (depth {args.depth}), 32x32, batch {args.batch}"
        rows.append((f"train step, {mode}", config, f"{1000 * times[mode]:,.1f} ms/step",
                     f"{ratio:.2f}×", memory))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pipeline-batch", type=int, default=256)
    parser.add_argument("--reference-images", type=int, default=16,
                        help="images timed through the slow per-sample reference")
    parser.add_argument("--batch", type=int, default=32, help="training-step batch")
    parser.add_argument("--depth", type=int, default=12, help="ViT-S depth (12 = the paper's)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = bench_pipeline(args, device) + bench_steps(args, device)
    header = ("stage", "config", "throughput", "ratio", "peak MB")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} threads"
    print(f"relvit benchmark on {name}, torch {torch.__version__}")
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
    print("ratios: input rows vs the per-sample reference; step rows vs the supervised step. "
          "peak MB: CUDA allocator peak, or process max RSS on CPU (cumulative).")


if __name__ == "__main__":
    main()
