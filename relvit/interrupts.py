"""How a process stops when asked: Ctrl-C (SIGINT) and SIGTERM (a scheduler's time limit,
Snakemake's shutdown) both end a command as an interrupt, with what was finished kept (atomic
writes) and one line saying so; worker processes leave the interrupt to the main process."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main process is, so that it stops as on Ctrl-C."""


def ignore_interrupt(*_: Any) -> None:
    """In a worker process (a DataLoader's `worker_init_fn`, a pool's `initializer`): Ctrl-C
    reaches the whole process group, and is the main process's to handle (no traceback per
    worker, no worker dying under the main process's feet). SIGTERM, with which a loader ends a
    worker that does not stop, kills it at once again (a forked worker inherits the main
    process's `sigterm_as_interrupt`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(f"signal {signal.Signals(signum).name}")


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises Terminated (a KeyboardInterrupt) in the main thread;
    the previous handler comes back after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
