"""Each training step's loss on the host one step later, without draining the GPU's queue.

Reading a CUDA tensor on the host (`.item()`, `bool()`) waits for every kernel queued so far, so a
per-step finiteness check right after the forward pass keeps the host from queueing the backward
pass, the optimiser step and the next batch ahead of the GPU. `LaggedLosses` copies the loss to
pinned host memory behind a CUDA event as soon as it is queued and hands it back at the next
step, when that event (the end of the previous forward pass) is long past: the wait is for that
event alone, not for the work queued after it. On the CPU the copy is immediate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class StepLosses:
    """The losses of one step on the host: `values` [world] (every rank's), `index` (0-based)."""

    index: int
    values: torch.Tensor
    ready: torch.cuda.Event | None = None

    def wait(self) -> StepLosses:
        if self.ready is not None:
            self.ready.synchronize()
        return self


class LaggedLosses:
    """Hands back step t - 1's losses when step t's are pushed, and the last ones on `flush`."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.pending: StepLosses | None = None

    def push(self, losses: torch.Tensor, index: int) -> StepLosses | None:
        """Queue the copy of step `index`'s losses; return the previous step's, on the host."""
        host = torch.empty(losses.shape, dtype=losses.dtype, pin_memory=self.cuda)
        host.copy_(losses.detach(), non_blocking=self.cuda)
        ready = None
        if self.cuda:
            ready = torch.cuda.Event()
            ready.record()
        previous, self.pending = self.pending, StepLosses(index, host, ready)
        return previous.wait() if previous is not None else None

    def flush(self) -> StepLosses | None:
        """The losses still pending (the last step's), on the host; None when none are."""
        previous, self.pending = self.pending, None
        return previous.wait() if previous is not None else None
