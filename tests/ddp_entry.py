"""torchrun entry point of tests/test_distributed.py: the `relvit` command, instrumented.

    torchrun --standalone --nproc-per-node 2 tests/ddp_entry.py MODE --config ... --out ...

Environment variables:
  RELVIT_TEST_WRITES=DIR     every run file a rank writes is logged, one name a line, in
                             DIR/rank<RANK>.txt (through the writers relvit.train.loop calls)
  RELVIT_TEST_STOP_AFTER=K   train(..., stop_after=K): stop after K epochs, as an interruption
  RELVIT_TEST_NAN_RANK=R     rank R's loss turns NaN at the second training step
  RELVIT_TEST_GROUP_FREED=1  each rank logs "rank R: process group freed: BOOL", whether its
                             process group object is gone once destroy_process_group returns
"""

from __future__ import annotations

import functools
import os
import sys
import weakref
from pathlib import Path
from typing import Any, Callable

import torch.distributed as dist

import relvit.train.loop as loop
from relvit import cli


def _recorded(write: Callable[..., Any], folder: Path) -> Callable[..., Any]:
    @functools.wraps(write)
    def wrapper(obj: Any, path: Path, *args: Any, **kwargs: Any) -> Any:
        with open(folder / f"rank{os.environ.get('RANK', '0')}.txt", "a") as log:
            log.write(f"{Path(path).name}\n")
        return write(obj, path, *args, **kwargs)

    return wrapper


def _instrument() -> None:
    if "RELVIT_TEST_WRITES" in os.environ:
        folder = Path(os.environ["RELVIT_TEST_WRITES"])
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("atomic_save", "atomic_write_text", "dump_config"):
            setattr(loop, name, _recorded(getattr(loop, name), folder))
    if "RELVIT_TEST_STOP_AFTER" in os.environ:
        loop.train = functools.partial(loop.train,
                                       stop_after=int(os.environ["RELVIT_TEST_STOP_AFTER"]))
    if "RELVIT_TEST_GROUP_FREED" in os.environ:
        destroy = dist.destroy_process_group

        def destroy_and_report(*args: Any, **kwargs: Any) -> None:
            group = weakref.ref(dist.group.WORLD)
            destroy(*args, **kwargs)
            print(f"rank {os.environ['RANK']}: process group freed: {group() is None}",
                  file=sys.stderr)

        dist.destroy_process_group = destroy_and_report
    if "RELVIT_TEST_NAN_RANK" in os.environ:
        nan_rank, original = int(os.environ["RELVIT_TEST_NAN_RANK"]), loop.Run.train_loss
        steps = [0]

        def train_loss(self: loop.Run, *args: Any) -> Any:
            loss, stats, size = original(self, *args)
            steps[0] += 1
            if steps[0] == 2 and self.rank == nan_rank:
                loss = loss * float("nan")
            return loss, stats, size

        loop.Run.train_loss = train_loss


if __name__ == "__main__":
    _instrument()
    sys.exit(cli.main())
