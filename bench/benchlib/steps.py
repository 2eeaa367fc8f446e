"""The train step stage: the supervised and pretrain steps of the project's objective, with and
without the batch construction, eager or compiled, timed in interleaved rounds."""

from __future__ import annotations

import contextlib
import functools
import statistics
import sys
import time
import unittest.mock
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch

from relvit.compiled import compile_static
from relvit.config import RunConfig, config_from_dict
from relvit.data.registry import get_dataset
from relvit.geometry import run_geometry
from relvit.ssl import pipeline
from relvit.train.loop import build_model
from relvit.train.objective import Objective

from benchlib.measure import (SyncCounter, allocated_mb, count_ops, cuda_peak_mb, eager_only,
                              eager_ops_outside_compiled, graphs_recorded_in_first_call,
                              profile_steps, reset_peak, saved_for_backward_mb, slug, sync, timed)
from benchlib.presets import CONFIGS
from benchlib.table import Row

H100_BF16_DENSE_TFLOPS = 989.4  # H100 SXM5, dense bf16 tensor-core peak (no sparsity)


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
            # the FLOP count's eager pass before the peak's reset: CUDA graphs reset it before
            # their first call records them, and it counted the eager pass in their peak
            flops = model_flops(fns.loss)
            graphs = graphs_recorded_in_first_call(args, case.compile)
            if graphs:
                reset_peak(device)
            started = time.perf_counter()
            fns.step()  # compile / first-call warm-up, timed separately
            sync(device)
            first = time.perf_counter() - started
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

