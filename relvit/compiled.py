"""torch.compile as the run-config key `compile` uses it, functions with an optional
torch.compile-d twin, and constant tensors that a compiled region makes in its graph."""

from __future__ import annotations

import functools
from typing import Callable, ParamSpec, TypeVar

import torch

Compilable = TypeVar("Compilable", bound=Callable)
Args = ParamSpec("Args")
# torch.compile modes that record CUDA graphs (run config `compile_mode`)
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def uses_cuda_graphs(mode: str | None) -> bool:
    """Whether torch.compile's `mode` records CUDA graphs of the compiled code."""
    return mode in CUDA_GRAPH_MODES


def compile_static(fn: Compilable, backend: str | Callable = "inductor",
                   mode: str | None = None) -> Compilable:
    """`fn` torch.compile-d with static shapes: one graph per input shape (training and
    evaluation run the last, shorter batch of a pass eagerly: `Run.eager_step_losses`, and
    `Objective.plain` in `Run.evaluate`). `mode`: torch.compile's (e.g.
    "reduce-overhead", CUDA graphs; the benchmark's `--compile-mode`), default its default.

    By default torch.compile recompiles a function with dynamic shapes once it sees a second
    shape, and that dynamic-shape graph then serves every later call, full batches included, for
    the rest of the run; a benchmark of steps with one batch size never sees it. Static shapes
    keep the full batches on their own graph (`tests/test_compiled.py`)."""
    return torch.compile(fn, dynamic=False, backend=backend, mode=mode)


def compiled_variant(fn: Callable) -> Callable[[bool], Callable]:
    """A chooser: `choose(False)` is `fn`, `choose(True)` its `compile_static` version, compiled
    on first use and kept. While torch.compile traces a larger region (`compile_step`), both
    are `fn`: the region compiles it with everything around it."""

    @functools.cache
    def compiled() -> Callable:
        return compile_static(fn)

    def choose(use_compiled: bool) -> Callable:
        return compiled() if use_compiled and not torch.compiler.is_compiling() else fn

    return choose


def device_constant(make: Callable[Args, torch.Tensor]) -> Callable[Args, torch.Tensor]:
    """`make(*args)`, a tensor that depends on its hashable arguments only and is made on the
    device they name with no host-side tensor, kept per arguments when eager. While torch.compile
    traces a region (`compile_step`), `make` runs afresh, so the graph makes the tensor on its
    device (inductor folds it into its use): a kept tensor, or one made on the host, would be
    traced as a host-to-device copy, which keeps CUDA graphs off the region."""
    kept = functools.lru_cache(maxsize=64)(make)

    @functools.wraps(make)
    def get(*args: Args.args, **kwargs: Args.kwargs) -> torch.Tensor:
        return make(*args, **kwargs) if torch.compiler.is_compiling() else kept(*args, **kwargs)

    return get
