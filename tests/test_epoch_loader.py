"""Loaders whose workers serve every epoch (`EpochLoader`): each pass loads what it is given,
with its own seed, as a loader made for that pass would; the workers start once per run and
stop with it."""

from __future__ import annotations

import multiprocessing
import os

import pytest
import torch
from torch.utils.data import Dataset

from fixtures.formats import write_imagefolder
from relvit.data import loading, registry
from relvit.data.formats import DatasetLayoutError
from relvit.data.loading import EpochLoader, FileSplit, batches, file_loader, file_transform
from relvit.train.loop import Run

TRAIN = file_transform(registry.DATASETS["imagenet100"], 16, train=True)  # RandomResizedCrop + flip


class _Pids(Dataset):
    """Item i: (i, the process that loaded it)."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> tuple[int, int]:
        return index, os.getpid()


def _pass(loader: EpochLoader, index_batches: list[list[int]]) -> tuple[list[int], set[int]]:
    indices, pids = [], set()
    for batch_indices, batch_pids in loader.batches(index_batches):
        indices += batch_indices.tolist()
        pids |= set(batch_pids.tolist())
    return indices, pids


def test_the_workers_serve_every_pass_until_closed():
    loader = EpochLoader(_Pids(), workers=2)
    first, workers = _pass(loader, [[0, 1], [2, 3], [4, 5]])
    assert first == [0, 1, 2, 3, 4, 5] and len(workers) == 2 and os.getpid() not in workers
    again, same = _pass(loader, [[7, 6], [5], [4, 3]])
    assert again == [7, 6, 5, 4, 3] and same == workers
    loader.close()
    after, new = _pass(loader, [[0, 1], [2, 3]])
    assert after == [0, 1, 2, 3] and not new & workers
    loader.close()


def test_a_loader_for_one_pass_starts_its_workers_each_time():
    loader = EpochLoader(_Pids(), workers=2, persistent=False)
    _, first = _pass(loader, [[0, 1], [2, 3]])
    _, second = _pass(loader, [[0, 1], [2, 3]])
    assert len(first) == 2 and not first & second


def test_a_pass_left_unfinished_does_not_leak_into_the_next():
    """A pass left after its first batch (an error in the step, say) leaves batches in flight;
    the next pass gives its own batches only."""
    loader = EpochLoader(_Pids(), workers=2)
    next(loader.batches([[0], [1], [2], [3], [4], [5]]))
    assert _pass(loader, [[7], [6, 5]])[0] == [7, 6, 5]
    loader.close()


def test_a_pass_ended_by_a_later_one_raises_instead_of_taking_its_batches():
    """Two passes share the workers: the earlier one, resumed, had silently yielded the later
    one's batches and lost its own. Closing the loader ends a pass too."""
    loader = EpochLoader(_Pids(), workers=2)
    first = loader.batches([[0, 1], [2, 3], [4, 5]])
    assert next(first)[0].tolist() == [0, 1]
    second = loader.batches([[6], [7]])
    assert next(second)[0].tolist() == [6]
    with pytest.raises(RuntimeError, match="ended \\(by a later one"):
        next(first)
    assert next(second)[0].tolist() == [7]
    third = loader.batches([[0], [1]])
    next(third)
    loader.close()
    with pytest.raises(RuntimeError, match="by closing the loader"):
        next(third)


def test_each_pass_takes_its_own_seed(photos):
    """A pass of the kept workers crops as a loader made for that pass with its seed does."""
    loader = file_loader(photos, TRAIN, workers=2, seeded=True)
    n = len(photos.paths)
    for seed, order in ((7, torch.arange(n)), (8, torch.arange(n).flip(0)), (7, torch.arange(n))):
        kept = [images for images, _ in loader.batches([order[:3].tolist(), order[3:].tolist()],
                                                       seed)]
        fresh = [images for images, _ in batches(photos, order, [3, n - 3], TRAIN, workers=0,
                                                 seed=seed)]
        assert all(torch.equal(a, b) for a, b in zip(kept, fresh, strict=True)), seed
    loader.close()


def test_a_seeded_loader_needs_a_seed_and_a_plain_one_none(photos):
    with pytest.raises(ValueError, match="seeded loader given seed None"):
        next(file_loader(photos, TRAIN, seeded=True).batches([[0]]))
    with pytest.raises(ValueError, match="plain loader given seed 3"):
        next(file_loader(photos, TRAIN).batches([[0]], 3))


def test_a_damaged_image_in_a_worker_is_named_without_its_traceback(photos, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(photos.paths[0].read_bytes()[:40])
    split = FileSplit([photos.paths[1], broken], torch.zeros(2, dtype=torch.long))
    loader = file_loader(split, TRAIN, workers=2, seeded=True)
    with pytest.raises(DatasetLayoutError) as raised:
        list(loader.batches([[0], [1]], 5))
    assert "broken.jpg" in str(raised.value) and "Traceback" not in str(raised.value)
    loader.close()


@pytest.mark.parametrize("during", [None, "interrupt"])
def test_a_workers_death_during_an_interrupt_ends_the_run_as_the_interrupt(tmp_path, tiny_config,
                                                                          monkeypatch, during):
    """A process group's SIGTERM kills the kept workers too, and torch's SIGCHLD handler raises
    "DataLoader worker ... is killed by signal" wherever the main thread is: while Terminated is
    on its way out, that RuntimeError would replace it (exit 1 and a traceback, not 143)."""
    from relvit.interrupts import Terminated
    from relvit.train.loop import Run

    death = RuntimeError("DataLoader worker (pid 12345) is killed by signal: Terminated. ")

    def fail(*args):
        if during is None:
            raise death
        try:
            raise Terminated("signal SIGTERM")
        except Terminated:
            raise death

    run = Run(tiny_config("supervised"), tmp_path / "run", progress=False)
    monkeypatch.setattr(run, "_fit_epochs", fail)
    with pytest.raises(Terminated if during else RuntimeError):
        run.fit()


def test_a_run_starts_its_loader_workers_once_and_stops_them(tmp_path, tiny_config,
                                                             monkeypatch):
    """Three epochs of an image-file run: the training split's 2 workers and the evaluation
    split's 2 decode every image (workers started anew each epoch had been 9 processes here),
    and none is left when the run ends."""
    write_imagefolder(tmp_path / "images")
    record = tmp_path / "pids.txt"
    decode = loading.decode_image

    def decode_and_record(path):
        with open(record, "a") as out:
            out.write(f"{os.getpid()}\n")
        return decode(path)

    monkeypatch.setattr(loading, "decode_image", decode_and_record)
    before = set(multiprocessing.active_children())
    cfg = tiny_config("supervised", data={"name": "imagefolder", "folder": str(tmp_path / "images"),
                                          "image_size": 32, "workers": 2},
                      model={"patch_size": 8}, optim={"epochs": 3, "batch_size": 4})
    run = Run(cfg, tmp_path / "run", progress=False)
    run.fit()
    pids = set(record.read_text().split())
    assert 2 <= len(pids) <= 4 and str(os.getpid()) not in pids
    # stopped by the run, not when it is garbage-collected: it is alive here
    assert set(multiprocessing.active_children()) <= before and not run.loaders
