"""An epoch's throughput and how long its training loop waited for batches.

The wait is the time spent getting the next batch from the loader (DataLoader start-up included):
when it is a large share of the epoch, the input pipeline (decoding workers, or the batching of an
in-memory split) is what limits training, not the model step. With CUDA the step is asynchronous,
so a GPU-bound loop waits elsewhere (on the GPU) and shows a share near zero.
"""

from __future__ import annotations

import time
from typing import Iterable, Iterator, TypeVar

Item = TypeVar("Item")

# Per-epoch keys of history.csv that describe the machine, not the run: left out of metrics.json's
# best/last rows and of the comparisons of an interrupted run with an uninterrupted one.
TIMING_KEYS = ("epoch_time_s", "train_images_per_s", "input_wait_share", "eval_time_s")


class InputWait:
    """Adds up the seconds spent waiting for the items of the iterables it wraps."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def iterate(self, items: Iterable[Item]) -> Iterator[Item]:
        """`items`, one at a time; the time to get each (and to start iterating) is counted."""
        started = time.perf_counter()
        iterator = iter(items)
        while True:
            try:
                item = next(iterator)
            except StopIteration:
                self.seconds += time.perf_counter() - started
                return
            self.seconds += time.perf_counter() - started
            yield item
            started = time.perf_counter()


def epoch_timing(images: int, seconds: float, waited: float) -> dict[str, float]:
    """The history row's timing of one training epoch: images/s and the share spent waiting."""
    seconds = max(seconds, 1e-9)
    return {"train_images_per_s": images / seconds, "input_wait_share": waited / seconds}
