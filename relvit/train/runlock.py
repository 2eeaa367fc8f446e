"""One process per run directory: a lock beside it, held while the run trains.

A snakemake killed without its jobs leaves their training running; a restarted snakemake (or a
second command by hand) would start another process on the same folder, and the two would
overwrite each other's checkpoints. The lock (`flock`, released by the kernel when its holder
dies, however it dies) refuses the second one, naming the first.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

from relvit.locks import folder_lock, lock_beside
from relvit.train.errors import TrainingError


class RunLockedError(TrainingError):
    """Another process is training the run directory."""


def lock_path(out_dir: Path) -> Path:
    """`.<name>.lock` beside the run directory (which may be moved aside while locked)."""
    return lock_beside(out_dir)


def run_lock(out_dir: str | Path) -> AbstractContextManager[bool]:
    """Hold the run directory's lock for the block; RunLockedError if another process holds it.

    In a folder this process may not write (an archived results tree, read-only), a lock file
    already there is locked read-only, and where none can be made the block runs unguarded, with
    a warning (`folder_lock`): a finished run is restored there, and a run that would train
    fails at its first write, naming the file."""
    out_dir = Path(out_dir)
    path = lock_path(out_dir)

    def busy(holder: str) -> RunLockedError:
        return RunLockedError(f"{out_dir} is being trained by {holder} (lock {path}): let it "
                              "finish or stop it; one process at a time trains a run directory")

    return folder_lock(path, out_dir, "training", busy)
