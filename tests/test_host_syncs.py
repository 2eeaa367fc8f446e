"""The training step never waits for the GPU: the loss is read one step late, in-memory splits are
batched on the GPU, constants are made once. On CUDA, a whole epoch is run under torch's
sync-debug mode; on the CPU the same code paths run and their results are checked."""

from __future__ import annotations

import traceback
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from relvit.data.loading import Splits, TensorSplit, batches, on_device
from relvit.train import loop
from relvit.train.lagged import LaggedLosses

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]
# ops that read a tensor's values on the host, each a wait for the GPU on CUDA (`.item()`,
# `bool()`, `float()` of a tensor; data-dependent output sizes)
HOST_READS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select"}
RELVIT = Path(loop.__file__).parents[1]
OPTIM = Path(torch.optim.__file__).parent
# reads of tensors that live on the host on every device: the lagged loss copy that
# `_check_finite` reads, and the CPU-only AdamW's step counters (CUDA's fused AdamW has none)
HOST_SIDE = {"_check_finite"}


class _HostReads(TorchDispatchMode):
    """Counts the HOST_READS ops that relvit's code dispatches in a block, by the function of
    relvit that called them, leaving out torch.optim's and HOST_SIDE's."""

    def __init__(self) -> None:
        super().__init__()
        self.count: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.name() in HOST_READS:
            frames = [f for f in traceback.extract_stack()
                      if Path(f.filename).is_relative_to(RELVIT)
                      or Path(f.filename).is_relative_to(OPTIM)]
            caller = frames[-1] if frames else None
            if caller and Path(caller.filename).is_relative_to(RELVIT) \
                    and caller.name not in HOST_SIDE:
                self.count[f"{Path(caller.filename).name}:{caller.lineno} {caller.name}"] += 1
        return func(*args, **(kwargs or {}))


def _random_splits(spec, data, image_size: int) -> Splits:
    """Stand-in for `load_splits`: random digits-sized data (no scikit-learn needed)."""
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(512, 3, image_size, image_size, generator=gen)
    labels = torch.randint(0, 10, (512,), generator=gen)
    return Splits(TensorSplit(images, labels), {}, [str(c) for c in range(10)],
                  (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


@pytest.mark.parametrize("device", DEVICES)
def test_lagged_losses_hand_back_the_previous_step_on_the_host(device):
    lagged = LaggedLosses(torch.device(device))
    loss = torch.tensor([1.5], device=device)
    assert lagged.push(loss, 0) is None
    loss.add_(1.0)  # queued after the copy: the pushed value is a snapshot
    previous = lagged.push(torch.tensor([float("nan")], device=device), 1)
    assert previous.index == 0 and previous.values.device.type == "cpu"
    assert previous.values.tolist() == [1.5]
    last = lagged.flush()
    assert last.index == 1 and torch.isnan(last.values).all()
    assert lagged.flush() is None


@pytest.mark.parametrize("later_fails", [True, False])
def test_an_error_after_a_non_finite_step_reports_that_step(tmp_path, tiny_config, monkeypatch,
                                                            later_fails):
    """The check runs a step late; when the next step fails (weights broken by the NaN), the
    error names the non-finite step, not whatever failed after it. When it does not, the NaN
    of step 2 still stops the epoch at step 3 at the latest, naming step 2 (a check left to
    the epoch's end had passed unnoticed)."""
    original, calls = loop.Run.train_loss, [0]

    def train_loss(self, *args):
        calls[0] += 1
        if calls[0] == 3 and later_fails:
            raise RuntimeError("a later step failed")
        loss, stats, size = original(self, *args)
        return (loss * float("nan") if calls[0] == 2 else loss), stats, size

    monkeypatch.setattr(loop.Run, "train_loss", train_loss)
    monkeypatch.setattr(loop, "load_splits", _random_splits)
    run = loop.Run(tiny_config("supervised", optim={"batch_size": 32}), tmp_path / "run",
                   progress=False)
    with pytest.raises(loop.NonFiniteLossError, match="at epoch 1, step 2; no epoch had "
                       "finished, so no checkpoint is kept") as error:
        run.fit()
    assert calls[0] <= 3
    assert isinstance(error.value.__context__, RuntimeError) == later_fails
    assert not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.parametrize("device", DEVICES)
def test_in_memory_splits_batch_alike_on_the_gpu(device):
    gen = torch.Generator().manual_seed(0)
    split = TensorSplit(torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8, generator=gen),
                        torch.arange(10))
    placed = on_device(split, torch.device(device))
    assert placed.images.device.type == device
    if device == "cpu":
        assert placed is split
    order = torch.randperm(10, generator=gen)
    for (a, la), (b, lb) in zip(batches(split, order, [4, 4, 2], None),
                                batches(placed, order, [4, 4, 2], None)):
        assert torch.equal(a, b.cpu()) and torch.equal(la, lb.cpu())


@pytest.mark.parametrize("mode, fused", [("supervised", True), ("pretrain", True),
                                         ("pretrain", False)])
def test_host_reads_per_epoch_do_not_grow_with_its_steps(tmp_path, tiny_config, monkeypatch,
                                                         mode, fused):
    """The CPU's twin of the CUDA test below, which this machine cannot run: the reads of
    values on the host (each a GPU wait on CUDA) that relvit's code makes in an epoch of 4x
    the steps, by the function that makes them."""
    monkeypatch.setattr(loop, "load_splits", _random_splits)
    counts = []
    for batch in (128, 32):
        run = loop.Run(tiny_config(mode, optim={"batch_size": batch}), tmp_path / str(batch),
                       progress=False)
        run.prepare()
        run.model.relation_projections = fused
        steps = run.steps_per_epoch()
        run._train_epoch(0, steps, 2 * steps)
        with _HostReads() as reads:
            run._train_epoch(1, steps, 2 * steps)
        counts.append((steps, reads.count))
    (few_steps, few_reads), (many_steps, many_reads) = counts
    assert many_steps >= 4 * few_steps - 4 and many_reads == few_reads, counts


@CUDA
@pytest.mark.parametrize("mode, fused", [("supervised", True), ("pretrain", True),
                                         ("pretrain", False)])
def test_host_syncs_per_epoch_do_not_grow_with_its_steps(tmp_path, tiny_config, monkeypatch,
                                                         mode, fused):
    """An epoch of 4x the steps waits for the GPU as often (its end: sums, the epoch order);
    pretraining with the fused relation loss and with the plain one (`relation_accuracy`)."""
    monkeypatch.setattr(loop, "load_splits", _random_splits)
    counts = []
    for batch in (128, 32):
        cfg = tiny_config(mode, device="cuda", optim={"batch_size": batch})
        run = loop.Run(cfg, tmp_path / str(batch), progress=False)
        run.prepare()
        run.model.relation_projections = fused
        steps = run.steps_per_epoch()
        run._train_epoch(0, steps, 2 * steps)  # warm-up: caches, cuBLAS handles
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                run._train_epoch(1, steps, 2 * steps)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        # the sync-debug warnings, not torch's note that the mode is a prototype (first use)
        sites = Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught
                        if "synchronizing CUDA operation" in str(w.message))
        counts.append((steps, sum(sites.values()), dict(sites)))
    (few_steps, few_syncs, _), (many_steps, many_syncs, _) = counts
    assert many_steps >= 4 * few_steps - 4 and many_syncs == few_syncs, counts
