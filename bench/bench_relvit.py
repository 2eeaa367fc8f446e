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
per-sample transform of image-file datasets, and a pass of one image per worker with workers
started for it against a run's kept ones; after the table, the workers that would feed each
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
import json
import sys
import time
import typing
from pathlib import Path

import torch

from relvit.config import CompileMode

# benchlib/ beside this script (on sys.path when it runs)
from benchlib.inputs import bench_augment, bench_decode, bench_device_decode, bench_ssl_inputs
from benchlib.loop import bench_loop, compare_loop
from benchlib.presets import CONFIGS, PRESET_HELP, PRESETS
from benchlib.relation_memory import bench_relation_memory, probe_memory
from benchlib.steps import bench_steps, dense_jitter
from benchlib.table import (Row, device_name, markdown_from_json, print_table, projection,
                            projection_line, workers_to_feed)


SECTIONS = {"decode": bench_decode, "device-decode": bench_device_decode, "augment": bench_augment,
            "ssl": bench_ssl_inputs, "steps": bench_steps, "loop": bench_loop,
            "memory": bench_relation_memory}  # the stages, in the order they run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="default: gpu on CUDA, else cpu")
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS),
                        help="stages to run (default: all)")
    parser.add_argument("--sizes", nargs="+", type=int, choices=[size for _, size, _ in CONFIGS],
                        help="train steps and loop: these image sizes (default: all)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--workers", type=int, default=2,
                        help="DataLoader workers (decode; 0 decodes in the main process), and "
                             "the processes the SSL inputs' per-sample reference is credited "
                             "with (at least 1)")
    parser.add_argument("--decode-resized", type=int, metavar="S",
                        help="decode: also the copies resized to shorter side S "
                             "(relvit resize-images)")
    parser.add_argument("--start-rounds", type=int, default=5, metavar="R",
                        help="decode: rounds of the pass with workers started for it against "
                             "kept ones (0: none)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--compile-mode", choices=typing.get_args(CompileMode),
                        help="steps and loop with --compile: this torch.compile mode for the "
                             "model (run config key `compile_mode`; reduce-overhead: CUDA "
                             "graphs); default torch's default")
    parser.add_argument("--compile-step", action="store_true",
                        help="steps and loop with --compile: the step from its draws to its "
                             "loss (batch build, model, losses) compiled as one region (run "
                             "config key `compile_step`)")
    parser.add_argument("--channels-last", action="store_true",
                        help="train steps and loop: model and images in channels-last memory")
    parser.add_argument("--cpu-autocast", action="store_true",
                        help="train steps on the CPU under bf16 autocast, as on CUDA: their ops "
                             "and MiB as a GPU step's (slow; for counting, not timing)")
    parser.add_argument("--dense-jitter", action="store_true",
                        help="the SSL inputs and '+ batch' steps with the dense jitter (CUDA's "
                             "path) on any device: their ops and MiB as a GPU's")
    parser.add_argument("--peak-tflops", type=float, help="MFU denominator (CUDA default: H100)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="device decode, augmentation and SSL inputs: timed calls per "
                             "case")
    parser.add_argument("--rounds", type=int, default=1,
                        help="steps: time each case in this many windows, the cases interleaved "
                             "(A B C, A B C, ...): its ms/step the median of its rounds, its "
                             "ratio the median (min-max) of the rounds' paired ratios; the "
                             "cases stay built between rounds, each case's peak memory measured "
                             "above what was allocated before it was built")
    parser.add_argument("--memory-batch", type=int, default=256,
                        help="memory stage: the batch (N = 196)")
    parser.add_argument("--json", type=Path, help="also write the rows here (see --markdown-from)")
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
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(value),
                            help=f"{PRESET_HELP[key]} (preset cpu {value}, gpu "
                                 f"{PRESETS['gpu'][key]})")
    parser.add_argument("--markdown-from", nargs="+", type=Path, metavar="JSON",
                        help="print the rows of these --json files as Markdown tables and exit")
    parser.add_argument("--probe-memory", metavar="JSON", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    least = {key: 1 for key in ("threads", "repeats", "rounds", "memory_batch", *PRESETS["cpu"])}
    # the other counts of 0 would divide by zero, or time nothing
    least.update(warmup=0, workers=0, start_rounds=0)
    for key, minimum in least.items():
        if getattr(args, key) is not None and getattr(args, key) < minimum:
            parser.error(f"--{key.replace('_', '-')} must be at least {minimum}, not "
                         f"{getattr(args, key)}")
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
    torch.set_num_threads(args.threads)  # TF32 left as training leaves it (off for matmuls)
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

    for name, fn in SECTIONS.items():
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
        print(projection_line(hours, "the 32 px \"+ batch\" steps"))
    dump(hours)


if __name__ == "__main__":
    main()
