"""Measuring tools: timing, host syncs, dispatched ops and their traffic, peak memory,
profiles."""

from __future__ import annotations

import contextlib
import gc
import os
import re
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from relvit.compiled import uses_cuda_graphs

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


def rss_mb() -> float:
    """This process's resident memory in MiB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


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
    """Whether a case's first calls record CUDA graphs (compile_mode reduce-overhead or
    max-autotune): their memory pool is allocated then and reused by every replay, so the
    case's peak is measured from before its first call (else the pool, the activations'
    memory, is missed)."""
    return compiled and uses_cuda_graphs(args.compile_mode)


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

