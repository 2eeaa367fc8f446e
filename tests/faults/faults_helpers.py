"""Fault injection: helpers shared by tests/faults (each test injects one real fault).

Training runs go through tests/faults/inject.py, the `relvit` command in a subprocess with the
fault of RELVIT_FAULT, so a kill is a real SIGKILL of a real training process.
"""

from __future__ import annotations

import atexit
import contextlib
import csv
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch
import yaml
from fixtures.runs import TINY_RUN

from relvit import cli
from relvit.config import load_config, merge
from relvit.train.loop import train
from relvit.train.timing import TIMING_KEYS

INJECT = Path(__file__).with_name("inject.py")
# metrics.json entries that describe the machine, not the run: its timings, and the checkout's
# commit, which an edit made while the suite runs turns "-dirty" between the reference run and
# a later one
VOLATILE = ("wall_time_s", "peak_memory_mb", "git_sha")
# a tiny pretrain run that draws every random stream (jitter, shuffle, drop path): 12 steps/epoch
FAULT_RUN = merge(TINY_RUN, {"mode": "pretrain", "optim": {"epochs": 3},
                             "ssl": {"shuffle": True}, "model": {"drop_path_rate": 0.1}})
STEPS_PER_EPOCH = 12  # 1437 digits / batch 128


def relvit(*args: Any, fault: str = "", timeout: float = 300) -> subprocess.CompletedProcess:
    """`relvit ARGS` in a subprocess, with the fault RELVIT_FAULT (tests/faults/inject.py), in a
    session of its own: a signal to its process group reaches it and its workers only."""
    env = {**os.environ, "RELVIT_FAULT": fault}
    return subprocess.run([sys.executable, str(INJECT), *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=timeout, start_new_session=True)


def train_cli(config: Path, out: Path, *extra: Any, mode: str = "pretrain",
              fault: str = "") -> subprocess.CompletedProcess:
    """One training run (or its resumption) by the CLI in a subprocess, as a rule starts it."""
    return relvit(mode, "--config", config, "--out", out, "--threads", "1", "--no-progress",
                  *extra, fault=fault)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread for the block, as train_cli's runs (`--threads 1`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_here(config: Path, out: Path, *extra: Any, mode: str = "pretrain") -> int:
    """The same run in this process (no process start-up: ~5 s less); returns the CLI's exit
    status."""
    with one_thread():
        return cli.main([mode, "--config", str(config), "--out", str(out), "--threads", "1",
                         "--no-progress", *map(str, extra)])


def train_epochs(config: Path, out: Path, epochs: int) -> None:
    """Train (or resume) the run of `config` in this process and stop after `epochs` more
    epochs, leaving the files a run killed after that epoch's checkpoint leaves."""
    with one_thread():
        assert train(load_config(config), out, stop_after=epochs, progress=False) is None


def write_config(path: Path, **overrides: Any) -> Path:
    """FAULT_RUN with `overrides` as a run-config YAML file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(merge(FAULT_RUN, overrides)))
    return path


def outcome(run_dir: Path) -> dict[str, Any]:
    """What must not depend on interruptions: metrics.json without the machine's timings, and
    history.csv without epoch times."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    with (run_dir / "history.csv").open() as handle:
        history = [{k: v for k, v in row.items() if k not in TIMING_KEYS}
                   for row in csv.DictReader(handle)]
    return {"metrics": {k: v for k, v in metrics.items() if k not in VOLATILE},
            "history": history}


@functools.cache
def reference() -> tuple[Path, dict[str, Any]]:
    """An uninterrupted FAULT_RUN (its config file and outcome), made once per test session, to
    compare interrupted runs to."""
    folder = Path(tempfile.mkdtemp(prefix="relvit-reference-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    config = write_config(folder / "run.yaml")
    assert train_here(config, folder / "run") == 0
    return config, outcome(folder / "run")
