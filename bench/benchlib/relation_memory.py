"""The memory stage: the relation head + loss alone at N = 196, plain and fused."""

from __future__ import annotations

import json
import math
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from relvit.models import losses
from relvit.models.heads import PairwiseScoreHead
from relvit.ssl.targets import relation_targets

from benchlib.measure import (
    profile_steps, reset_peak, rss_mb, saved_for_backward_mb, slug, sync, timed,
)
from benchlib.table import Row

# the benchmark's command line, which runs a CPU probe in a fresh process (`probe_memory`)
SCRIPT = Path(__file__).resolve().parents[1] / "bench_relvit.py"


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
            cmd = [sys.executable, str(SCRIPT), "--probe-memory", probe,
                   "--threads", str(args.threads)]
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

