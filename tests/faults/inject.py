"""`python tests/faults/inject.py RELVIT-ARGS...`: the `relvit` command with one real fault
injected, chosen by the environment variable RELVIT_FAULT:

    kill-at-step:N       SIGKILL this process at its N-th training step (mid-epoch)
    int-at-step:N        SIGINT (Ctrl-C) this process at its N-th training step
    term-at-step:N       SIGTERM (a scheduler's time limit) this process at its N-th step
    group-term-at-step:N SIGTERM this process's group (as SLURM signals a job's processes, the
                         loader workers among them) at its N-th step; the process leads a
                         session of its own (`faults_helpers.relvit`)
    kill-in-save:K       at the K-th write of last.pt (a resume state): write half of its bytes,
                         flush them to disk, then SIGKILL this process (mid-checkpoint-write)
    fsize:BYTES          no file this process writes may grow past BYTES (RLIMIT_FSIZE: such a
                         write fails with EFBIG, as a full disk fails with ENOSPC)

Nothing is caught or faked after the fault: the process dies, or the write fails, for real.
"""

from __future__ import annotations

import io
import os
import resource
import signal
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's relvit

import torch  # noqa: E402

import relvit.train.loop as loop  # noqa: E402
from relvit import cli  # noqa: E402


def _signal_at_step(signum: int, n: int, group: bool = False) -> None:
    if signum == signal.SIGINT:
        # as in a foreground process: a shell starts a background job (`pytest &`) with SIGINT
        # ignored, Python keeps it so, and the Ctrl-C sent here would then change nothing
        signal.signal(signal.SIGINT, signal.default_int_handler)
    original, calls = loop.Run.train_loss, [0]

    def train_loss(self: loop.Run, *args: Any) -> Any:
        calls[0] += 1
        if calls[0] == n:
            os.killpg(0, signum) if group else os.kill(os.getpid(), signum)
        return original(self, *args)

    loop.Run.train_loss = train_loss


def _kill_in_save(k: int) -> None:
    original, saves = torch.save, [0]

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(obj, dict) and "optimizer" in obj:
            saves[0] += 1
            if saves[0] == k:
                buffer = io.BytesIO()
                original(obj, buffer, *args, **kwargs)
                data = buffer.getvalue()
                f.write(data[: len(data) // 2])
                f.flush()
                os.fsync(f.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
        original(obj, f, *args, **kwargs)

    torch.save = save


def _file_size_limit(size: int) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills us instead of EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))


FAULTS = {"kill-at-step": lambda n: _signal_at_step(signal.SIGKILL, n),
          "int-at-step": lambda n: _signal_at_step(signal.SIGINT, n),
          "term-at-step": lambda n: _signal_at_step(signal.SIGTERM, n),
          "group-term-at-step": lambda n: _signal_at_step(signal.SIGTERM, n, group=True),
          "kill-in-save": _kill_in_save, "fsize": _file_size_limit}

if __name__ == "__main__":
    fault = os.environ.get("RELVIT_FAULT")
    if fault:
        name, value = fault.split(":")
        FAULTS[name](int(value))
    sys.exit(cli.main())
