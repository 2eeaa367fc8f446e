"""The training loop shared by all modes: pretrain, finetune, supervised and joint (spec §3).

A run directory holds config.yaml, history.csv, last.pt (everything needed to resume), best.pt
(weights of the best epoch) and, once finished, metrics.json. Re-running a run directory resumes
from last.pt; every epoch reseeds its random streams from (seed, epoch), so a resumed run gives the
same numbers as an uninterrupted one.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from relvit.atomic import atomic_write_text
from relvit.compiled import compile_static, uses_cuda_graphs
from relvit.config import RunConfig, dump_config
from relvit.data.loading import (
    EpochLoader, Split, TensorSplit, dataset_folder, file_loader, file_transform, index_batches,
    is_worker_death, load_splits, on_device, tensor_batches, to_float_images,
)
from relvit.data.registry import get_dataset
from relvit.geometry import Geometry, run_geometry, run_identity
from relvit.layout import BEST, FINISHED, HISTORY, LAST, METRICS, RUN_CONFIG
from relvit.models.backbones import build_backbone
from relvit.models.relvit import RelViT, SSLTasks
from relvit.train import distributed, provenance
from relvit.train.changes import folder_changes, move_aside, take_back_replaced
from relvit.train.checkpoint import (
    atomic_save,
    attention_heads,
    file_digest,
    load_backbone,
    load_checkpoint,
    load_resume_state,
)
from relvit.train.columns import (TOP1, TRAIN, TRAIN_LOSS, VAL, VAL_BOX_MAP, VAL_LOSS,
                                   VAL_MASK_MAP, VAL_POSITIONS, VAL_RELATIONS, VAL_TOP1, column)
from relvit.train.errors import (FINETUNE_NEEDS_INIT, CheckpointError, NonFiniteLossError,
                                 TrainingError)
from relvit.train.finished import read_finished
from relvit.train.lagged import LaggedLosses, StepLosses
from relvit.train.objective import DrawnBatch, Objective
from relvit.train.runlog import finished_line, run_log
from relvit.train.runlock import run_lock
from relvit.train.schedule import learning_rate
from relvit.train.timing import TIMING_KEYS, InputWait, epoch_timing
from relvit.validate import SEED_LIMIT

log = logging.getLogger("relvit")
PROGRESS_EVERY_S = 60.0  # without the progress bar: a line a minute within an epoch
UNEVALUATED = "unevaluated"  # last.pt's key for an epoch trained whose evaluation failed


def build_model(cfg: RunConfig, geo: Geometry, num_classes: int) -> RelViT:
    """The run's backbone (its preset, sized by the run config) with RelViT's classifier and
    SSL heads for `geo`'s grid: the heads the run's mode trains."""
    m = cfg.model
    backbone = build_backbone(
        m.backbone, img_size=geo.image_size, patch_size=geo.patch_size, embed_dim=m.embed_dim,
        depth=m.depth, num_heads=m.num_heads, mlp_ratio=m.mlp_ratio, window_size=m.window_size,
        pos_embed=cfg.pos_embed, drop_rate=m.drop_rate, drop_path_rate=m.drop_path_rate,
    )
    s = cfg.ssl
    tasks = SSLTasks(*(cfg.uses_ssl and flag for flag in (s.relations, s.positions, s.distances,
                                                           s.angles)))
    return RelViT(backbone, num_classes if cfg.uses_classifier else None, tasks,
                  geo.num_positions)


def parameter_groups(model: nn.Module, decay_all: bool, weight_decay: float) -> list[dict]:
    """One group decaying everything (the original, Q9), or norms, biases and position
    parameters exempt (ViT's pos_embed and CLS token, Swin's relative position bias tables, as
    timm's `no_weight_decay`)."""
    if decay_all:
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]
    decay, keep = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exempt = param.ndim <= 1 or name.endswith(
            ("pos_embed", "cls_token", "relative_position_bias_table"))
        (keep if exempt else decay).append(param)
    return [{"params": decay}, {"params": keep, "weight_decay": 0.0}]


def _epoch_seed(seed: int, epoch: int, stream: int, rank: int = 0) -> int:
    """Seed of one random stream of an epoch; rank 0's streams are those of a single process.
    Streams: 0 the global generator, 1 the order, 2 the training draws, 3 evaluation's, 5 the
    per-sample transforms; 4 (the loader's, until loaders kept their workers) is unused."""
    return (seed * 1_000_003 + epoch * 7_919 + stream + rank * 104_729) % SEED_LIMIT


class Run:
    """One run directory: set-up, resume, the epoch loop and the final metrics.

    Under torchrun (see relvit.train.distributed) every process builds the same Run: the model
    is wrapped in DistributedDataParallel, each rank takes its share of every global batch
    (`optim.batch_size`) and of every evaluation split, and only rank 0 writes files.
    """

    def __init__(self, cfg: RunConfig, out_dir: Path, progress: bool | None = None,
                 replace_changed: bool = False):
        self.cfg, self.out_dir = cfg, Path(out_dir)
        self.replace_changed = replace_changed
        self.world, self.rank = distributed.world_size(), distributed.rank()
        if distributed.launched_world_size() != self.world:
            raise TrainingError("started by torchrun with WORLD_SIZE="
                                f"{distributed.launched_world_size()} outside a process group: "
                                "run through relvit.train.loop.train()")
        distributed.check_global_batch(cfg.optim.batch_size, self.world)
        self.progress = (sys.stderr.isatty() if progress is None else progress) and self.rank == 0
        self.dataset = get_dataset(cfg.data.name)
        self.geo = run_geometry(cfg)
        self.device = distributed.local_device(cfg.device)
        torch.manual_seed(cfg.seed)  # the initial weights depend on the seed only
        self.model = self.setup().to(self.device)
        self.train_model: nn.Module = self.model  # what training batches go through (DDP)
        self.eager_train_model: nn.Module = self.model  # train_model, never compiled
        self.step_losses = self._step_losses  # compiled as one region: compile_step
        self.eval_losses = self._eval_losses  # the same
        groups = parameter_groups(self.model, cfg.optim.decay_norm_and_bias,
                                  cfg.optim.weight_decay)
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.optim.lr,
                                           weight_decay=cfg.optim.weight_decay,
                                           fused=self.device.type == "cuda")
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {}
        self.elapsed = 0.0
        self.start_epoch = 0
        self.fresh_keys: list[str] = []
        self.init_digest: str | None = None  # sha256 of init_checkpoint when the run started
        self.unevaluated: dict[str, Any] | None = None  # last.pt's epoch trained, not evaluated
        self.earlier_peaks: dict[str, float | None] = {}  # peak memory of earlier processes
        self.finished: dict[str, Any] | None = None  # the record of a run finished already
        self.finished_history: list[dict[str, Any]] | None = None  # its last.pt's, if any
        self.loaders: dict[Any, EpochLoader] = {}  # file loaders, kept for every epoch

    # ----------------------------------------------------------------- what a task defines
    def setup(self) -> nn.Module:
        """Load the data and build the model (classification: RelViT on a dataset's splits)."""
        self.splits = load_splits(self.dataset, self.cfg.data, self.geo.image_size)
        self.objective = Objective(self.cfg, self.dataset, self.geo, self.splits.mean,
                                   self.splits.std)
        return build_model(self.cfg, self.geo, len(self.splits.classes))

    def backbone(self) -> nn.Module:
        """The backbone a pretrain checkpoint loads into."""
        return self.model.backbone

    def train_size(self) -> int:
        """Number of training samples."""
        return len(self.splits.train.labels)

    @functools.cached_property
    def train_split(self) -> Split:
        """The training split, held on the GPU when it is a small in-memory array (`on_device`)."""
        return on_device(self.splits.train, self.device)

    def steps_per_epoch(self) -> int:
        """The epoch's global batches: with several processes a last batch with fewer samples
        than processes is left out (`distributed.global_batch_sizes`), and the schedule's length
        counts the steps taken."""
        return len(distributed.global_batch_sizes(self.train_size(), self.cfg.optim.batch_size,
                                                  self.world))

    def train_batches(self, epoch: int) -> Iterator[Any]:
        """This rank's share of the epoch's training batches, in a seeded order."""
        train = self.train_split
        shards = self.shards(self.epoch_order(epoch))
        # data.augment: false trains on the evaluation transform (the pad-crop datasets' batched
        # augmentation reads the key in Objective)
        transform = file_transform(self.dataset, self.geo.image_size, train=self.cfg.data.augment)
        return self._batches(train, torch.cat(shards), [len(s) for s in shards], transform,
                             self.sample_stream(epoch))

    def _batches(self, split: Split, order: torch.Tensor, batch_size: int | list[int],
                 transform: Any, seed: int | None = None) -> Iterator[Any]:
        """`batches` of `split`, a file split's through the run's `EpochLoader` of it (one per
        split and kind of transform: its workers serve every epoch)."""
        pin = self.device.type == "cuda"
        if isinstance(split, TensorSplit):
            return tensor_batches(split, order, batch_size, pin)
        # a Compose's repr names its steps and their arguments; the loader holds the split, so
        # its id is not another's
        key = (id(split), repr(transform), seed is not None)
        if key not in self.loaders:
            self.loaders[key] = file_loader(split, transform, self.cfg.data.workers, pin,
                                            seeded=seed is not None)
        return self.loaders[key].batches(index_batches(order, batch_size), seed)

    def sample_stream(self, epoch: int) -> int:
        """Seed of the epoch's per-sample transform draws (`SeededSamples`): the same on every
        rank, so an image's augmentation depends on neither the loader workers nor the world."""
        return _epoch_seed(self.cfg.seed, epoch, 5)

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The epoch's seeded order of the training samples (the same on every rank)."""
        order_gen = torch.Generator().manual_seed(_epoch_seed(self.cfg.seed, epoch, 1))
        return torch.randperm(self.train_size(), generator=order_gen)

    def shards(self, order: torch.Tensor) -> list[torch.Tensor]:
        """This rank's indices of each global batch of `order` (distributed.shard_batches)."""
        return distributed.shard_batches(order, self.cfg.optim.batch_size, self.rank, self.world)

    def generator(self, epoch: int, stream: int, device: torch.device | None = None
                  ) -> torch.Generator:
        """A generator of this rank's random stream `stream` in `epoch`."""
        seed = _epoch_seed(self.cfg.seed, epoch, stream, self.rank)
        return torch.Generator(device=device or "cpu").manual_seed(seed)

    def train_loss(self, data: Any, generator: torch.Generator, full: bool = True
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        """Loss of one training batch, its statistics and its size. `full`: the step's global
        batch has the size of the epoch's first (`distributed.full_steps`, the same on every
        rank); compiled code serves those, and the epoch's last, shorter one runs eagerly."""
        images, labels = data
        labels = labels.to(self.device, non_blocking=True)
        drawn = self.objective.draw(self._images(images), labels, train=True, generator=generator)
        if full:
            loss, stats = self.step_losses(drawn)
        else:
            loss, stats = self.eager_step_losses(drawn)
        return loss, stats, len(labels)

    def _step_losses(self, drawn: DrawnBatch, model: nn.Module | None = None
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`Objective.step_losses` of `model`, by default the training model (bf16 autocast
        on CUDA by default)."""
        return self.objective.step_losses(self.train_model if model is None else model, drawn,
                                          autocast=self.cfg.autocast_on(self.device.type))

    def eager_step_losses(self, drawn: DrawnBatch) -> tuple[torch.Tensor,
                                                            dict[str, torch.Tensor]]:
        """`_step_losses` with nothing compiled (`compile: true` or not): the training model as
        it was before `compile_training`, the plain jitter and loss chunks. The epoch's last,
        shorter batch takes it: compiling the step for its shape too had cost 23-39 s per run
        on an H200, for one step an epoch (docs/performance.md)."""
        with self.objective.plain():
            return self._step_losses(drawn, self.eager_train_model)

    def _eval_losses(self, drawn: DrawnBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`Objective.step_losses` of the model, for evaluation (under `torch.no_grad`)."""
        return self._step_losses(drawn, self.model)

    def evaluation(self, epoch: int) -> dict[str, float]:
        """Validation entries of the epoch's history row ("val_*": the reported split)."""
        row = {}
        for i, (name, split) in enumerate(self.splits.evals.items()):
            prefix = VAL if i == 0 else name  # spec §5.3
            row.update({column(prefix, k): v for k, v in self.evaluate(split).items()})
        return row

    def selection(self) -> tuple[str, bool]:
        """The history key that picks best.pt, and whether higher is better."""
        if self.cfg.mode == "pretrain":  # the original keeps the lowest validation loss
            return VAL_LOSS, False
        return VAL_TOP1, True

    def task_metrics(self) -> dict[str, Any]:
        """metrics.json entries of this task."""
        last, best = self.history[-1], self.best
        metrics: dict[str, Any] = {"eval_split": list(self.splits.evals)[0],
                                   "classes": len(self.splits.classes)}
        if self.cfg.uses_ssl:
            metrics["pretext_positions"] = self.geo.num_positions
        if self.cfg.uses_classifier:
            metrics["best_top1"] = 100 * best[VAL_TOP1]
            metrics["last_top1"] = 100 * last[VAL_TOP1]
            for name in list(self.splits.evals)[1:]:  # e.g. Flowers-102 test beside val (Q18)
                metrics[f"{name}_top1_at_best"] = 100 * best[column(name, TOP1)]
                metrics[f"{name}_top1_last"] = 100 * last[column(name, TOP1)]
        return metrics

    # ----------------------------------------------------------------- set-up and resume
    def prepare(self) -> None:
        """Resume from last.pt if present, else initialise (loading the pretrain backbone).

        The run directory is made only once the start is settled: a refused --init or config
        leaves no empty folder behind."""
        # last.pt, else last.prev.pt; a damaged one is moved aside, never loaded
        state = load_resume_state(self.out_dir, move_aside=distributed.is_main())
        diffs, record = folder_changes(self.cfg, self.out_dir, state,
                                       read_finished(self.out_dir))
        if diffs and self.replace_changed:
            distributed.barrier()  # every rank has read last.pt before it moves
            if distributed.is_main():
                move_aside(self.out_dir, diffs)
            state, record, diffs = None, None, []
        if (not state and not record and self.replace_changed
                and take_back_replaced(self.cfg, self.out_dir)):
            state = load_resume_state(self.out_dir, move_aside=distributed.is_main())
            record = read_finished(self.out_dir)
        if diffs:
            raise TrainingError(
                f"{self.out_dir} holds a run with another config ({'; '.join(diffs[:5])}); "
                "use another --out, delete that directory, or pass --replace-changed"
            )
        if record:
            self.finished = record
            self.finished_history = state["history"] if state else None
            return
        folders = [name for name in (RUN_CONFIG, HISTORY, BEST, FINISHED, METRICS)
                   if (self.out_dir / name).is_dir()]
        if folders:  # found before training, not at the first write of that file
            raise TrainingError(f"{self.out_dir}: {', '.join(folders)} "
                                f"{'is a folder' if len(folders) == 1 else 'are folders'} "
                                "where the run writes a file; move it away")
        if state:
            self._resume(state)
        elif self.cfg.mode == "finetune" and not self.cfg.init_checkpoint:
            raise CheckpointError(FINETUNE_NEEDS_INIT)
        elif (self.out_dir / BEST).is_file():  # e.g. its last*.pt deleted to save space
            log.warning("%s has neither a state to resume (last.pt, last.prev.pt) nor a finished "
                        "run's record: the run starts over, replacing its %s", self.out_dir, BEST)
        if not state and self.cfg.init_checkpoint:
            model = self.cfg.model
            heads = attention_heads(vars(model), model.backbone)
            try:
                self.fresh_keys = load_backbone(self.backbone(), Path(self.cfg.init_checkpoint),
                                                model.backbone, heads)
            except CheckpointError as err:  # the key, for a path given in the config file
                raise type(err)(f"init_checkpoint: {err}") from None
            self.init_digest = file_digest(self.cfg.init_checkpoint)
        if distributed.is_main():
            self.out_dir.mkdir(parents=True, exist_ok=True)
            dump_config(self.cfg, self.out_dir / RUN_CONFIG)
        distributed.barrier()  # the run directory is settled before any rank goes on
        if self.world > 1:
            self.train_model = self.eager_train_model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.cfg.compile and self.device.type == "cuda":
            if self.world > 1 and uses_cuda_graphs(self.cfg.compile_mode):
                log.warning("compile_mode %r records CUDA graphs, which were measured in "
                            "1-process runs only, never under DistributedDataParallel (%d "
                            "processes); compile_mode 'default' is the measured path",
                            self.cfg.compile_mode, self.world)
            self.compile_training()

    def compile_training(self) -> None:
        """`compile: true`: torch.compile the training model (`compile_model`), or with
        `compile_step` the batch's build, the model and the losses as one region
        (`step_losses`), and the same for evaluation (`eval_losses`)."""
        if self.cfg.compile_step and self.world == 1:
            self.step_losses = compile_static(self._step_losses, mode=self.cfg.compile_mode)
            self.eval_losses = compile_static(self._eval_losses, mode=self.cfg.compile_mode)
            return
        if self.cfg.compile_step:  # a compiled region around DDP's forward was never tried
            log.warning("compile_step: under DistributedDataParallel (%d processes) only the "
                        "model is compiled; the batch's build and the losses run eagerly",
                        self.world)
        self.train_model = self.compile_model(self.train_model)

    def compile_model(self, model: nn.Module) -> nn.Module:
        """The training model under `compile: true`: static shapes (`compile_static`), as
        classification batches come in two shapes only; torch.compile's mode `compile_mode`."""
        return compile_static(model, mode=self.cfg.compile_mode)

    def _resume(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        # fused AdamW as this device runs it, set in the saved groups, from which
        # load_state_dict takes it and by which it puts each `step` (fused: on the parameter's
        # device); set after loading, a CPU run resumed on a GPU had its steps on the CPU
        saved, fused = state["optimizer"], self.device.type == "cuda"
        self.optimizer.load_state_dict(
            {**saved, "param_groups": [{**g, "fused": fused} for g in saved["param_groups"]]})
        self.earlier_peaks = state.get("peak_memory", {})
        self.history, self.best = state["history"], state["best"]
        self.elapsed, self.start_epoch = state["elapsed"], state["epoch"]
        self.fresh_keys = state.get("fresh_keys", [])
        self.init_digest = state.get("init_sha256")
        self.unevaluated = state.get(UNEVALUATED)
        log.info("resuming %s after epoch %d%s", self.out_dir, self.start_epoch,
                 ", whose evaluation comes first" if self.unevaluated else "")
        self._settle_best()
        if not distributed.is_main():  # the warnings below, once
            return
        if state.get("world_size", 1) != self.world:
            log.warning("%s ran on %d process(es) so far, now %d: the random streams change, so "
                        "the numbers will not match an uninterrupted run exactly", self.out_dir,
                        state.get("world_size", 1), self.world)
        threads = state.get("threads")
        if self.device.type == "cpu" and threads and threads != torch.get_num_threads():
            log.warning("%s ran on %d CPU threads so far, now %d: the sums' order changes, so "
                        "the numbers will not match an uninterrupted run bit for bit",
                        self.out_dir, threads, torch.get_num_threads())

    def _settle_best(self) -> None:
        """On resuming, make sure best.pt holds the epoch that the resumed record calls best:
        if that is the epoch resumed after, write it from last.pt's weights (a kill may have
        come before best.pt); otherwise CheckpointError if best.pt holds another epoch (a run
        killed between the two writes before their order changed, or last.pt lost)."""
        recorded = self.best.get("epoch")
        if recorded is None or not distributed.is_main():
            return
        path = self.out_dir / BEST
        if recorded == self.start_epoch:
            atomic_save(self._weights(recorded), path)
            return
        gone = (f"epoch {recorded}'s weights, the best of the run resumed after epoch "
                f"{self.start_epoch}, are gone: move {self.out_dir} aside to train it again")
        try:
            held = load_checkpoint(path).get("epoch")
        except CheckpointError as err:
            raise CheckpointError(f"{err}; {gone}") from None
        if held != recorded:
            raise CheckpointError(f"{path} holds epoch {held}: {gone}")

    # ----------------------------------------------------------------- the loop
    def fit(self, stop_after: int | None = None) -> dict[str, Any] | None:
        """Train to the last epoch (or stop after `stop_after` more epochs, returning None)."""
        self.prepare()
        if self.finished is not None:
            return self.restore_finished()
        cfg = self.cfg
        steps = self.steps_per_epoch()
        if distributed.is_main():
            processes = f" ({self.world} processes)" if self.world > 1 else ""
            log.info("training %s: %s, epochs %d-%d of %d, %d steps of batch %d each, on %s%s, "
                     "%s parameters", self.out_dir, cfg.mode, self.start_epoch + 1,
                     cfg.optim.epochs, cfg.optim.epochs, steps, cfg.optim.batch_size,
                     provenance.device_name(self.device), processes,
                     f"{sum(p.numel() for p in self.model.parameters()):,}")
        # with the progress bar, log lines go through tqdm (above the bar, with their time)
        with logging_redirect_tqdm() if self.progress else nullcontext():
            try:
                return self._fit_epochs(steps, stop_after)
            except RuntimeError as err:
                # workers killed by a process group's SIGTERM: torch's SIGCHLD handler may
                # raise while the Terminated it brought is still on its way out
                interrupt = _interrupt_behind(err)
                if interrupt is None:
                    raise
                raise interrupt from None
            finally:
                self.close_loaders()

    def close_loaders(self) -> None:
        """Stop the run's loader workers (`EpochLoader`)."""
        for loader in self.loaders.values():
            loader.close()
        self.loaders.clear()

    def _fit_epochs(self, steps: int, stop_after: int | None) -> dict[str, Any] | None:
        cfg, done, started_at = self.cfg, 0, len(self.history)
        if self.unevaluated is not None:  # trained in an earlier call, whose evaluation failed
            trained, self.unevaluated = self.unevaluated, None
            self._end_epoch(self.start_epoch - 1, trained, started_at)
        for epoch in range(self.start_epoch, cfg.optim.epochs):
            started = time.perf_counter()
            train_stats, lr, timing = self._train_epoch(epoch, steps, steps * cfg.optim.epochs)
            row = {"epoch": epoch + 1, "lr": lr,
                   **{column(TRAIN, k): v for k, v in train_stats.items()}}
            trained = {"row": row, "timing": timing, "train_time_s": time.perf_counter() - started}
            self._end_epoch(epoch, trained, started_at)
            done += 1
            if stop_after is not None and done >= stop_after and epoch + 1 < cfg.optim.epochs:
                return None
        return self.finish()

    def _end_epoch(self, epoch: int, trained: dict[str, Any], started_at: int) -> None:
        """Evaluate a trained epoch, record it and write last.pt (and best.pt if it is the best).

        `trained` holds the epoch's history row so far, its `timing` and `train_time_s`. If the
        evaluation fails in this process (a damaged image of the split, say; rank 0's, under
        torchrun), last.pt keeps the epoch's training with `trained` (`_keep_unevaluated`),
        and the resume evaluates it first: the evaluation's draws are fixed, so its numbers are
        those of an uninterrupted run. An interrupt is not caught: it loses the epoch."""
        evaluating = time.perf_counter()
        try:
            evaluated = self.evaluation(epoch)
        except Exception:
            self._keep_unevaluated(epoch + 1, trained)
            raise
        eval_time = time.perf_counter() - evaluating
        row = {**trained["row"], **evaluated, "epoch_time_s": trained["train_time_s"] + eval_time,
               **trained["timing"], "eval_time_s": eval_time}
        self.elapsed += row["epoch_time_s"]
        self.history.append(row)
        self._log_epoch(row, started_at)
        new_best = self._is_best(row)
        if new_best:
            self.best = row
        # last.pt first: a kill before best.pt leaves the best epoch's weights in last.pt, and
        # the resume writes best.pt from them (_settle_best)
        self._save_last(epoch + 1)
        if new_best and distributed.is_main():
            atomic_save(self._weights(epoch + 1), self.out_dir / BEST)

    def _keep_unevaluated(self, epoch: int, trained: dict[str, Any]) -> None:
        """Rank 0 writes last.pt after epoch `epoch`'s training, with `trained` to evaluate it
        on resuming; history.csv stays as it was. No barrier: the other ranks may be stopped
        in the failed evaluation. A failure to write is logged, never raised over the
        evaluation's own error."""
        if not distributed.is_main():
            return
        try:
            atomic_save({**self._resume_state(epoch), UNEVALUATED: trained},
                        self.out_dir / LAST, keep_previous=True)
        except Exception as err:  # a full disk, say: the evaluation's error is the one to see
            log.warning("%s: epoch %d's evaluation failed, and its training could not be kept "
                        "either (%s)", self.out_dir, epoch, err)
            return
        log.warning("%s: epoch %d's evaluation failed; %s keeps its training, and the same "
                    "command evaluates it first", self.out_dir, epoch, LAST)

    def _images(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        return to_float_images(images, self.geo.image_size)

    def _train_epoch(self, epoch: int, steps: int,
                     total_steps: int) -> tuple[dict[str, float], float, dict[str, float]]:
        """One epoch of training: the mean training statistics, the last learning rate and the
        epoch's timing (`epoch_timing`: images/s, the share spent waiting for batches)."""
        cfg = self.cfg
        # dropout, drop-path (file transforms are seeded per sample: sample_stream)
        torch.manual_seed(_epoch_seed(cfg.seed, epoch, 0, self.rank))
        aug_gen = self.generator(epoch, 2, self.device)
        global_sizes = distributed.global_batch_sizes(self.train_size(), cfg.optim.batch_size,
                                                      self.world)
        full = distributed.full_steps(global_sizes)
        self.train_model.train()
        sums = StatSums()
        seen, lr = 0, cfg.optim.lr
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}", leave=False,
                   disable=not self.progress, file=sys.stderr)
        lagged = LaggedLosses(self.device)  # the finiteness check reads step i - 1's loss
        wait, started = InputWait(), time.perf_counter()
        reported = started
        for i, data in enumerate(wait.iterate(self.train_batches(epoch))):
            step = epoch * steps + i
            lr = learning_rate(step, total_steps, cfg.optim)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            try:
                loss, stats, size = self.train_loss(data, aug_gen, full[i])
            except Exception:  # weights a non-finite step broke: report that step instead
                self._check_finite(lagged.flush(), epoch)
                raise
            previous = lagged.push(distributed.all_gather(loss.detach().float()), i)
            self._check_finite(previous, epoch)
            self.optimizer.zero_grad(set_to_none=True)
            if self.world > 1:  # DDP averages over ranks: weigh each by its share of the batch
                loss = loss * (self.world * size / global_sizes[i])
            loss.backward()
            if cfg.optim.clip_grad > 0:
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.clip_grad)
            self.optimizer.step()
            sums.add(stats, size)
            seen += size
            bar.update(1)
            if self.progress and previous is not None:
                bar.set_postfix(loss=f"{previous.values[0]:.3f}")
            elif not self.progress and distributed.is_main():
                reported = self._report_steps(epoch, i + 1, steps, seen, started, reported)
        self._check_finite(lagged.flush(), epoch)
        bar.close()
        totals, seen = distributed.reduce_sums(sums.by_key(), seen)  # waits for the GPU
        timing = epoch_timing(seen, time.perf_counter() - started, wait.seconds)
        return _means(totals, seen), lr, timing

    def _report_steps(self, epoch: int, done: int, steps: int, seen: int, started: float,
                      reported: float) -> float:
        """Without the progress bar (log files, Snakemake's job logs): a line every
        PROGRESS_EVERY_S seconds within an epoch, with its step, rate and time left (no loss:
        reading it would wait for the GPU); returns when the last line was written."""
        now = time.perf_counter()
        if now - reported < PROGRESS_EVERY_S or done == steps:
            return reported
        left = (now - started) * (steps - done) / done
        evaluated = [row["eval_time_s"] for row in self.history  # detection: some epochs
                     if any(key.startswith(column(VAL, "")) for key in row)]
        last = f" (the last took {_duration(evaluated[-1])})" if evaluated else ""
        log.info("epoch %d/%d: step %d/%d, %s images/s, training done in %s, then evaluation%s",
                 epoch + 1, self.cfg.optim.epochs, done, steps,
                 f"{seen * self.world / (now - started):,.0f}", _duration(left), last)
        return now

    def _check_finite(self, losses: StepLosses | None, epoch: int) -> None:
        """Stop, every rank at the same step, when any rank's loss of that step is not finite.

        `losses` come from `LaggedLosses`, one step late: the check never waits for the GPU.
        """
        if losses is None or bool(torch.isfinite(losses.values).all()):
            return
        values, step = losses.values, losses.index + 1
        shown = f"{values[0].item()}" if self.world == 1 else f"{values.tolist()} (by rank)"
        kept = (f"last.pt (after epoch {epoch}) and best.pt are kept" if epoch else
                "no epoch had finished, so no checkpoint is kept")
        raise NonFiniteLossError(f"{self.out_dir}: non-finite loss {shown} at epoch "
                                 f"{epoch + 1}, step {step}; {kept}", epoch + 1, step)

    @torch.no_grad()
    def evaluate(self, split: Split) -> dict[str, float]:
        """Loss and accuracies on an evaluation split (no jitter, no shuffle, fixed draws)."""
        self.model.eval()
        gen = self.generator(0, 3, self.device)
        sums = StatSums()
        part = self.eval_part(len(split.labels))
        transform = file_transform(self.dataset, self.geo.image_size, train=False)
        for images, labels in self._batches(split, part, self.eval_batch_size(), transform):
            labels = labels.to(self.device, non_blocking=True)
            drawn = self.objective.draw(self._images(images), labels, train=False, generator=gen)
            if len(labels) == self.eval_batch_size():
                _, stats = self.eval_losses(drawn)
            else:  # the split's last, shorter batch, as in training (`eager_step_losses`)
                with self.objective.plain():
                    _, stats = self._eval_losses(drawn)
            sums.add(stats, len(labels))
        totals, n = distributed.reduce_sums(sums.by_key(), len(part))
        return _means(totals, n)

    def eval_part(self, n: int) -> torch.Tensor:
        """This rank's contiguous share of an evaluation split of `n` samples."""
        return torch.arange(n).tensor_split(self.world)[self.rank]

    def eval_batch_size(self) -> int:
        """Evaluation batches per rank: the global batch shared out."""
        return math.ceil(self.cfg.optim.batch_size / self.world)

    def _is_best(self, row: dict[str, Any]) -> bool:
        key, higher = self.selection()
        if key not in row:  # not evaluated this epoch
            return False
        if key not in self.best:
            return True
        worst = -math.inf if higher else math.inf  # a NaN epoch never keeps best.pt from others
        new, old = (v if math.isfinite(v) else worst for v in (row[key], self.best[key]))
        return new > old if higher else new < old

    # ----------------------------------------------------------------- files
    def _weights(self, epoch: int) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "epoch": epoch,
                "backbone_name": self.cfg.model.backbone, "mode": self.cfg.mode,
                "config": self.cfg.to_dict()}

    def _resume_state(self, epoch: int) -> dict[str, Any]:
        """What last.pt holds after epoch `epoch`: weights, optimizer and the run's record."""
        return {**self._weights(epoch), "optimizer": self.optimizer.state_dict(),
                "history": self.history, "best": self.best, "elapsed": self.elapsed,
                "fresh_keys": self.fresh_keys, "world_size": self.world,
                "threads": torch.get_num_threads(), "init_sha256": self.init_digest,
                "peak_memory": self._peak_memory()}

    def _peak_memory(self) -> dict[str, float | None]:
        """The run's peak memory: the largest of this process's and its earlier processes'
        (last.pt's), so that a resumed run (a SLURM requeue) reports its whole run's."""
        now = {"peak_memory_mb": provenance.peak_memory_mb(self.device),
               "peak_memory_reserved_mb": provenance.peak_memory_reserved_mb(self.device)}
        return {key: max((v for v in (value, self.earlier_peaks.get(key)) if v is not None),
                         default=None) for key, value in now.items()}

    def _save_last(self, epoch: int) -> None:
        """Rank 0 writes last.pt and history.csv; every rank waits until they are there."""
        if distributed.is_main():
            atomic_save(self._resume_state(epoch), self.out_dir / LAST, keep_previous=True)
            atomic_write_text(_history_csv(self.history), self.out_dir / HISTORY)
        distributed.barrier()

    def _log_epoch(self, row: dict[str, Any], started_at: int) -> None:
        """The epoch's line: its numbers, time and rate, and when the run should end (the mean
        epoch of this process's so far, times the epochs left)."""
        keys = [TRAIN_LOSS, VAL_LOSS, VAL_TOP1, VAL_RELATIONS, VAL_POSITIONS, VAL_BOX_MAP,
                VAL_MASK_MAP]
        parts = [f"{k}={row[k]:.4f}" for k in keys if row.get(k) is not None]
        epochs_here = [r["epoch_time_s"] for r in self.history[started_at:]]
        left = (self.cfg.optim.epochs - row["epoch"]) * sum(epochs_here) / len(epochs_here)
        log.info(f"epoch {row['epoch']}/{self.cfg.optim.epochs} lr={row['lr']:.2e} "
                 + " ".join(parts)
                 + f" ({row['epoch_time_s']:.1f}s; training {row['train_images_per_s']:,.0f}"
                 f" images/s, {100 * row['input_wait_share']:.0f} % waiting for batches; "
                 f"evaluation {row['eval_time_s']:.1f}s"
                 + (f"; run done in {_duration(left)})" if left else ")"))

    def restore_finished(self) -> dict[str, Any]:
        """A run finished already: metrics.json and finished.json from its record
        (`read_finished`), which keeps the provenance of the process that trained it;
        CheckpointError if its best.pt, the weights a later run starts from, is damaged."""
        best = self.out_dir / BEST
        load_checkpoint(best)  # the CRC of every record: raises, naming the damage
        if distributed.is_main():
            self._mend_finished_files()
            text = json.dumps(self.finished, indent=2) + "\n"
            # unchanged files are not written: a read-only folder of finished runs can be rerun
            for name in (FINISHED, METRICS):
                path = self.out_dir / name
                if _text_or_none(path) != text:
                    atomic_write_text(text, path)
            log.info("%s finished already: %s and %s kept from its record", self.out_dir,
                     METRICS, FINISHED)
        distributed.barrier()
        return self.finished

    def _mend_finished_files(self) -> None:
        """A finished run's config.yaml and history.csv, which the reports read, written again
        when damaged, cut short or missing: from this run's config (its record's, as checked)
        and from last.pt's history."""
        from relvit.report.provenance import file_config_hash

        config = self.out_dir / RUN_CONFIG
        try:
            same = file_config_hash(config) == provenance.config_hash(self.cfg.to_dict())
        except (OSError, ValueError):  # missing, unreadable, not a run config
            same = False
        if not same:
            log.warning("%s is not the run's config (damaged or missing): written again", config)
            dump_config(self.cfg, config)
        if self.finished_history is None:
            return
        history, text = self.out_dir / HISTORY, _history_csv(self.finished_history)
        if _text_or_none(history) != text:
            log.warning("%s is not the run's history (damaged or missing): written again from "
                        "%s", history, LAST)
            atomic_write_text(text, history)

    def finish(self) -> dict[str, Any]:
        """Write metrics.json (and its copy finished.json, first): best- and last-epoch numbers
        plus provenance. CheckpointError, before any record, if best.pt (what a later run
        starts from) is damaged, e.g. in a run resumed at its end."""
        cfg, last, best = self.cfg, self.history[-1], self.best
        if distributed.is_main():
            load_checkpoint(self.out_dir / BEST)  # the CRC of every record, as restore_finished
        skip = ("epoch", "lr", *TIMING_KEYS)
        metrics: dict[str, Any] = {
            **run_identity(cfg), "best_epoch": best.get("epoch"),
            "best": {k: v for k, v in best.items() if k not in skip},
            "last": {k: v for k, v in last.items() if k not in skip},
            **self.task_metrics(),
            "wall_time_s": self.elapsed,
            **self._peak_memory(),
            "device": provenance.device_name(self.device), "world_size": self.world,
            "num_parameters": sum(p.numel() for p in self.model.parameters()),
            "init_checkpoint": cfg.init_checkpoint, "init_sha256": self.init_digest,
            "fresh_backbone_keys": self.fresh_keys,
            # a resized copy (data.folder, or under data.root): pixels other than the paper's
            "data_copy": provenance.data_copy(dataset_folder(self.dataset, cfg.data)),
            "versions": provenance.versions(), "git_sha": provenance.git_sha(),
            **provenance.run_provenance(cfg.to_dict()),
        }
        if distributed.is_main():
            # history.csv again: a run killed between last.pt and history.csv at its last epoch
            # resumes straight into finish()
            atomic_write_text(_history_csv(self.history), self.out_dir / HISTORY)
            text = json.dumps(metrics, indent=2) + "\n"
            atomic_write_text(text, self.out_dir / FINISHED)
            atomic_write_text(text, self.out_dir / METRICS)
        distributed.barrier()
        return metrics


def _interrupt_behind(err: BaseException) -> KeyboardInterrupt | None:
    """The interrupt (Ctrl-C, Terminated) that a DataLoader worker's death was raised during,
    if any."""
    if not is_worker_death(err):
        return None
    seen = err.__context__
    while seen is not None and not isinstance(seen, KeyboardInterrupt):
        seen = seen.__context__
    return seen


def _text_or_none(path: Path) -> str | None:
    """A file's UTF-8 text as written (line ends kept), or None if it cannot be read."""
    try:
        return path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _duration(seconds: float) -> str:
    """A time to go, as a person reads it: 45 s, 12 min, 3.4 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


class StatSums:
    """Per-key float64 sums of weight * statistic over steps, on the statistics' device (no
    host sync). A step's statistics are stacked and added as one vector: 4 kernel launches per
    step however many there are, host work that a GPU step waits for when the host is the
    bottleneck."""

    def __init__(self) -> None:
        self.vectors: dict[tuple[str, ...], torch.Tensor] = {}  # per set of keys

    def add(self, stats: dict[str, torch.Tensor], weight: int) -> None:
        if not stats:
            return
        # floating-point statistics widen to float64 exactly, as one stacked vector; others
        # are made float64 first (stacking an integer with float32 would round it)
        values = [v.detach() if v.is_floating_point() else v.detach().double()
                  for v in stats.values()]
        term = torch.stack(values).to(torch.float64) * weight
        keys = tuple(stats)
        self.vectors[keys] = self.vectors[keys] + term if keys in self.vectors else term

    def by_key(self) -> dict[str, torch.Tensor]:
        """The sums as {key: float64 scalar}, in order of first appearance."""
        sums: dict[str, torch.Tensor] = {}
        for keys, vector in self.vectors.items():
            for key, value in zip(keys, vector.unbind()):
                sums[key] = sums[key] + value if key in sums else value
        return sums


def _means(sums: dict[str, float], count: int) -> dict[str, float]:
    return {key: value / max(count, 1) for key, value in sums.items()}


def _history_csv(history: list[dict[str, Any]]) -> str:
    """The rows as CSV; the columns of every row, in order of first appearance (a run resumed
    from an older version may have rows without the newer columns: those cells stay empty)."""
    buffer = io.StringIO()
    columns = list(dict.fromkeys(key for row in history for key in row))
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(history)
    return buffer.getvalue()


def train(cfg: RunConfig, out_dir: str | Path, stop_after: int | None = None,
          progress: bool | None = None, replace_changed: bool = False) -> dict[str, Any] | None:
    """Run (or resume) one training run; returns its metrics, or None if stopped early.

    A run directory made with another config is refused, or with `replace_changed` moved aside
    to `<dir>.replaced-<time>` (never deleted) and the run starts afresh.
    """
    run_class = Run
    if cfg.mode == "detect":
        from relvit.detection.train import DetectionRun as run_class
    # torchrun's rank 0 holds the lock (the others stop with it when it cannot) and writes the
    # run's train.log
    main = distributed.launched_rank() == 0
    with run_lock(out_dir) if main else nullcontext():
        with run_log(out_dir, cfg.mode) if main else nullcontext():
            with distributed.session(cfg.device):
                metrics = run_class(cfg, Path(out_dir), progress, replace_changed).fit(stop_after)
            if main and metrics is not None:  # train.log's last line too
                log.info(finished_line(out_dir, metrics))
            return metrics
