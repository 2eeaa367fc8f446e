"""`compile_static`: the full training batches keep their own graph after the epoch's last,
shorter batch (torch.compile's default would serve them with a dynamic-shape graph from then on).
A counting backend stands in for inductor: what is checked is which graph serves which call."""

from __future__ import annotations

import functools
import typing

import pytest
import torch
import torch._dynamo
import torch._inductor

from fixtures.tracing import RecordingBackend

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


def test_a_compiled_variant_is_its_plain_function_inside_a_traced_region():
    """A function with a compiled twin (the jitter, the loss chunks) called inside a larger
    compiled region (`compile_step`) is traced there as it is, not compiled on its own."""
    from relvit.compiled import compiled_variant

    choose = compiled_variant(torch.sin)
    chosen = []

    def region(x: torch.Tensor) -> torch.Tensor:
        chosen.append(choose(True))
        return x + 1

    torch._dynamo.reset()
    compile_static(region, lambda gm, example_inputs: gm.forward)(torch.ones(2))
    torch._dynamo.reset()
    assert chosen == [torch.sin]
    assert choose(True) is not torch.sin and choose(False) is torch.sin


def test_compiled_twins_are_static_and_plain_while_tracing(monkeypatch):
    """The twin of `compiled_variant` is `compile_static`'s (full batches keep their graph);
    while dynamo traces, the variant is the plain function and a `device_constant` is made
    afresh. (Dynamo today also unwraps a nested torch.compile and ignores an lru_cache, which
    hides both branches from the traced-region test above.)"""
    from relvit.compiled import compiled_variant, device_constant

    seen = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: seen.append(kw) or (lambda *a: fn(*a)))
    choose = compiled_variant(torch.cos)
    assert choose(True) is not torch.cos and choose(False) is torch.cos
    assert seen == [{"dynamic": False, "backend": "inductor", "mode": None}]
    made = []
    constant = device_constant(lambda n: made.append(n) or torch.arange(n))
    assert constant(3) is constant(3) and made == [3]
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert choose(True) is torch.cos
    assert constant(3) is not constant(3) and made == [3, 3, 3]


def _tiny_run(tiny_config, tmp_path, mode: str, **overrides):
    """A prepared Run of the tiny config with `compile_step` unless `overrides` say otherwise
    (nothing compiled on the CPU)."""
    from relvit.train.loop import Run

    run = Run(tiny_config(mode, **{"compile": True, "compile_step": True, **overrides}),
              tmp_path / mode, progress=False)
    run.prepare()
    return run


def _compile_counting_graph_calls(run, monkeypatch) -> list[list[int]]:
    """`run.compile_training()` with a counting backend for inductor: the calls of each graph
    it compiles, as they happen."""
    from relvit.train import loop

    graphs: list[list[int]] = []

    def counting_backend(gm: torch.fx.GraphModule, example_inputs: list):
        graphs.append([0])
        record = graphs[-1]

        def run(*args):
            record[0] += 1
            return gm.forward(*args)
        return run

    monkeypatch.setattr(loop, "compile_static",
                        functools.partial(compile_static, backend=counting_backend))
    torch._dynamo.reset()
    run.compile_training()
    return graphs


def _graph_calls_in_two_epochs(run, monkeypatch) -> list[int]:
    """Calls of each graph that `run.compile_training()` compiles in two training epochs, whose
    last batches are shorter than the others."""
    graphs = _compile_counting_graph_calls(run, monkeypatch)
    steps = run.steps_per_epoch()
    assert run.train_size() % run.cfg.optim.batch_size  # an epoch has a shorter last batch
    for epoch in range(2):
        run._train_epoch(epoch, steps, 2 * steps)
    torch._dynamo.reset()
    return [calls for calls, in graphs]


@pytest.mark.parametrize("mode", ["supervised", "pretrain"])
def test_compile_step_traces_build_model_and_losses_as_one_graph(tmp_path, tiny_config,
                                                                 monkeypatch, mode):
    """`compile_step`: the batch's build (pretrain: the dense jitter and the permutation; the
    normalisation), the model and the losses (targets, the fused relation loss's autograd
    Function with its backward, the position loss) are one graph, with no graph break, that
    serves every full batch of two training epochs; each epoch's last, shorter batch runs
    eagerly instead of compiling a graph of its own. The model is not compiled on its own
    besides."""
    run = _tiny_run(tiny_config, tmp_path, mode)
    steps = run.steps_per_epoch()
    assert _graph_calls_in_two_epochs(run, monkeypatch) == [2 * (steps - 1)]
    assert run.train_model is run.model


@pytest.mark.parametrize("mode", ["supervised", "pretrain"])
def test_a_compiled_model_serves_the_full_batches_only(tmp_path, tiny_config, monkeypatch,
                                                       mode):
    """`compile: true` without `compile_step`: the compiled model's one graph serves every
    full batch of two epochs, and each epoch's last, shorter batch takes the model uncompiled
    and the plain jitter and loss chunks (on CUDA the full batches take their compiled twins)."""
    run = _tiny_run(tiny_config, tmp_path, mode, compile_step=False)
    twins, step_losses = [], run.objective.step_losses

    def spy(*args, **kwargs):
        twins.append(run.objective._compiled_on(torch.device("cuda")))
        return step_losses(*args, **kwargs)

    monkeypatch.setattr(run.objective, "step_losses", spy)
    steps = run.steps_per_epoch()
    assert _graph_calls_in_two_epochs(run, monkeypatch) == [2 * (steps - 1)]
    assert twins == 2 * ([True] * (steps - 1) + [False])
    assert run.train_model is not run.model and run.eager_train_model is run.model


@pytest.mark.parametrize("mode", ["supervised", "pretrain"])
def test_compile_step_evaluates_the_full_batches_as_one_graph(tmp_path, tiny_config,
                                                              monkeypatch, mode):
    """With `compile_step` evaluation is a region too (the model in eval mode, no gradients):
    one graph serves every full evaluation batch of two evaluations, and the split's last,
    shorter batch runs eagerly; the training step's region is not called."""
    run = _tiny_run(tiny_config, tmp_path, mode)
    graphs = _compile_counting_graph_calls(run, monkeypatch)
    size, batch = len(next(iter(run.splits.evals.values())).labels), run.eval_batch_size()
    assert len(run.splits.evals) == 1 and size % batch  # a shorter last batch
    rows = [run.evaluation(epoch) for epoch in range(2)]
    torch._dynamo.reset()
    assert [calls for calls, in graphs] == [2 * (size // batch)]
    assert rows[0] == rows[1] and rows[0]["val_loss"] > 0


@pytest.mark.filterwarnings("ignore:.torch._prims_common.check. is deprecated:FutureWarning")
def test_the_evaluation_region_gives_the_eager_losses(tmp_path, tiny_config):
    """The evaluation region compiled by inductor gives the eager call's losses and accuracies,
    to float rounding, for a pretrain evaluation batch."""
    run = _tiny_run(tiny_config, tmp_path, "pretrain")
    split = next(iter(run.splits.evals.values()))
    images, labels = split.images[:32], split.labels[:32]
    drawn = run.objective.draw(run._images(images), labels, False, run.generator(0, 3))
    run.model.eval()
    torch._dynamo.reset()
    with torch.no_grad():
        eager = run._eval_losses(drawn)[1]
        compiled = compile_static(run._eval_losses)(drawn)[1]
    torch._dynamo.reset()
    assert {"loss_rel", "acc_rel", "loss_pos", "acc_pos"} <= eager.keys() == compiled.keys()
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)


def test_a_plain_objective_takes_no_compiled_twin(tiny_config):
    """Within `Objective.plain()` (an epoch's last batch) the jitter and the loss chunks take
    their plain versions, which `compile: true` otherwise swaps for compiled twins on CUDA."""
    from relvit.data.registry import get_dataset
    from relvit.geometry import run_geometry
    from relvit.train.objective import Objective

    cfg = tiny_config("pretrain", compile=True)
    objective = Objective(cfg, get_dataset(cfg.data.name), run_geometry(cfg), (0.5,), (0.5,))
    cuda = torch.device("cuda")
    assert objective._compiled_on(cuda) and not objective._compiled_on(torch.device("cpu"))
    with objective.plain():
        assert not objective._compiled_on(cuda)
    assert objective._compiled_on(cuda)


def assert_region_matches_eager(step_losses, model: torch.nn.Module, drawn) -> None:
    """`step_losses(drawn)` compiled by inductor as one region gives the eager call's losses,
    accuracies and weight gradients, to float rounding (the patch embedding's gradient among
    them: it sees the built images)."""
    torch._dynamo.reset()
    results = []
    for step in (step_losses, compile_static(step_losses)):
        model.zero_grad(set_to_none=True)
        loss, stats = step(drawn)
        loss.backward()
        results.append((stats, {n: p.grad for n, p in model.named_parameters()
                                if p.grad is not None}))
    torch._dynamo.reset()
    (eager_stats, eager_grads), (stats, grads) = results
    assert stats.keys() == eager_stats.keys() and {"loss_rel", "acc_pos"} <= stats.keys()
    torch.testing.assert_close(stats, eager_stats, rtol=1e-5, atol=1e-6)
    assert grads.keys() == eager_grads.keys() and "backbone.vit.patch_embed.proj.weight" in grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, eager_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_compile_step_gives_the_eager_losses_and_gradients(tmp_path, tiny_config):
    """The region compiled by inductor: the same pretrain losses, accuracies and weight
    gradients as eager (whose jitter takes the CPU's sorted path), to float rounding, for one
    batch of the tiny run with jitter and shuffled patches."""
    run = _tiny_run(tiny_config, tmp_path, "pretrain", ssl={"shuffle": True})
    images, labels = next(iter(run.train_batches(0)))
    drawn = run.objective.draw(run._images(images), labels, True, run.generator(0, 2))
    assert drawn.draws.jitter is not None and drawn.draws.perm is not None
    assert_region_matches_eager(run._step_losses, run.model, drawn)


def test_compile_step_under_ddp_compiles_the_model_only(tmp_path, tiny_config, monkeypatch,
                                                        caplog):
    """Under DistributedDataParallel (never tried with the step in one region) a run compiles
    its model as without `compile_step`, and says so."""
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled.append(fn) or fn)
    run = _tiny_run(tiny_config, tmp_path, "pretrain")
    run.world = 2
    with caplog.at_level("WARNING", logger="relvit"):
        run.compile_training()
    assert compiled == [run.model] and run.step_losses == run._step_losses
    assert run.eval_losses == run._eval_losses
    assert "only the model is compiled" in caplog.text
    run.world = 1
    run.compile_training()
    assert compiled[-2:] == [run._step_losses, run._eval_losses]


def _cifar_pretrain_step():
    """(objective, model, drawn batch) of a tiny three-channel pretrain step with jitter and
    shuffled patches (CIFAR-10's geometry, random images; compile_step on)."""
    from relvit.config import config_from_dict
    from relvit.data.registry import get_dataset
    from relvit.geometry import run_geometry
    from relvit.train.loop import build_model
    from relvit.train.objective import Objective

    cfg = config_from_dict({"mode": "pretrain", "device": "cpu", "compile": True,
                            "compile_step": True, "data": {"name": "cifar10"},
                            "model": {"embed_dim": 36, "depth": 1, "num_heads": 3},
                            "ssl": {"shuffle": True}})
    spec, geo = get_dataset("cifar10"), run_geometry(cfg)
    objective = Objective(cfg, spec, geo, *spec.stats)
    gen = torch.Generator().manual_seed(0)
    drawn = objective.draw(torch.rand(4, 3, 32, 32, generator=gen), torch.tensor([1, 7, 0, 3]),
                           True, gen)
    assert drawn.draws.jitter is not None and drawn.draws.perm is not None
    torch.manual_seed(0)
    return objective, build_model(cfg, geo, spec.num_classes), drawn


def test_compile_step_of_three_channels_gives_the_eager_losses_and_gradients():
    """The same with the dense jitter's hue and saturation (three channels)."""
    objective, model, drawn = _cifar_pretrain_step()
    assert_region_matches_eager(functools.partial(objective.step_losses, model, autocast=False),
                                model, drawn)


def test_compile_step_makes_every_tensor_of_its_region_on_the_batchs_device():
    """The region of a three-channel pretrain step (the dense jitter with hue, the permutation,
    the normalisation, the model, the targets and losses) traces as one graph in which every
    tensor lives on the batch's device, here the meta device standing in for CUDA: a constant
    made on the host (the normalisation's, the jitter's crop matrices, a target table) would be
    traced as a host-to-device copy, which keeps CUDA graphs off the whole region. The relation
    loss is the plain one: the fused loss's autograd Function switches autocast off, which the
    meta device has not (its tensors are made on its inputs' device)."""
    from relvit.train.objective import DrawnBatch

    objective, model, drawn = _cifar_pretrain_step()
    meta = torch.device("meta")
    drawn = DrawnBatch(drawn.images.to(meta), drawn.labels.to(meta), drawn.grid,
                       drawn.draws.to(meta))
    model = model.to(meta)
    model.relation_projections = False
    recorded = RecordingBackend()
    torch._dynamo.reset()
    step = compile_static(functools.partial(objective.step_losses, model, autocast=False),
                          recorded)
    loss, stats = step(drawn)
    torch._dynamo.reset()
    assert len(recorded.graphs) == 1 and recorded.devices == {meta}
    assert loss.device == meta and {"loss_rel", "loss_pos"} <= stats.keys()
