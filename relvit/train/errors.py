"""Why a run stops: the errors of training and checkpoints. No torch import, so that the command
line can catch them without loading the training stack."""

from __future__ import annotations


FINETUNE_NEEDS_INIT = ("mode 'finetune' needs init_checkpoint (or --init PATH): the best.pt of a "
                      "pretrain run")


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or does not fit the model."""


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
