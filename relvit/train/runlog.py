"""A run directory's own log: each training process appends its log lines to <run>/train.log.

Snakemake deletes a job's log before it runs the job again, so the job log of a run that was
interrupted and resumed, or restarted by the scheduler, kept its last attempt only. The run
directory's train.log keeps them all: each process that trains the run appends a dated line
naming its start, then its relvit log lines, and a line naming what stopped it when an exception
did, after its traceback when the error is not one of relvit's own (those name the file, key or
value in their message; any other is a bug or a library's error, and the CLI prints only the
message of a ValueError, KeyError or OSError unless RELVIT_TRACEBACK is set). Lines logged before
the run directory exists (it is made once the start is settled) are held and written first; a
start refused before that writes nothing.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from relvit.layout import METRICS, RUN_LOG
from relvit.train.columns import VAL_BOX_MAP, VAL_LOSS, VAL_POSITIONS, VAL_RELATIONS

DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


def _now() -> str:
    return time.strftime(DATE_FORMAT)


class RunLogHandler(logging.Handler):
    """Appends formatted records to `out_dir`/train.log, holding them while the folder does not
    exist; `header` opens the lines of each folder it writes to (a folder moved aside with
    `--replace-changed` is followed by its replacement)."""

    def __init__(self, out_dir: Path, header: str):
        super().__init__(level=logging.INFO)
        self.out_dir, self.header = out_dir, header
        self.held: list[str] = [header]
        self.folder: int | None = None  # the inode of the folder written to
        self.broken = False  # a write failed (e.g. a full disk): the console has the lines
        self.setFormatter(logging.Formatter("%(asctime)s relvit: %(message)s", DATE_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        self.write(self.format(record))

    def write(self, line: str) -> None:
        """Append `line` (after the lines held) once the run directory exists."""
        self.held.append(line)
        self.write_held()

    def write_held(self) -> None:
        """Append the lines held if the run directory exists. A failed write is said once on
        stderr and ends the file's lines: the log must never stop the run."""
        if not self.held or self.broken:
            return
        try:
            folder = os.stat(self.out_dir).st_ino
        except FileNotFoundError:
            return
        if self.folder is not None and folder != self.folder:  # moved aside and made anew
            self.held.insert(0, self.header)
        try:
            with open(self.out_dir / RUN_LOG, "a", encoding="utf-8") as handle:
                handle.write("".join(f"{held}\n" for held in self.held))
        except OSError as error:
            self.broken = True
            print(f"relvit: {self.out_dir / RUN_LOG}: cannot append ({error}); the run's lines "
                  "from here on are on the console only", file=sys.stderr)
        self.held.clear()
        self.folder = folder


@contextmanager
def run_log(out_dir: str | Path, mode: str) -> Iterator[None]:
    """For the block, the "relvit" logger's lines from INFO up also go to the run directory's
    train.log, whatever the caller's logging configuration (the logger is set to INFO for the
    block if it was quieter)."""
    logger = logging.getLogger("relvit")
    handler = RunLogHandler(Path(out_dir), f"== {_now()} relvit {mode} started "
                                           f"(process {os.getpid()})")
    level = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        handler.write_held()  # the start's line, now if the folder exists (a resumed run)
        yield
    except BaseException as error:
        if _needs_traceback(error):
            trace = "".join(traceback.format_exception(error)).rstrip("\n")
            handler.write(f"{_now()} relvit: the traceback of what stopped the run:\n{trace}")
        said = f": {error}" if str(error) else ""  # Ctrl-C's KeyboardInterrupt says nothing
        handler.write(f"== {_now()} stopped by {type(error).__name__}{said}")
        raise
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _needs_traceback(error: BaseException) -> bool:
    """Whether train.log gets the traceback of `error`: not for an interrupt (Ctrl-C, SIGTERM)
    nor for relvit's own errors, whose messages say what to fix."""
    if isinstance(error, (KeyboardInterrupt, SystemExit)):
        return False
    return not type(error).__module__.startswith("relvit.")


def finished_line(out_dir: str | Path, metrics: dict) -> str:
    """A finished run's last log line: its time, what its table reports at the best and last
    epoch, and where every number is."""
    best, last, epoch = metrics["best"], metrics["last"], metrics.get("best_epoch")
    if "best_top1" in metrics:
        numbers = (f"top-1 {metrics['best_top1']:.2f} % at its best epoch ({epoch}), "
                   f"{metrics['last_top1']:.2f} % at the last")
    elif VAL_BOX_MAP in best:
        numbers = (f"box mAP {best[VAL_BOX_MAP]:.2f} AP points at its best epoch ({epoch}), "
                   f"{last.get(VAL_BOX_MAP, float('nan')):.2f} at the last")
    else:
        pretext = [f"{name} {100 * last[key]:.2f} %" for name, key in
                   (("relations", VAL_RELATIONS), ("positions", VAL_POSITIONS)) if key in last]
        numbers = (f"validation loss {best[VAL_LOSS]:.4f} at its best epoch ({epoch}); "
                   f"held-out pretext accuracy at the last: {', '.join(pretext) or 'none'}")
    return (f"finished {out_dir} in {metrics['wall_time_s']:.0f} s: {numbers}; every number in "
            f"{Path(out_dir) / METRICS}")
