"""Distributed training (torchrun, gloo on the CPU, 2 processes) against one process: the same
numbers within the spread of the per-rank random streams, files written once by rank 0, exact
resume, a consistent stop on a non-finite loss, and the split of each global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY_RUN
from fixtures.runs import TINY_DETECTOR
from relvit.config import config_from_dict, dump_config, load_config, merge
from relvit.train import distributed
from relvit.train.loop import Run, TrainingError, train

ENTRY = Path(__file__).with_name("ddp_entry.py")  # `relvit`, recording each rank's writes
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
            "2"]
RUN_FILES = ("config.yaml", "last.pt", "best.pt", "history.csv", "metrics.json")

# Global batch 75 over 2 ranks: shards of 38 and 37 samples, so the loss weighting of uneven
# shards is exercised; 1437 digits = 19 batches of 75 and a last one of 12 (6 + 6).
TINY = {"optim": {"epochs": 2, "batch_size": 75}}


def torchrun(mode: str, config: Path, out: Path, *args: str, module: bool = False,
             timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    """`torchrun --nproc-per-node 2` of `relvit MODE` (`-m relvit.cli`, or the instrumented
    tests/ddp_entry.py), one CPU thread per process. torchrun's own temporary folder goes
    beside `out` (TMPDIR), not into /tmp, where it would stay."""
    target = ["-m", "relvit.cli"] if module else [str(ENTRY)]
    command = [*TORCHRUN, *target, mode, "--config", str(config), "--out", str(out),
               "--no-progress", *args]
    out.parent.mkdir(parents=True, exist_ok=True)
    environ = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(out.parent), **env}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environ)


def config_file(folder: Path, mode: str, overrides: dict) -> Path:
    """A tiny run config (conftest.TINY_RUN, then TINY, then `overrides`) as a YAML file."""
    path = folder / f"{mode}.yaml"
    dump_config(config_from_dict(merge(merge(merge(TINY_RUN, TINY), overrides), {"mode": mode})),
                path)
    return path


def single(tmp_path: Path, config: Path, mode: str) -> dict:
    """The same run in this one process (one thread, as each torchrun rank)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(load_config(config, [f"mode={mode}"]), tmp_path / "one", progress=False)
    finally:
        torch.set_num_threads(threads)


def finished(result: subprocess.CompletedProcess, out: Path) -> dict:
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


def writes(folder: Path) -> dict[str, list[str]]:
    return {path.stem: path.read_text().split() for path in sorted(folder.glob("rank*.txt"))}


def test_supervised_two_processes_match_one(tmp_path):
    """Without random streams (no augmentation, no drop-path) two processes compute the same
    gradients as one: the DDP mean of the shard losses, weighted by shard size, is the
    full-batch loss. Only float summation order differs: measured over seeds 0-2, |diff| <= 1e-7
    (losses and accuracy) after 2 epochs, so 1e-5 is the tolerance. Unweighted shards of 38 and
    37 (a mean of means) would differ by 5e-4 in val_loss and fail."""
    config = config_file(tmp_path, "supervised", {"data": {"augment": False}})
    out = tmp_path / "two"
    two = finished(torchrun("supervised", config, out, module=True), out)
    one = single(tmp_path, config, "supervised")
    assert two["world_size"] == 2 and one["world_size"] == 1
    for which in ("best", "last"):
        for key in ("train_loss", "val_loss", "val_acc_clf"):
            assert two[which][key] == pytest.approx(one[which][key], abs=1e-5), (which, key)


@pytest.fixture(scope="module")
def pretrain_two(tmp_path_factory) -> tuple[Path, Path, Path, subprocess.CompletedProcess]:
    """A 2-process pretrain run (crops, flips and jitter drawn per rank), its writes recorded:
    (config, run directory, folder of the write logs, the torchrun result)."""
    folder = tmp_path_factory.mktemp("pretrain")
    config = config_file(folder, "pretrain", {"data": {"augment": True}})
    out, log = folder / "two", folder / "writes"
    return config, out, log, torchrun("pretrain", config, out, RELVIT_TEST_WRITES=str(log))


def test_pretrain_two_processes_agree_and_rank_0_writes(tmp_path, pretrain_two):
    """Pretraining draws its crops, flips and jitter per rank, so two processes see other
    draws than one. The spread this causes, measured over seeds 0-2 after 2 epochs: |diff| of
    val_loss <= 0.032, val_acc_rel <= 0.018, val_acc_pos <= 0.006 (seed 0, run here: 0.003,
    0.002, 0.001), the size of seed-to-seed noise of one process (0.087, 0.008, 0.009). The
    tolerances are about 3x the largest difference measured."""
    config, out, log, result = pretrain_two
    two = finished(result, out)
    one = single(tmp_path, config, "pretrain")
    for key, tolerance in (("val_loss", 0.1), ("val_acc_rel", 0.05), ("val_acc_pos", 0.02)):
        assert two["last"][key] == pytest.approx(one["last"][key], abs=tolerance), key
    # every run file written by rank 0 only, each at its moments: config once, last.pt and
    # history.csv once an epoch (history.csv once more at the end), best.pt at most once an
    # epoch, metrics.json at the end
    done = writes(log)
    assert set(done) == {"rank0"}, done
    counts = {name: done["rank0"].count(name) for name in RUN_FILES}
    assert counts["config.yaml"] == counts["metrics.json"] == 1, counts
    assert counts["last.pt"] == counts["history.csv"] - 1 == 2, counts
    assert 1 <= counts["best.pt"] <= 2, counts
    names = {p.name for p in out.iterdir()}
    assert set(RUN_FILES) <= names, names
    assert not [n for n in names if n.startswith(".") or n.endswith(".tmp")], names  # no temps
    assert result.stderr.count("epoch 2/2") == 1  # one log for the job (rank 0)
    run_log = (out / "train.log").read_text()  # and one train.log, rank 0's
    assert run_log.count("relvit pretrain started") == run_log.count("epoch 2/2") == 1


def test_two_processes_resume_exactly(tmp_path, pretrain_two):
    """A 2-process run stopped after epoch 1 and restarted gives the uninterrupted numbers:
    every rank reseeds its own streams each epoch."""
    config, whole_dir, _, result = pretrain_two
    whole = finished(result, whole_dir)
    split = tmp_path / "split"
    stopped = torchrun("pretrain", config, split, RELVIT_TEST_STOP_AFTER="1",
                       RELVIT_TEST_GROUP_FREED="1")
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    # the run's DDP model no longer holds the group: destroying it joined gloo's threads, so
    # none is left to abort the rank at the interpreter's exit (as happened now and then)
    assert stopped.stderr.count("process group freed: True") == 2, stopped.stderr[-3000:]
    assert (split / "last.pt").is_file() and not (split / "metrics.json").exists()
    resumed = torchrun("pretrain", config, split)
    assert resumed.stderr.count("resuming") == 1  # rank 0 alone logs
    again = finished(resumed, split)
    assert again["best"] == whole["best"] and again["last"] == whole["last"]
    a = torch.load(whole_dir / "last.pt", weights_only=True)
    b = torch.load(split / "last.pt", weights_only=True)
    assert a["world_size"] == b["world_size"] == 2
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_a_non_finite_loss_on_one_rank_stops_both(tmp_path):
    config = config_file(tmp_path, "supervised", {})
    result = torchrun("supervised", config, tmp_path / "run", RELVIT_TEST_NAN_RANK="1",
                      timeout=90)  # a rank left waiting in a collective would hang
    assert result.returncode != 0
    assert result.stderr.count("relvit: error: ") == 2, result.stderr[-3000:]  # each rank
    assert result.stderr.count("non-finite loss [") == 2
    assert "(by rank) at epoch 1, step 2" in result.stderr
    assert not (tmp_path / "run" / "last.pt").exists()


def detect_config(folder: Path, n_train: int, n_val: int, batch: int) -> Path:
    """A tiny detect run on digit scenes written into `folder`, its weights left as initialised
    (lr 1e-12), so that its mAPs depend on the evaluation only."""
    from relvit.detection.scenes import write_digit_scenes

    write_digit_scenes(folder / "scenes", n_train=n_train, n_val=n_val, canvas=64, seed=0)
    return config_file(folder, "detect", {
        "data": {"name": "digit_scenes", "folder": str(folder / "scenes"), "workers": 0},
        "model": {"patch_size": 8}, "optim": {"epochs": 1, "batch_size": batch, "lr": 1e-12,
                                              "schedule": "step", "clip_grad": 0.0},
        "detection": TINY_DETECTOR})


def test_detection_evaluates_shards_as_one_process(tmp_path):
    """Each rank predicts its share of the evaluation images, rank 0 scores them all: with the
    weights left as initialised the mAPs equal those of one process."""
    config = detect_config(tmp_path, n_train=8, n_val=6, batch=4)
    two = finished(torchrun("detect", config, tmp_path / "two"), tmp_path / "two")
    one = single(tmp_path, config, "detect")
    assert two["world_size"] == 2 and two["last_map"] == one["last_map"]
    assert two["last_map"]["bbox"]["mAP50"] > 0  # something was detected and matched


def test_an_evaluation_split_smaller_than_the_process_count(tmp_path):
    """One evaluation sample (image) for two processes: the rank with no share had evaluated an
    empty batch and crashed ("cannot reshape tensor of 0 elements", an IndexError in
    detection)."""
    from fixtures.formats import write_cifar

    write_cifar(tmp_path / "cifar", 10, n_train=8, n_test=1)
    config = config_file(tmp_path, "supervised", {
        "data": {"name": "cifar10", "folder": str(tmp_path / "cifar")},
        "optim": {"epochs": 1, "batch_size": 4}})
    two = finished(torchrun("supervised", config, tmp_path / "two"), tmp_path / "two")
    assert two["best"]["val_acc_clf"] in (0.0, 1.0)  # the one sample, counted once
    config = detect_config(tmp_path, n_train=4, n_val=1, batch=2)
    two = finished(torchrun("detect", config, tmp_path / "det"), tmp_path / "det")
    assert two["last_map"] == single(tmp_path, config, "detect")["last_map"]


@pytest.mark.parametrize("n,batch,world", [(1437, 75, 2), (1437, 128, 3), (100, 10, 4),
                                           (23, 8, 1), (9, 4, 4), (5, 8, 2), (509, 255, 2)])
def test_compiled_training_code_serves_one_share_size_per_rank_on_every_rank_at_once(n, batch,
                                                                                      world):
    """`distributed.full_steps`, the steps that compiled training code serves: every step but
    a shorter last one, on every rank at once, and on each rank one size of share. With 509
    samples, batches of 255 on 2 ranks, rank 1's share of the last batch is its full share
    (127), which a rank-local test of the share's size took for a full step."""
    sizes = distributed.global_batch_sizes(n, batch, world)
    full = distributed.full_steps(sizes)
    assert full == [True] * (len(sizes) - 1) + [sizes[-1] == sizes[0]]
    for rank in range(world):
        shares = [len(s) for s in distributed.shard_batches(torch.arange(n), batch, rank, world)]
        assert len({share for share, f in zip(shares, full) if f}) == 1
    if (n, batch, world) == (509, 255, 2):
        last_shares = [len(distributed.shard_batches(torch.arange(n), batch, r, world)[-1])
                       for r in range(world)]
        assert last_shares == [127, 127] and not full[-1]


def test_a_global_batch_smaller_than_the_world_is_refused():
    """A global batch smaller than the process count is refused; one sample per process and
    step (optim.batch_size equal to the process count) is valid and not refused with it."""
    with pytest.raises(distributed.DistributedError, match="batch_size 2 .* 4 processes"):
        distributed.shard_batches(torch.arange(10), 2, 0, 4)
    distributed.check_global_batch(2, 2)
    assert distributed.global_batch_sizes(5, 2, 2) == [2, 2]
    assert [len(s) for s in distributed.shard_batches(torch.arange(5), 2, 1, 2)] == [1, 1]


def test_single_process_helpers_are_no_ops():
    sums = {"b": torch.tensor(3.0, dtype=torch.float64), "a": torch.tensor(1.5)}
    totals, count = distributed.reduce_sums(sums, 4)
    assert list(totals.items()) == [("b", 3.0), ("a", 1.5)] and count == 4  # order kept
    assert distributed.all_gather(torch.tensor(2.0)).tolist() == [2.0]
    assert distributed.gather_to_main("x") == ["x"] and distributed.broadcast_object(1) == 1
    assert distributed.is_main() and distributed.world_size() == 1


@pytest.mark.parametrize("name,current", [("cuda:1", "cuda:1"), ("cuda", None),
                                           ("cpu", None)])
def test_one_process_on_a_gpu_makes_it_the_current_device(monkeypatch, name, current):
    """One process on cuda:1 had left cuda:0 current: its loss copy's event was recorded on
    cuda:0's stream, so the host could read the copy before it landed (StepLosses.wait)."""
    made = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: made.append(str(device)))
    with distributed.session(name) as device:
        assert str(device) == (name if name != "cuda" else "cuda")
    assert made == ([current] if current else [])


def test_torchrun_variables_without_a_process_group_are_refused(tmp_path, tiny_config,
                                                                 monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(TrainingError, match="WORLD_SIZE=2 outside a process group"):
        Run(tiny_config("supervised"), tmp_path / "run")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(distributed.DistributedError, match="WORLD_SIZE='two'"):
        distributed.launched_world_size()


@pytest.mark.parametrize("n, batch, world", [(1437, 75, 2), (100, 10, 4), (509, 255, 2),
                                             (23, 8, 3), (6, 6, 4)])
def test_the_ranks_shards_partition_each_global_batch(n, batch, world):
    """Every sample of a global batch goes to exactly one rank (no overlap, nothing dropped).
    (The 2-process runs above find it too, in minutes.) The shares differ by at most one
    sample, the first `size % world` ranks taking the extra one, and every rank takes some:
    uneven shares had passed as long as they covered the batch."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    sizes = distributed.global_batch_sizes(n, batch, world)
    shards = [distributed.shard_batches(order, batch, r, world) for r in range(world)]
    start = 0
    for step, size in enumerate(sizes):
        got = torch.cat([shards[r][step] for r in range(world)])
        assert torch.equal(got, order[start:start + size])
        start += size
        shares = [len(shards[r][step]) for r in range(world)]
        assert shares == [size // world + (r < size % world) for r in range(world)], step


def test_each_rank_and_epoch_draws_its_own_dropout_and_drop_path(tmp_path, tiny_config,
                                                                  monkeypatch):
    """Under torchrun every rank reseeds the global generator (dropout, drop-path) with its
    rank (`_epoch_seed` stream 0): the same masks on every rank would repeat one draw. It is
    reseeded every epoch too, not once for all (every epoch had drawn the same masks)."""
    run = Run(tiny_config("supervised"), tmp_path / "unused")
    run.prepare()
    monkeypatch.setattr(Run, "train_batches", lambda self, epoch: iter([]))
    draws = []
    for rank, epoch in ((0, 0), (1, 0), (0, 1)):
        run.rank, run.world = rank, 2  # as rank 0 and 1 of two, without a process group
        run._train_epoch(epoch, 1, 2)
        draws.append(torch.rand(4))
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
