"""`compile_static`: the full training batches keep their own graph after the epoch's last,
shorter batch (torch.compile's default would serve them with a dynamic-shape graph from then on).
A counting backend stands in for inductor: what is checked is which graph serves which call."""

from __future__ import annotations

import typing

import torch
import torch._dynamo
import torch._inductor

from relvit.compiled import compile_static, uses_cuda_graphs
from relvit.config import CompileMode


def graph_calls(compile_fn) -> list[tuple[int, int]]:
    """(batch size the graph was compiled for, its calls) per graph, for two epochs of batch
    sizes 8, 8, 3."""
    torch._dynamo.reset()
    graphs: list[list[int]] = []

    def counting_backend(gm: torch.fx.GraphModule, example_inputs: list):
        batch = next(int(t.shape[0]) for t in example_inputs  # the input, not a weight
                     if isinstance(t, torch.Tensor) and not isinstance(t, torch.nn.Parameter)
                     and t.dim() == 2 and t.shape[1] == 16)
        graphs.append([batch, 0])
        record = graphs[-1]

        def run(*args):
            record[1] += 1
            return gm.forward(*args)
        return run

    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4))
    compiled = compile_fn(model, counting_backend)
    for size in (8, 8, 3, 8, 8, 3):
        compiled(torch.randn(size, 16))
    torch._dynamo.reset()
    return [tuple(g) for g in graphs]


def test_full_batches_keep_their_static_graph():
    assert graph_calls(compile_static) == [(8, 4), (3, 2)]


def test_compile_static_passes_a_mode_on(monkeypatch):
    """The benchmark's `--compile-mode` (e.g. CUDA graphs) reaches torch.compile, static shapes
    kept; no mode is torch's default."""
    seen = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: seen.append(kw) or fn)
    compile_static(abs, mode="reduce-overhead")
    compile_static(abs)
    assert seen == [{"dynamic": False, "backend": "inductor", "mode": "reduce-overhead"},
                    {"dynamic": False, "backend": "inductor", "mode": None}]


def test_what_torch_compile_does_by_default():
    """The reason for `compile_static`: after the first short batch, the dynamic-shape graph
    serves every call, full batches included (if torch changes this, revisit compile_static)."""
    calls = graph_calls(lambda model, backend: torch.compile(model, backend=backend))
    assert calls[0] == (8, 2) and calls[1][1] == 4


def test_the_dense_jitter_compiles_once_for_every_draw():
    """One graph, without a break, on the channel-planar patches that `apply_jitter` passes (an
    `out=` tensor that is not contiguous once broke the graph), and fresh draws each batch reuse
    it: no guard depends on the draws or on state the first call leaves behind (a cache filled on
    the first call once made torch.compile trace it a second time)."""
    from relvit.ssl.jitter import JitterConfig, _jitter_dense, sample_jitter_params

    torch._dynamo.reset()
    graphs = []

    def counting_backend(gm: torch.fx.GraphModule, example_inputs: list):
        graphs.append(gm)
        return gm.forward

    jitter = compile_static(_jitter_dense, counting_backend)
    gen = torch.Generator().manual_seed(0)
    patches = torch.rand(3, 12, 8, 8, generator=gen).transpose(0, 1)  # as apply_jitter's
    for _ in range(3):
        params = sample_jitter_params(12, 8, JitterConfig(), gen)
        factors = torch.stack((params.brightness, params.contrast, params.saturation, params.hue))
        jitter(patches, params, factors, [True] * 4)
    torch._dynamo.reset()
    assert len(graphs) == 1


def test_runs_compile_their_model_in_the_configured_mode(tiny_config, monkeypatch):
    """Run config key `compile_mode` reaches torch.compile in classification (static shapes)
    and detection runs (automatic dynamic shapes)."""
    from types import SimpleNamespace

    from relvit.detection.train import DetectionRun
    from relvit.train.loop import Run

    seen = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: seen.append(kw) or fn)
    cfg = tiny_config("supervised", compile=True, compile_mode="reduce-overhead")
    Run.compile_model(SimpleNamespace(cfg=cfg), torch.nn.Identity())
    DetectionRun.compile_model(SimpleNamespace(cfg=cfg), torch.nn.Identity())
    assert seen == [{"dynamic": False, "backend": "inductor", "mode": "reduce-overhead"},
                    {"mode": "reduce-overhead"}]


def test_the_modes_said_to_record_cuda_graphs_are_torchs():
    """`uses_cuda_graphs` (the Run's warning for CUDA graphs under DDP) agrees with inductor's
    own options of every `compile_mode`."""
    for mode in typing.get_args(CompileMode):
        options = torch._inductor.list_mode_options(mode)
        assert uses_cuda_graphs(mode) == options.get("triton.cudagraphs", False), mode
