"""The benchmark's diagnostics on the CPU: the op counter, the train loop stage, --profile."""

from __future__ import annotations

import argparse
import functools
import gc
import io
import json
import types
import warnings
import weakref
from pathlib import Path

import pytest
import torch

from fixtures.bench import bench_script

# bench/ is put on sys.path by fixtures.bench
from benchlib import inputs, measure, relation_memory
from benchlib import table as bench_table
from benchlib import loop as loop_stage
from benchlib import steps as step_stage

TINY = ["--batch", "4", "--embed-dim", "36", "--depth", "1", "--num-heads", "3", "--steps", "1",
        "--warmup", "0", "--loop-batches", "2", "--sizes", "32", "--threads", "1"]


@pytest.fixture(scope="module")
def bench():
    """bench/bench_relvit.py as a module."""
    with bench_script("bench_relvit") as module:
        yield module


def _run(bench, argv: list[str]) -> None:
    """bench_relvit.main(argv), the torch threads put back after it."""
    threads = torch.get_num_threads()
    try:
        bench.main(argv)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def report(bench, tmp_path_factory):
    """One tiny run of the steps and loop stages with --profile and --json: (rows, profile dir)."""
    out = tmp_path_factory.mktemp("bench")
    _run(bench, ["--only", "steps", "loop", *TINY, "--sync-debug", "--profile",
                 str(out / "profile"), "--json", str(out / "bench.json")])
    return json.loads((out / "bench.json").read_text())["rows"], out / "profile"


def test_op_counter_counts_non_view_ops(bench):
    x = torch.ones(3)
    with measure.OpCounter() as ops:
        y = x + 1
        y.view(-1)
        y.t()
        torch.empty(3)
    assert ops.count == 1
    assert dict(ops.names) == {"add": 1}
    with measure.OpCounter() as ops:
        (x * 2).sum().neg_()
    assert ops.count == 3
    assert measure.count_ops(lambda: [x + i for i in range(4)], steps=2)["ops"] == 2


def test_train_loop_rows(report):
    rows, _ = report
    loop = {r["extra"]["mode"]: r for r in rows if r["stage"].startswith("train loop")}
    assert set(loop) == {"supervised", "pretrain"}
    for mode, row in loop.items():
        assert row["images_per_s"] > 0 and row["ms_per_step"] > 0
        assert row["extra"]["size"] == 32 and row["extra"]["steps"] == 2
        assert row["extra"]["ops"] > 0
        assert "syncs_per_step" not in row["extra"]  # --sync-debug reports nothing on the CPU
        assert row["ratio"].endswith("× the isolated step")  # the steps stage ran too
    # the pretrain loop builds the SSL batch: more ops than the supervised one
    assert loop["pretrain"]["extra"]["ops"] > loop["supervised"]["extra"]["ops"]


def test_step_rows_count_ops(report):
    rows, _ = report
    steps = {r["stage"]: r for r in rows if r["stage"].startswith("train step")}
    assert len(steps) == 5
    assert all(r["extra"]["ops"] > 0 for r in steps.values())
    batch = steps["train step: pretrain, fused + batch (jitter)"]["extra"]["ops"]
    assert batch > steps["train step: pretrain, fused relation loss"]["extra"]["ops"]


def test_batch_construction_rows_time_what_the_batch_steps_add(report):
    rows, _ = report
    built = {r["extra"]["mode"]: r for r in rows if r["stage"].startswith("batch construction")}
    assert set(built) == {"supervised", "pretrain"}
    step = {r["extra"]["mode"]: r for r in rows
            if r["stage"].startswith("train step") and r["extra"]["with_batch"]}
    for mode, row in built.items():  # no wall-clock order asserted: a busy CPU may flip it
        assert row["ms_per_step"] > 0
        share = row["ms_per_step"] / step[mode]["ms_per_step"]
        assert row["ratio"] == f"{share:.2f}× its step"
    # the jitter makes the SSL batch the dearer one, in ops as in time
    assert built["pretrain"]["extra"]["ops"] > built["supervised"]["extra"]["ops"]


def test_profile_writes_table_and_trace(report):
    _, profile = report
    stem = profile / "32px-pretrain-fused-batch-jitter"
    table = Path(f"{stem}.txt").read_text()
    assert "self_cpu_time_total" in table and "aten::" in table
    trace = json.loads(Path(f"{stem}.json").read_text())
    assert trace["traceEvents"]
    assert Path(profile / "32px-loop-pretrain.txt").exists()
    assert Path(profile / "32px-loop-supervised.json").exists()
    assert len(list(profile.glob("*.txt"))) == len(list(profile.glob("*.json"))) == 7


def test_sync_counter_counts_sync_warnings(bench, monkeypatch):
    """The CUDA-only path, with the sync debug mode stubbed: counts, sites, mode restored."""
    modes = []
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)
    assert measure.SyncCounter(torch.device("cpu"), True).enabled is False
    counter = measure.SyncCounter(torch.device("cuda"), True)
    with pytest.warns(UserWarning, match="unrelated"):
        with counter:
            for _ in range(4):
                warnings.warn("called a synchronizing CUDA operation")
            warnings.warn("unrelated")
    assert modes == ["warn", 0]
    assert counter.count == 4 and sum(counter.sites.values()) == 4
    extra = {}
    counter.per_step(2, extra, "test")
    assert extra["syncs_per_step"] == 2
    (site, n), = extra["sync_sites"].items()  # one line raised them all
    assert site.startswith("test_bench.py:") and n == 4


def test_photo_like_jpegs_weigh_what_imagenet_jpegs_do(bench, tmp_path):
    """The decode stage's images: about ImageNet's 110 KB average at 500 x 375, quality 90 (white
    noise would weigh 3x as much, a flat image a twentieth)."""
    from PIL import Image

    image = inputs.photo_like(*inputs.PHOTO_SIZE, torch.Generator().manual_seed(0))
    assert image.shape == (3, 375, 500) and image.dtype == torch.uint8
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp_path / "a.jpg", quality=90)
    assert 80e3 < (tmp_path / "a.jpg").stat().st_size < 160e3


def test_workers_to_feed_the_224_px_steps(bench):
    rows = [bench_table.Row("decode: JPEG", "", 1600.0, extra={"per_worker": 400.0, "files": "JPEG"}),
            bench_table.Row("train step: supervised + batch", "224", 5000.0,
                      extra={"size": 224, "with_batch": True}),
            bench_table.Row("train step: supervised", "224", 9000.0, extra={"size": 224}),
            bench_table.Row("train step: supervised + batch", "32", 9000.0,
                      extra={"size": 32, "with_batch": True})]
    lines = bench_table.workers_to_feed(rows)
    assert len(lines) == 1 and lines[0].endswith(": 13 at 400 images/s each")
    assert bench_table.workers_to_feed(rows[1:]) == []
    resized = bench_table.Row("decode: JPEG resized to shorter side 256 (~51 KB), 4 workers", "", 3200.0,
                        extra={"per_worker": 800.0,
                               "files": "JPEG resized to shorter side 256"})
    lines = bench_table.workers_to_feed([rows[0], resized, *rows[1:]])
    assert lines[0].endswith(": 13 at 400 images/s each (JPEG), 7 at 800 images/s each "
                             "(JPEG resized to shorter side 256)")
    on_device = bench_table.Row("decode on the cuda: nvjpeg", "", 9000.0, extra={"jpeg_kb": 120.0})
    assert bench_table.workers_to_feed([on_device, *rows[1:]]) == []  # not a rate per worker


def test_decode_rows_of_the_original_and_the_resized_jpegs(bench, tmp_path):
    out = tmp_path / "bench.json"
    bench.main(["--only", "decode", "--decode-images", "16", "--workers", "1",
                "--pipeline-batch", "4", "--decode-resized", "128", "--start-rounds", "0",
                "--json", str(out)])
    original, resized = json.loads(out.read_text())["rows"]
    assert original["stage"].startswith("decode: JPEG 500x375 (~")
    assert resized["stage"].startswith("decode: JPEG resized to shorter side 128 (~")
    assert resized["extra"]["jpeg_kb"] < original["extra"]["jpeg_kb"] / 3
    share = resized["images_per_s"] / original["images_per_s"]
    assert resized["ratio"].endswith(f", {share:.2f}× original")


def test_decode_times_whole_rounds_of_full_batches(bench, tmp_path):
    """18 images for 2 workers in batches of 2: 16 decoded, 4 rounds of one batch per worker (a
    short last batch would leave a worker idle inside the timed window)."""
    out = tmp_path / "bench.json"
    bench.main(["--only", "decode", "--decode-images", "18", "--workers", "2",
                "--pipeline-batch", "2", "--json", str(out)])
    row, start = json.loads(out.read_text())["rows"]
    assert (row["extra"]["images"], row["extra"]["batch"]) == (16, 2)
    assert row["images_per_s"] > 0
    # beside it, a pass of one image per worker: workers started for it against kept ones
    assert start["stage"] == "decode: a pass of 2 images, 2 workers"
    fresh, kept = start["extra"]["fresh_s"], start["extra"]["kept_s"]
    assert start["ms_per_step"] == pytest.approx(1e3 * fresh) and kept > 0
    assert start["ratio"] == f"kept workers {1e3 * kept:,.0f} ms, {fresh / kept:.1f}× faster"
    assert start["config"].startswith("workers started for it (")


def test_device_decode_stage_on_the_cpu(bench):
    """The GPU-decode alternative's code path, run with torchvision's CPU decoder."""
    args = argparse.Namespace(pipeline_batch=3, repeats=1)
    (row,) = inputs.bench_device_decode(args, torch.device("cpu"))
    assert row.stage.startswith("decode on the cpu: libjpeg-turbo, batch 3")
    assert row.images_per_s > 0 and row.extra["host_ms_per_batch"] > 0
    assert row.extra["max_abs_diff_vs_pil"] <= 2  # both libjpeg-turbo here


def test_device_decode_reports_a_decoder_that_fails(bench, monkeypatch):
    import torchvision.io

    def no_decoder(*args, **kwargs):
        raise RuntimeError("decode_jpeg: this torchvision was built without nvjpeg\nmore")

    monkeypatch.setattr(torchvision.io, "decode_jpeg", no_decoder)
    args = argparse.Namespace(pipeline_batch=2, repeats=1)
    (row,) = inputs.bench_device_decode(args, torch.device("cpu"))
    assert row.images_per_s is None
    assert row.ratio == "failed: decode_jpeg: this torchvision was built without nvjpeg"


def test_markdown_from_json_renders_the_saved_rows(bench, report, tmp_path, capsys):
    """--markdown-from: a saved run's rows as a Markdown table (what docs/performance.md holds);
    a file that is not one names itself."""
    rows = [dict(row, extra=dict(row["extra"])) for row in report[0]]
    rows[0]["extra"]["syncs_per_step"] = 1.0  # as a CUDA run with --sync-debug records
    saved = tmp_path / "bench.json"
    saved.write_text(json.dumps({"device": "CPU", "torch": torch.__version__, "rows": rows}))
    bench.main(["--markdown-from", str(saved)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{saved} (CPU, torch")
    table = [line for line in lines if line.startswith("| ")]
    assert table[0].startswith("| stage | config | images/s | ms/step |")
    assert table[0].endswith("| syncs/step |")
    assert table[1].startswith("| --- | --- | ---: |")
    assert len(table) == 2 + len(rows)
    assert all(line.count(" | ") == table[0].count(" | ") for line in table)
    first = bench_table.Row(**rows[0])
    assert table[2] == "| " + " | ".join(first.cells(True)) + " |"
    broken = tmp_path / "broken.json"
    broken.write_text("{}")
    with pytest.raises(SystemExit, match="broken.json: not a bench --json file"):
        bench.main(["--markdown-from", str(broken)])


def test_relation_memory_stage_with_the_head_width_padded(bench, tmp_path, monkeypatch):
    """The memory stage on the CPU: plain, fused and the fused one with `--head-align` (each a
    fresh process's peak RSS, with the table's --threads), and a profile of each case."""
    out = tmp_path / "relation.json"
    commands = []
    run = relation_memory.subprocess.run
    monkeypatch.setattr(relation_memory.subprocess, "run",
                        lambda cmd, **kw: commands.append(cmd) or run(cmd, **kw))
    bench.main(["--only", "memory", "--memory-batch", "2", "--memory-dim", "45", "--threads",
                "1", "--head-align", "1", "8", "--profile", str(tmp_path / "profile"),
                "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["stage"] for r in rows] == [
        "relation head + loss fwd/bwd: plain ([B,9,N,N] scores)",
        "relation head + loss fwd/bwd: fused (256 MiB chunks of 2 samples, default)",
        "relation head + loss fwd/bwd: fused (256 MiB chunks of 2 samples, default, head width 5 "
        "padded to 8)"]
    assert all(r["ms_per_step"] > 0 and r["peak_mb"] is not None for r in rows)
    assert rows[2]["ratio"].startswith(f"{rows[2]['ms_per_step'] / rows[0]['ms_per_step']:.2f}×")
    tables = sorted((tmp_path / "profile").glob("relation-*.txt"))
    assert len(tables) == 3 and all("aten::" in t.read_text() for t in tables)
    assert len(commands) == 3 and all(c[-2:] == ["--threads", "1"] for c in commands)


def test_op_counter_counts_the_bytes_ops_read_and_write(bench):
    """The traffic proxy: inputs and outputs once each, an out= tensor as written only, in-place
    ops as read and written, broadcast inputs and views left out."""
    x, y, one = torch.ones(256), torch.ones(256, dtype=torch.float64), torch.ones(1)
    with measure.OpCounter() as ops:
        x + 1  # reads 1 KiB, writes 1 KiB
    assert ops.bytes == 2048
    with measure.OpCounter() as ops:
        torch.mul(x, 2, out=y)  # reads 1 KiB, writes 2 KiB
        x.mul_(2)  # reads and writes 1 KiB
        x.view(16, 16)
        x + one.expand(256)  # the broadcast input is not read 256 times
    assert ops.bytes == 1024 + 2048 + 2048 + 2048
    assert measure.count_ops(lambda: [x + i for i in range(4)], steps=2)["mib"] == 2 * 2048 / 2**20


def test_step_rows_compare_the_bytes_moved(report):
    rows, _ = report
    steps = {r["stage"]: r for r in rows if r["stage"].startswith("train step")}
    pretrain = steps["train step: pretrain, fused relation loss"]
    supervised = steps["train step: supervised"]
    share = pretrain["extra"]["mib"] / supervised["extra"]["mib"]
    assert share > 1  # the SSL heads and losses move more
    assert pretrain["ratio"].endswith(f", MiB {share:.3f}×")


def test_op_counter_leaves_out_an_input_that_beta_zero_ignores(bench):
    """baddbmm_ with beta=0 writes its `self` without reading it (the fused loss's products)."""
    a, b = torch.ones(2, 4, 4), torch.ones(2, 4, 4)
    out = torch.empty(2, 4, 4)
    with measure.OpCounter() as ops:
        out.baddbmm_(a, b, beta=0)
    assert ops.bytes == 3 * 128
    with measure.OpCounter() as ops:
        out.baddbmm_(a, b)
    assert ops.bytes == 4 * 128


def test_dense_jitter_option_counts_cudas_jitter_path(bench, monkeypatch):
    """--dense-jitter: the SSL inputs take the dense path on the CPU too (the sorted path, the
    CPU's default above CPU_DENSE_MAX_ELEMENTS, loops over its groups of patches: many more
    ops), and only inside the option's block."""
    from relvit.ssl import jitter

    monkeypatch.setattr(jitter, "CPU_DENSE_MAX_ELEMENTS", 0)  # a batch the size of a real one
    images = torch.rand(2, 3, 32, 32)

    def ops() -> float:
        return measure.count_ops(lambda: inputs.batched_pipeline(
            images, 4, torch.Generator().manual_seed(0)))["ops"]

    ops()  # fills the caches (crop matrices, target tables)
    sorted_ops = ops()
    with step_stage.dense_jitter(True):
        dense_ops = ops()
    assert dense_ops < sorted_ops / 2
    assert ops() == sorted_ops


def test_counting_flops_and_ops_leaves_compiled_functions_compiled(bench):
    """`model_flops` and `count_ops` run compiled functions eagerly, untraced, and those stay
    compiled afterwards: under torch 2.11 a compiled function once called under a dispatch mode
    ran eagerly for the rest of the process, and the compiled train steps timed after the FLOP
    count ran their jitter and relation loss uncompiled."""
    from relvit.compiled import compile_static

    torch._dynamo.reset()
    graph_calls = []

    def counting_backend(gm: torch.fx.GraphModule, example_inputs: list):
        def run(*args):
            graph_calls.append(1)
            return gm.forward(*args)
        return run

    square_sum = compile_static(lambda t: (t * t).sum(), counting_backend)
    x = torch.randn(8, requires_grad=True)

    def loss_fn(eager: bool = False) -> torch.Tensor:
        return square_sum(x)

    loss_fn().backward()
    assert len(graph_calls) == 1
    assert step_stage.model_flops(loss_fn) == 0  # no matmuls; counted eagerly
    assert measure.count_ops(lambda: loss_fn().backward())["ops"] > 0  # the ops were seen
    assert len(graph_calls) == 1  # neither count ran the graph
    loss_fn().backward()
    torch._dynamo.reset()
    assert len(graph_calls) == 2  # and the next call is compiled again


def test_compiled_steps_as_one_region(bench, monkeypatch, tmp_path):
    """`--compile --compile-step`: the steps (as a run with `compile_step: true`) trace the
    model and the losses as one region, with the batch's build in it for the "+ batch" steps
    (Dynamo's graphs, run by the eager backend: fast), and their rows say so."""
    graphs = []

    def counting_backend(gm: torch.fx.GraphModule, example_inputs: list):
        graphs.append(gm)
        return gm.forward

    monkeypatch.setattr(step_stage, "compile_static",
                        functools.partial(step_stage.compile_static, backend=counting_backend))
    _run(bench, ["--only", "steps", *TINY, "--compile", "--compile-step",
                 "--json", str(tmp_path / "bench.json")])
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    steps = [r["stage"] for r in rows if r["stage"].startswith("train step")]
    assert len(steps) == 4 and all(s.endswith("(step compiled as one region)") for s in steps)
    # the ops column: the ATen ops outside compiled code (the draws of the "+ batch" steps, and
    # here every backward op: the counting backend compiles no backward)
    eager_ops = [r["extra"]["eager_ops"] for r in rows if r["stage"].startswith("train step")]
    assert all(n > 0 for n in eager_ops) and eager_ops[2] > eager_ops[0]
    row = bench_table.Row(steps[0], "", extra={"eager_ops": 1234})
    assert row.ops_cell() == "(1,234)"
    # one graph per step case, each with the patch embedding and the losses; the "+ batch"
    # ones with the normalisation's constants made in the graph (`torch.full`) and (pretrain)
    # the jitter's crop products and colour blends
    targets = [" ".join(str(n.target) for n in g.graph.nodes) for g in graphs]
    regions = [t for t in targets if "conv2d" in t and "cross_entropy" in t]
    assert len(regions) == len(graphs) == 4
    # supervised, pretrain (the fused relation loss's autograd Function), then "+ batch" each
    assert ["autograd_function_apply" in t for t in regions] == [False, True, False, True]
    assert ["method full of" in t for t in regions] == [False, False, True, True]
    assert [("bmm" in t, "addcmul" in t) for t in regions] == [(False, False)] * 3 + [(True, True)]


def test_each_measured_case_has_the_heap_to_itself(bench, monkeypatch):
    """A run is a reference cycle: the loop stage's supervised run, model, optimizer and data,
    stayed allocated through the pretrain run's peak-memory measurement until gc collected it
    (reset_peak now does)."""
    built, alive_when_timed, alive_before = [], [], []
    build, timed, allocated = step_stage.build_model, measure.timed, measure.allocated_mb

    def alive() -> int:
        return sum(ref() is not None for ref in built)

    def recorded_build(*args, **kwargs):
        model = build(*args, **kwargs)
        built.append(weakref.ref(model))
        return model

    def counting_timed(*args, **kwargs):
        alive_when_timed.append(alive())
        return timed(*args, **kwargs)

    def counting_allocated(device):
        mb = allocated(device)  # collects the garbage first
        alive_before.append(alive())
        return mb

    for stage in (step_stage, loop_stage):  # each stage module calls these by its own name
        monkeypatch.setattr(stage, "build_model", recorded_build)
        monkeypatch.setattr(stage, "timed", counting_timed)
    monkeypatch.setattr(step_stage, "allocated_mb", counting_allocated)
    _run(bench, ["--only", "steps", "loop", *TINY])
    assert len(built) >= 7 and alive_when_timed and set(alive_when_timed) == {1}, alive_when_timed
    # a step case's peak is measured above what was allocated before it: nothing, in one round
    assert alive_before == [0] * 5, alive_before


def test_rounds_interleave_the_step_cases_and_report_medians(bench, monkeypatch, tmp_path):
    """--rounds 3: each case timed once per round, the cases in turn; the row's time is the
    median of its rounds, its ratio the median and range of the rounds' paired ratios; the cases
    stay built (each one's memory measured above the earlier ones'). Timings are faked."""
    ms = {"supervised": [1, 3, 2], "pretrain, plain relation loss": [2, 3, 5],
          "pretrain, fused relation loss": [1, 3, 2], "supervised + batch": [4, 4, 4],
          "pretrain, fused + batch (jitter)": [5, 6, 4]}
    order, built, alive_before = [], [], []
    make_step, build, allocated = step_stage.make_step, step_stage.build_model, measure.allocated_mb

    def labelled_step(case, *args, **kwargs):
        fns = make_step(case, *args, **kwargs)
        step = functools.partial(fns.step)
        step.label = case.name
        return fns._replace(step=step)

    def fake_timed(fn, repeats, device, warmup=1, around=None):
        label = getattr(fn, "label", None)
        if label is None:  # the batch construction
            return 1e-3
        order.append(label)
        return ms[label][order.count(label) - 1] / 1000

    def recorded_build(*args, **kwargs):
        model = build(*args, **kwargs)
        built.append(weakref.ref(model))
        return model

    def counting_allocated(device):
        mb = allocated(device)
        alive_before.append(sum(ref() is not None for ref in built))
        return mb

    monkeypatch.setattr(step_stage, "make_step", labelled_step)
    monkeypatch.setattr(step_stage, "timed", fake_timed)
    monkeypatch.setattr(step_stage, "build_model", recorded_build)
    monkeypatch.setattr(step_stage, "allocated_mb", counting_allocated)
    _run(bench, ["--only", "steps", *TINY, "--rounds", "3", "--json",
                 str(tmp_path / "bench.json")])
    assert order == list(ms) * 3
    assert alive_before == [0, 1, 2, 3, 4]
    rows = {r["stage"]: r for r in json.loads((tmp_path / "bench.json").read_text())["rows"]}
    steps = {stage.removeprefix("train step: "): row for stage, row in rows.items()
             if stage.startswith("train step")}
    assert list(steps) == list(ms)
    for name, row in steps.items():
        assert row["extra"]["ms_rounds"] == ms[name]
    sup, plain = steps["supervised"], steps["pretrain, plain relation loss"]
    assert sup["ms_per_step"] == 2 and sup["images_per_s"] == pytest.approx(4 / 0.002)
    # paired ratios 2, 1, 2.5: median 2.00, where the medians' ratio would be 1.50
    assert plain["ms_per_step"] == 3 and plain["ratio"].startswith("2.00× (1.00–2.50), mem ")
    assert steps["pretrain, fused relation loss"]["ratio"].startswith("1.00× (1.00–1.00), mem ")
    assert steps["supervised + batch"]["ratio"].startswith("1.00× (1.00–1.00), mem ")
    # against the supervised step with the batch: 1.25, 1.5, 1.0
    assert steps["pretrain, fused + batch (jitter)"]["ratio"].startswith("1.25× (1.00–1.50), ")
    built_rows = {r["extra"]["mode"]: r for r in rows.values()
                  if r["stage"].startswith("batch construction")}
    assert built_rows["supervised"]["ratio"] == "0.25× its step"
    assert built_rows["pretrain"]["ratio"] == "0.20× its step"


@pytest.mark.parametrize("option, value", [("--rounds", "0"), ("--repeats", "0"),
                                           ("--steps", "0"), ("--workers", "-1"),
                                           ("--start-rounds", "-1")])
def test_counts_must_be_positive(bench, capsys, option, value):
    """A count of 0 had divided by zero at the end of a stage (--repeats, --steps)."""
    with pytest.raises(SystemExit):
        bench.main(["--only", "steps", *TINY, option, value])
    assert f"{option} must be at least" in capsys.readouterr().err


def test_ssl_inputs_with_no_workers_credit_the_reference_one_process(bench, tmp_path):
    """--workers 0 (decoding in the main process) had divided by zero in the SSL stage."""
    out = tmp_path / "ssl.json"
    bench.main(["--only", "ssl", "--workers", "0", "--pipeline-batch", "2",
                "--reference-images", "1", "--repeats", "1", "--threads", "1",
                "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["stage"] for r in rows].count("SSL inputs: per-sample reference ×1 workers") == 2


def test_the_projected_row_is_the_paper_tier_s_three_runs(bench):
    """Pretrain, finetune and supervised, 100 epochs of 50k images each; the † same-epochs run
    (not in the paper tier) is reported apart and left out of a seed's hours."""
    rows = [bench_table.Row("train step + batch", "32 px", images_per_s=rate,
                      extra={"size": 32, "mode": mode, "with_batch": True})
            for mode, rate in (("pretrain", 5_000_000 / 3600), ("supervised", 10_000_000 / 3600))]
    hours = bench_table.projection(rows)
    assert hours["pretrain"] == pytest.approx(1.0) and hours["finetune"] == pytest.approx(0.5)
    assert hours["one_seed"] == pytest.approx(2.0) and hours["3_seeds"] == pytest.approx(6.0)
    assert hours["same_epochs_extra"] == pytest.approx(1.0)


@pytest.mark.parametrize("mode,recorded", [("reduce-overhead", True), ("max-autotune", True),
                                           ("default", False)])
def test_the_graphs_pool_is_measured_for_every_mode_that_records_graphs(mode, recorded):
    """max-autotune records CUDA graphs too: its pool had been left out of the peaks."""
    args = argparse.Namespace(compile_mode=mode)
    assert measure.graphs_recorded_in_first_call(args, True) is recorded
    assert measure.graphs_recorded_in_first_call(args, False) is False


def test_the_projection_takes_the_fastest_32_px_batch_step_of_each_mode():
    """Only 32 px "+ batch" train steps count, and of several the fastest."""
    def row(mode, rate, size=32, with_batch=True):
        return bench_table.Row(f"train step: {mode}", f"{size} px", images_per_s=rate,
                               extra={"size": size, "mode": mode, "with_batch": with_batch})
    rows = [row("pretrain", 1_000_000 / 3600), row("pretrain", 5_000_000 / 3600),
            row("pretrain", 50_000_000 / 3600, size=224),
            row("pretrain", 50_000_000 / 3600, with_batch=False),
            row("supervised", 10_000_000 / 3600)]
    hours = bench_table.projection(rows)
    assert hours["pretrain"] == pytest.approx(1.0) and hours["supervised"] == pytest.approx(0.5)


def test_each_cell_is_under_its_column_in_the_units_the_header_names():
    row = bench_table.Row("train step: pretrain", "32 px", images_per_s=1234.0,
                          ms_per_step=12.34, ratio="1.50×", peak_mb=3000.4, mfu=0.123,
                          extra={"ops": 1500.0, "mib": 20.6, "syncs_per_step": 0.5})
    cells = dict(zip(bench_table.table_header(True), row.cells(True)))
    assert cells == {"stage": "train step: pretrain", "config": "32 px", "images/s": "1,234",
                     "ms/step": "12.3", "ratio": "1.50×", "peak MB": "3,000",
                     "MFU": "12.3 %", "ops": "1,500", "MiB": "21", "syncs/step": "0.5"}


def test_timed_is_the_mean_of_the_timed_calls_after_the_warmup(monkeypatch):
    clock, calls = [0.0], []

    def step():  # each call takes one second of the fake clock; the warmup ones 100
        calls.append(1)
        clock[0] += 100.0 if len(calls) <= 2 else 1.0

    monkeypatch.setattr(measure.time, "perf_counter", lambda: clock[0])
    assert measure.timed(step, 4, torch.device("cpu"), warmup=2) == pytest.approx(1.0)
    assert len(calls) == 6


def test_rss_and_saved_memory_are_in_mib(monkeypatch):
    x = torch.ones(2**18, requires_grad=True)  # 1 MiB of float32, saved twice by x * x
    assert measure.saved_for_backward_mb(lambda: (x * x).sum()) == pytest.approx(1.0)
    monkeypatch.setattr(measure, "open", lambda *a, **k: io.StringIO("512 256 0 0 0 0 0\n"),
                        raising=False)
    monkeypatch.setattr(measure.os, "sysconf", lambda name: 4096)
    assert measure.rss_mb() == pytest.approx(1.0)  # 256 resident pages of 4 KiB


def test_the_memory_stage_rows_rates_and_ratios(monkeypatch):
    """images/s is the batch over a fwd/bwd's time; the fused rows' ratio is fused / plain in
    time, then in peak memory (each probe's result stubbed)."""
    results = iter([{"peak_mb": 100.0, "saved_mb": 80.0, "seconds": 0.5},
                    {"peak_mb": 25.0, "saved_mb": 20.0, "seconds": 1.0}])
    monkeypatch.setattr(relation_memory.subprocess, "run", lambda cmd, **kw: argparse.Namespace(
        stdout=json.dumps(next(results)) + "\n"))
    args = argparse.Namespace(memory_batch=4, memory_dim=45, chunk_mb=[64], head_align=[1],
                              compile=False, threads=1, profile=None)
    plain, fused = relation_memory.bench_relation_memory(args, torch.device("cpu"))
    assert (plain.images_per_s, plain.ms_per_step, plain.peak_mb) == (8.0, 500.0, 100.0)
    assert fused.images_per_s == 4.0 and fused.ratio == "2.00×, mem 0.25×"


def test_the_memory_probe_reports_the_peak_rss_growth_in_mib(monkeypatch, capsys):
    usage = iter([100 * 1024, 150 * 1024])  # ru_maxrss in KiB (Linux): before and after
    monkeypatch.setattr(relation_memory, "rss_mb", lambda: 100.0)
    monkeypatch.setattr(relation_memory.resource, "getrusage",
                        lambda who: argparse.Namespace(ru_maxrss=next(usage)))
    relation_memory.probe_memory(json.dumps({"fused": False, "batch": 1, "n": 16, "dim": 18}))
    result = json.loads(capsys.readouterr().out)
    assert result["peak_mb"] == pytest.approx(50.0)
    assert result["import_peak_above_baseline_mb"] == pytest.approx(0.0)


def test_step_rows_mfu_and_memory_ratio():
    """The MFU is FLOPs per second over the peak; the memory ratio is the step's peak over the
    supervised step's (rows built by hand, as `bench_steps` leaves them)."""
    from benchlib import steps as step_stage

    def measured(name, mode, ms, peak):
        row = bench_table.Row(f"train step: {name}", "32 px", peak_mb=peak,
                              extra={"ms_rounds": [ms], "flops": 2e9})
        return step_stage.MeasuredStep(step_stage.StepCase(name, mode), None, row, None)

    sup, pre = step_stage.finish_step_rows(
        [measured("supervised", "supervised", 2.0, 100.0),
         measured("pretrain", "pretrain", 4.0, 150.0)], batch=8, peak_tflops=1.0)
    assert sup.images_per_s == pytest.approx(4000.0)  # 8 images in 2 ms
    assert sup.mfu == pytest.approx(1.0) and pre.mfu == pytest.approx(0.5)  # 2e9 FLOPs in 2 ms
    assert pre.ratio == "2.00×, mem 1.50×"


def test_timed_syncs_the_device_before_each_clock_read(monkeypatch):
    """The device is synchronised after the warm-up, before the start, and before the end read
    (on the CPU a sync does nothing, so dropping one had passed)."""
    events = []
    monkeypatch.setattr(measure, "sync", lambda device: events.append("sync"))
    monkeypatch.setattr(measure.time, "perf_counter", lambda: events.append("clock") or 0.0)
    measure.timed(lambda: events.append("fn"), 2, torch.device("cuda"), warmup=1)
    assert events == ["fn", "sync", "clock", "fn", "fn", "sync", "clock"]


def test_cuda_memory_readings_are_in_mib(monkeypatch):
    """peak MB and the allocation a step's peak is measured above: bytes / 2**20 (CUDA-only
    readings, which no CPU test had read)."""
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: 3 * 2**20)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 5 * 2**20)
    assert measure.cuda_peak_mb(torch.device("cuda")) == 3.0
    assert measure.allocated_mb(torch.device("cuda")) == 5.0


def test_count_ops_top_ops_are_per_step():
    """The top ops, like the ops and MiB, are divided by the steps of the call."""
    x = torch.ones(3)
    assert measure.count_ops(lambda: [x + i for i in range(4)], steps=2)["top_ops"] == {"add": 2}


def test_reset_peak_collects_reference_cycles_first():
    """A reference cycle left by the previous case is freed before the peak is reset."""
    class Node:
        pass

    gc.disable()
    try:
        a, b = Node(), Node()
        a.other, b.other = b, a
        ref = weakref.ref(a)
        del a, b
        assert ref() is not None
        measure.reset_peak(torch.device("cpu"))
        assert ref() is None
    finally:
        gc.enable()


def test_batch_construction_rate_is_the_train_batch_over_its_time(monkeypatch):
    """A batch construction row: --batch images (not --pipeline-batch) per timed build."""
    monkeypatch.setattr(step_stage, "timed", lambda *a, **k: 0.002)
    args = argparse.Namespace(steps=1, warmup=0, batch=4, pipeline_batch=7)
    row = step_stage.batch_construction_row(step_stage.StepCase("s", "supervised"),
                                            lambda: None, "cfg", args, torch.device("cpu"))
    assert row.images_per_s == pytest.approx(2000.0) and row.ms_per_step == pytest.approx(2.0)


def test_model_flops_count_forward_and_backward():
    """FLOPs of forward + backward: a matmul's backward costs twice its forward."""
    weight = torch.ones(3, 4, requires_grad=True)
    x = torch.ones(2, 4, requires_grad=True)
    flops = step_stage.model_flops(lambda eager: (x @ weight.t()).sum())
    assert flops == 3 * 2 * 2 * 4 * 3


def test_step_config_names_the_patch_count():
    """The config cell: N is the number of patches, (size / patch)²."""
    args = argparse.Namespace(embed_dim=36, depth=1, batch=4)
    config = step_stage.step_config(args, 32, 4)
    assert "N=64," in config and config.endswith("batch 4")


def test_steps_stage_warmups_syncs_mfu_and_size(bench, monkeypatch, tmp_path):
    """The 224 px steps, timings faked: each case's first step synced before its clock read,
    --warmup steps before the first round's window and at least one before a later round's,
    --peak-tflops as the MFU's denominator, the row's size as the config's."""
    events, warmups = [], []
    make_step = step_stage.make_step

    def labelled_step(case, *args, **kwargs):
        fns = make_step(case, *args, **kwargs)

        def step():
            events.append("run")
            fns.step()
        step.label = case.name
        return fns._replace(step=step)

    def fake_timed(fn, repeats, device, warmup=1, around=None):
        if getattr(fn, "label", None):
            warmups.append(warmup)
        return 0.004

    monkeypatch.setattr(step_stage, "make_step", labelled_step)
    monkeypatch.setattr(step_stage, "timed", fake_timed)
    monkeypatch.setattr(step_stage, "sync", lambda device: events.append("sync"))
    monkeypatch.setattr(step_stage, "time", types.SimpleNamespace(
        perf_counter=lambda: events.append("clock") or 0.0))
    out = tmp_path / "bench.json"
    _run(bench, ["--only", "steps", *TINY, "--sizes", "224", "--warmup", "2", "--rounds", "2",
                 "--peak-tflops", "1", "--json", str(out)])
    rows = [r for r in json.loads(out.read_text())["rows"] if r["stage"].startswith("train step")]
    assert len(rows) == 5
    # the first-call timing of each case: clock, run, sync, clock
    assert "".join(e[0] for e in events).count("crsc") == 5
    assert warmups[:5] == [2] * 5 and all(w >= 1 for w in warmups[5:]) and len(warmups) == 10
    for row in rows:
        assert row["extra"]["size"] == 224 and ", 224px, N=196," in row["config"]
        assert row["ms_per_step"] == pytest.approx(4.0)
        assert row["mfu"] == pytest.approx(row["extra"]["flops"] / 0.004 / 1e12)


def test_loop_rows_are_per_step(bench, monkeypatch, tmp_path):
    """The loop's epoch of 2 steps timed (faked) at 10 ms: 5 ms/step, batch / 5 ms images/s;
    ops counted per step; host syncs per step."""
    counted, synced = [], []
    count_ops = loop_stage.count_ops

    def counting(fn, steps=1):
        counted.append(steps)
        return count_ops(fn, steps)

    class FakeSyncs(measure.SyncCounter):
        def per_step(self, steps, extra, label):
            synced.append(steps)

    monkeypatch.setattr(loop_stage, "timed", lambda *a, **k: 0.010)
    monkeypatch.setattr(loop_stage, "count_ops", counting)
    monkeypatch.setattr(loop_stage, "SyncCounter", FakeSyncs)
    out = tmp_path / "bench.json"
    _run(bench, ["--only", "loop", *TINY, "--sizes", "32", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 2
    for row in rows:
        assert row["ms_per_step"] == pytest.approx(5.0)
        assert row["images_per_s"] == pytest.approx(4 / 0.005)
    assert counted == [2, 2] and synced == [2, 2]


def test_loop_ratio_is_loop_over_its_isolated_batch_step():
    """A loop row's ratio: its ms/step over the "+ batch" step's of the same size and mode."""
    def step(mode, with_batch, ms):
        return bench_table.Row(f"train step: {mode}{' + batch' if with_batch else ''}", "",
                               ms_per_step=ms, extra={"size": 32, "mode": mode,
                                                      "compiled": False, "with_batch": with_batch})

    rows = [step("supervised", False, 2.0), step("supervised", True, 3.0),
            step("pretrain", False, 1.0), step("pretrain", True, 4.0),
            bench_table.Row("train loop: supervised", "", ms_per_step=6.0,
                extra={"size": 32, "mode": "supervised", "compiled": False}),
            bench_table.Row("train loop: pretrain", "", ms_per_step=8.0,
                extra={"size": 32, "mode": "pretrain", "compiled": False})]
    loop_stage.compare_loop(rows)
    assert rows[4].ratio == "2.00× the isolated step"
    assert rows[5].ratio == "2.00× the isolated step"


def test_decode_rate_is_the_steady_rate_after_every_worker_s_first_batch(monkeypatch, tmp_path):
    """16 files, 2 workers, --pipeline-batch 4: batches of 2 (4 per worker), one arriving each
    (fake) second from t=1: 12 images after the workers' first batches in 6 s, synced before the
    last arrival's clock read."""
    events, clock = [], [0.0]
    paths = []
    for i in range(16):
        paths.append(tmp_path / f"{i}.jpg")
        paths[-1].write_bytes(b"x" * 1000)

    def fake_batches(split, indices, batch, transform, workers, pin_memory, seed):
        for _ in range(len(indices) // batch):
            clock[0] += 1.0
            yield torch.zeros(batch, 3, 2, 2), torch.zeros(batch)

    def read_clock():
        events.append("clock")
        return clock[0]

    monkeypatch.setattr(inputs, "batches", fake_batches)
    monkeypatch.setattr(inputs, "sync", lambda device: events.append("sync"))
    monkeypatch.setattr(inputs.time, "perf_counter", read_clock)
    args = argparse.Namespace(workers=2, pipeline_batch=4)
    row = inputs._decode_row(paths, "test", args, torch.device("cpu"))
    assert (row.extra["batch"], row.extra["images"]) == (2, 16)
    assert row.images_per_s == pytest.approx(2.0) and row.extra["per_worker"] == pytest.approx(1.0)
    assert row.extra["startup_s"] == pytest.approx(1.0) and row.extra["jpeg_kb"] == 1.0
    assert events[-2:] == ["sync", "clock"]


def test_worker_start_row_is_the_medians_with_the_kept_workers_started_first(monkeypatch,
                                                                              tmp_path):
    """Fresh passes take 10, 30, 20 s, the kept workers' 1, 3, 2 s after a 10 s start left out:
    the medians 20 and 2 s."""
    clock = [0.0]

    class FakeLoader:
        def __init__(self, costs):
            self.costs = costs

        def batches(self, batches, seed):
            clock[0] += self.costs.pop(0)
            return iter(())

        def close(self):
            pass

    fakes = {False: FakeLoader([10.0, 30.0, 20.0]), True: FakeLoader([10.0, 1.0, 3.0, 2.0])}
    monkeypatch.setattr(inputs, "file_loader", lambda *a, persistent, **k: fakes[persistent])
    monkeypatch.setattr(inputs.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(inputs, "rss_mb", lambda: 100.0)
    args = argparse.Namespace(workers=1, start_rounds=3)
    row = inputs._worker_start_row([tmp_path / "a.jpg"], args, torch.device("cpu"))
    assert row.extra["fresh_s"] == pytest.approx(20.0) and row.extra["kept_s"] == pytest.approx(2.0)
    assert row.ms_per_step == pytest.approx(20000.0)


def test_device_decode_rate_is_the_batch_over_its_time(monkeypatch):
    """--pipeline-batch 3 decoded in a (faked) 0.5 s: 6 images/s."""
    monkeypatch.setattr(inputs, "timed", lambda *a, **k: 0.5)
    (row,) = inputs.bench_device_decode(argparse.Namespace(pipeline_batch=3, repeats=1),
                                        torch.device("cpu"))
    assert row.images_per_s == pytest.approx(6.0)


def test_ssl_inputs_rates_and_ratio(monkeypatch):
    """Batched: 2 images in 0.25 s (8/s); reference: 1 image in 1 s credited ×2 workers (2/s);
    the ratio batched / reference, 4.0×."""
    monkeypatch.setattr(inputs, "timed",
                        lambda fn, repeats, device, warmup=1, around=None:
                        0.25 if around is not None else 1.0)
    monkeypatch.setattr(inputs, "CONFIGS", (("cifar10", 32, 4),))
    args = argparse.Namespace(pipeline_batch=2, sync_debug=False, repeats=1, reference_images=1,
                              workers=2, compile=False)
    fast, slow = inputs.bench_ssl_inputs(args, torch.device("cpu"))
    assert fast.images_per_s == pytest.approx(8.0) and slow.images_per_s == pytest.approx(2.0)
    assert fast.ratio == "4.0× ref"


def test_augment_rate_is_the_batch_over_its_time(monkeypatch):
    """--pipeline-batch 4 augmented in a (faked) 0.5 s: 8 images/s."""
    monkeypatch.setattr(inputs, "timed", lambda *a, **k: 0.5)
    rows = inputs.bench_augment(argparse.Namespace(pipeline_batch=4, repeats=1),
                                torch.device("cpu"))
    assert [r.images_per_s for r in rows] == [pytest.approx(8.0)] * 2
