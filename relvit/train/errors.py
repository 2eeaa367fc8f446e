"""Why a run stops: the errors of training and checkpoints. No torch import, so that the command
line can catch them without loading the training stack."""

from __future__ import annotations


FINETUNE_NEEDS_INIT = ("mode 'finetune' needs init_checkpoint (or --init PATH): the best.pt of a "
                      "pretrain run")


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or does not fit the model."""


class CheckpointAccessError(OSError):
    """A checkpoint that cannot be opened or read (permissions, an I/O error): not damage, so it
    is never moved aside or replaced."""

    def __init__(self, path: object, err: OSError):
        super().__init__(f"checkpoint {path} cannot be read ({err.strerror or err}): it is left "
                         "as it was; once it is readable, the same command goes on")


class UpstreamFailedError(CheckpointError):
    """The run a checkpoint comes from failed (its metrics.json says so): its weights are
    half-trained and must not start another run."""


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, a run directory from another config, ...)."""


class NonFiniteLossError(TrainingError):
    """The loss became NaN or infinite at `epoch`, `step` (1-based); last.pt is the epoch before."""

    def __init__(self, message: str, epoch: int, step: int):
        super().__init__(message)
        self.epoch, self.step = epoch, step
