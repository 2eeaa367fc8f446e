"""Training: each mode lowers its loss, resume gives the same result, run files are complete."""

import csv
import json
import math
import re
import shutil
import time

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from relvit.train.changes import config_changes
from relvit.train.checkpoint import CheckpointError
from relvit.train.loop import (Run, StatSums, TrainingError, _epoch_seed, _means,
                               parameter_groups, train)
from relvit.train.schedule import learning_rate


def fixed_batch_losses(run: Run, steps: int) -> list[float]:
    """Loss on one fixed training batch over `steps` optimiser steps."""
    from relvit.train.objective import Objective

    splits = run.splits
    objective = Objective(run.cfg, run.dataset, run.geo, splits.mean, splits.std)
    gen = torch.Generator().manual_seed(0)
    batch = objective.batch(splits.train.images[:128], splits.train.labels[:128], True, gen)
    run.model.train()
    history = []
    for _ in range(steps):
        loss, _ = objective.losses(run.model(batch.images), batch)
        run.optimizer.zero_grad()
        loss.backward()
        run.optimizer.step()
        history.append(loss.item())
    return history


@pytest.mark.parametrize("mode", ["pretrain", "finetune", "supervised", "joint"])
def test_each_mode_lowers_its_loss(tmp_path, tiny_config, mode):
    overrides = {}
    if mode == "finetune":
        train(tiny_config("pretrain", optim={"epochs": 1}), tmp_path / "pre", progress=False)
        overrides["init_checkpoint"] = str(tmp_path / "pre" / "best.pt")
    run = Run(tiny_config(mode, **overrides), tmp_path / "run")
    run.prepare()
    losses = fixed_batch_losses(run, 30)
    assert losses[-1] < 0.85 * losses[0], losses


def test_mode_decides_the_loss_terms(tmp_path, tiny_config):
    terms = {}
    for mode in ("pretrain", "finetune", "supervised", "joint"):
        cfg = tiny_config(mode)
        run = Run(cfg, tmp_path / mode)
        out = run.model(torch.rand(2, 3, 16, 16))
        terms[mode] = sorted(out)
        assert run.cfg.pos_embed == (mode != "pretrain")
    assert terms["pretrain"] == ["positions", "relations"]
    assert terms["finetune"] == terms["supervised"] == ["logits"]
    assert terms["joint"] == ["logits", "positions", "relations"]


def test_pretrain_then_finetune_writes_complete_run_dirs(tmp_path, tiny_config):
    pre = train(tiny_config("pretrain"), tmp_path / "pre", progress=False)
    assert {"val_acc_rel", "val_acc_pos", "val_loss"} <= set(pre["best"])
    for name in ("config.yaml", "history.csv", "last.pt", "best.pt", "metrics.json"):
        assert (tmp_path / "pre" / name).is_file()
    cfg = tiny_config("finetune", init_checkpoint=str(tmp_path / "pre" / "best.pt"))
    fine = train(cfg, tmp_path / "fine", progress=False)
    assert 0 <= fine["last_top1"] <= fine["best_top1"] <= 100
    assert fine["fresh_backbone_keys"] == ["vit.pos_embed"]  # never trained upstream (spec §3)
    saved = json.loads((tmp_path / "fine" / "metrics.json").read_text())
    assert saved["best_top1"] == fine["best_top1"]
    for key in ("wall_time_s", "peak_memory_mb", "seed", "versions", "git_sha", "eval_split"):
        assert key in saved


def test_finetune_loads_the_pretrained_backbone(tmp_path, tiny_config):
    train(tiny_config("pretrain", optim={"epochs": 1}), tmp_path / "pre", progress=False)
    cfg = tiny_config("finetune", init_checkpoint=str(tmp_path / "pre" / "best.pt"))
    run = Run(cfg, tmp_path / "fine")
    run.prepare()
    saved = torch.load(tmp_path / "pre" / "best.pt", weights_only=True)["model"]
    own = run.model.state_dict()
    for key in ("backbone.vit.blocks.0.attn.qkv.weight", "backbone.vit.patch_embed.proj.weight"):
        assert torch.equal(own[key], saved[key])


def test_finetune_refuses_missing_or_mismatched_checkpoints(tmp_path, tiny_config):
    with pytest.raises(CheckpointError, match="needs init_checkpoint"):
        Run(tiny_config("finetune"), tmp_path / "a").prepare()
    missing = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match="nope.pt does not exist"):
        Run(tiny_config("finetune", init_checkpoint=str(missing)), tmp_path / "b").prepare()
    train(tiny_config("pretrain", optim={"epochs": 1}), tmp_path / "pre", progress=False)
    wider = tiny_config("finetune", init_checkpoint=str(tmp_path / "pre" / "best.pt"),
                        model={"embed_dim": 48})
    with pytest.raises(CheckpointError, match=r"does not fit the model: .*\(36.*vs model \(48"):
        Run(wider, tmp_path / "c").prepare()
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt cannot be read"):
        Run(tiny_config("finetune", init_checkpoint=str(junk)), tmp_path / "d").prepare()
    deeper = tiny_config("finetune", init_checkpoint=str(tmp_path / "pre" / "best.pt"),
                         model={"depth": 2})  # block 1 would have stayed at random init
    with pytest.raises(CheckpointError, match=r"missing tensor vit\.blocks\.1\."):
        Run(deeper, tmp_path / "e").prepare()
    (tmp_path / "pre" / "best.pt").unlink()  # its run finished: say how to train it anew
    with pytest.raises(CheckpointError, match=f"best.pt does not exist, though its run "
                                              f"finished; move {tmp_path / 'pre'} away"):
        Run(tiny_config("finetune", init_checkpoint=str(tmp_path / "pre" / "best.pt")),
            tmp_path / "f").prepare()
    for refused in "abcdef":  # a refused start leaves no empty run folder behind
        assert not (tmp_path / refused).exists()


@pytest.mark.parametrize("mode, key, scripted", [
    ("supervised", "val_acc_clf", [0.5, 0.75, 0.625]),  # the highest top-1 (Q17)
    ("pretrain", "val_loss", [3.0, 2.0, 2.5]),  # the lowest validation loss (Q20)
])
def test_the_best_epoch_is_the_selected_one_not_the_last(tmp_path, tiny_config, monkeypatch,
                                                          mode, key, scripted):
    """best.pt, best_epoch and best_top1 come from the epoch the selection picks: epoch 2 of
    3 here, whose number is not the last epoch's."""
    evaluation = Run.evaluation
    monkeypatch.setattr(Run, "evaluation",
                        lambda self, epoch: {**evaluation(self, epoch), key: scripted[epoch]})
    metrics = train(tiny_config(mode, optim={"epochs": 3}), tmp_path / "run", progress=False)
    assert metrics["best_epoch"] == 2 and metrics["best"][key] == scripted[1]
    assert torch.load(tmp_path / "run" / "best.pt", weights_only=True)["epoch"] == 2
    if mode == "supervised":
        assert (metrics["best_top1"], metrics["last_top1"]) == (75.0, 62.5)


def test_finetune_refuses_a_checkpoint_of_other_attention_heads(tmp_path, tiny_config):
    """3 or 6 heads of the same width: the same tensor shapes, split otherwise."""
    train(tiny_config("pretrain", optim={"epochs": 1}), tmp_path / "pre", progress=False)
    cfg = tiny_config("finetune", init_checkpoint=str(tmp_path / "pre" / "best.pt"),
                      model={"num_heads": 6})
    with pytest.raises(CheckpointError, match="trained with 3 attention heads, this run "
                                              "builds 6"):
        Run(cfg, tmp_path / "fine").prepare()


def test_a_finetune_resumed_with_its_init_spelt_otherwise_goes_on(tmp_path, tiny_config,
                                                                   monkeypatch):
    """`--init ./pre/best.pt`, then `--init pre/best.pt`: the run had been refused as one of
    another config, and --replace-changed, which the message offered, would have started it
    over. A run started without an init and resumed with one is still refused (a detection
    run: supervised, or from a pretraining)."""
    train(tiny_config("pretrain", optim={"epochs": 1}), tmp_path / "pre", progress=False)
    monkeypatch.chdir(tmp_path)
    first = tiny_config("finetune", optim={"epochs": 2}, init_checkpoint="./pre/best.pt")
    assert train(first, tmp_path / "fine", stop_after=1, progress=False) is None
    again = tiny_config("finetune", optim={"epochs": 2}, init_checkpoint="pre/best.pt")
    assert train(again, tmp_path / "fine", progress=False)["best_epoch"] in (1, 2)
    for saved, changed in (("./pre/best.pt", []), (None, ["init_checkpoint"])):
        config = {**again.to_dict(), "init_checkpoint": saved}
        assert [line.split(":")[0] for line in config_changes(again, config)] == changed


def test_a_finetune_from_an_unfinished_pretraining_says_so(tmp_path, tiny_config, caplog):
    """A best.pt whose run has not finished (last.pt beside it, no metrics.json) is loaded, but
    the finetune warns that it starts from that run's best epoch so far; once the run has
    finished, or for a checkpoint outside a run directory, nothing is said."""
    pretrain = tiny_config("pretrain", optim={"epochs": 2})
    assert train(pretrain, tmp_path / "pre", stop_after=1, progress=False) is None
    loose = tmp_path / "loose" / "best.pt"
    loose.parent.mkdir()
    shutil.copy(tmp_path / "pre" / "best.pt", loose)
    said = []
    for init in (tmp_path / "pre" / "best.pt", loose, None):
        if init is None:  # the pretraining finished
            train(pretrain, tmp_path / "pre", progress=False)
            init = tmp_path / "pre" / "best.pt"
        caplog.clear()
        with caplog.at_level("WARNING", logger="relvit"):
            Run(tiny_config("finetune", init_checkpoint=str(init)), tmp_path / "fine").prepare()
        said.append("its run has not finished" in caplog.text)
        shutil.rmtree(tmp_path / "fine")
    assert said == [True, False, False]


@pytest.mark.parametrize("mode", ["pretrain", "supervised"])
def test_resume_gives_the_same_result(tmp_path, tiny_config, mode):
    """A run stopped after epoch 1 and resumed ends as the uninterrupted one. The resume's
    `stop_after` reaching the last epoch still returns the metrics, and wall_time_s sums every
    epoch's time, the earlier process's included (it had counted the last process's only)."""
    cfg = tiny_config(mode, optim={"epochs": 3}, ssl={"shuffle": mode == "pretrain"},
                      model={"drop_path_rate": 0.1})
    whole = train(cfg, tmp_path / "whole", progress=False)
    assert train(cfg, tmp_path / "split", stop_after=1, progress=False) is None
    assert not (tmp_path / "split" / "metrics.json").exists()
    resumed = train(cfg, tmp_path / "split", stop_after=2, progress=False)
    assert resumed is not None and (tmp_path / "split" / "metrics.json").is_file()
    for key in ("best", "last", "best_epoch"):
        assert resumed[key] == whole[key]
    history = torch.load(tmp_path / "split" / "last.pt", weights_only=True)["history"]
    assert len(history) == 3
    assert resumed["wall_time_s"] == pytest.approx(sum(r["epoch_time_s"] for r in history))
    a = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "split" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_different_config(tmp_path, tiny_config):
    train(tiny_config("supervised", optim={"epochs": 2}), tmp_path / "run", stop_after=1,
          progress=False)
    with pytest.raises(TrainingError, match=r"another config \(optim.lr: 0.002 -> 0.001"):
        train(tiny_config("supervised", optim={"epochs": 2, "lr": 1e-3}), tmp_path / "run")


def test_resume_goes_on_across_execution_keys(tmp_path, tiny_config):
    """How a run executes (device, precision, loader workers, ...) may change between calls; the
    config hash leaves those keys out too."""
    from relvit.train.provenance import config_hash

    first = tiny_config("supervised", optim={"epochs": 2}, data={"workers": 0})
    train(first, tmp_path / "run", stop_after=1, progress=False)
    elsewhere = str(tmp_path / "datasets moved here")
    second = tiny_config("supervised", optim={"epochs": 2}, data={"workers": 3,
                                                                   "root": elsewhere},
                         precision="fp32")
    resumed = train(second, tmp_path / "run", progress=False)
    whole = train(first, tmp_path / "whole", progress=False)
    assert resumed["last"] == whole["last"]  # as one uninterrupted run
    assert resumed["config_hash"] == whole["config_hash"] == config_hash(second.to_dict())
    # metrics.json records them
    assert resumed["execution"] == {"device": "cpu", "compile": False, "compile_mode": "default",
                                    "compile_step": False, "precision": "fp32",
                                    "data.workers": 3, "data.root": elsewhere}


def test_megapatch_and_distance_tasks_train(tmp_path, tiny_config):
    cfg = tiny_config("pretrain", optim={"epochs": 1}, data={"image_size": 32},
                      ssl={"megapatch_side": 5, "distances": True, "angles": True})
    metrics = train(cfg, tmp_path / "mega", progress=False)
    assert {"val_loss_dist", "val_loss_angle", "val_acc_pos"} <= set(metrics["best"])


@pytest.mark.parametrize("backbone,model,image_size", [
    ("swin_tiny", {"embed_dim": 18, "depth": 2, "num_heads": 1, "window_size": 2,
                   "patch_size": 2}, 16),
    ("t2t_vit_14", {"embed_dim": 36, "depth": 1, "num_heads": 3}, 64),
])
def test_other_backbones_pretrain_with_megapatches_and_finetune(tmp_path, tiny_config, backbone,
                                                               model, image_size):
    model = {"backbone": backbone, **model}
    data = {"image_size": image_size}
    cfg = tiny_config("pretrain", model=model, data=data, optim={"epochs": 1},
                      ssl={"megapatch_side": 2, "shuffle": True})
    pre = train(cfg, tmp_path / "pre", progress=False)
    assert pre["pretext_positions"] == 4  # S x S mega-patches
    cfg = tiny_config("finetune", model=model, data=data, optim={"epochs": 1},
                      init_checkpoint=str(tmp_path / "pre" / "best.pt"))
    fine = train(cfg, tmp_path / "fine", progress=False)
    assert fine["fresh_backbone_keys"] == [] and fine["best_top1"] > 0


def test_step_schedule(tiny_config):
    optim = tiny_config("supervised", optim={"lr": 1.0, "schedule": "step", "epochs": 10,
                                             "step_epochs": 4, "step_gamma": 0.1,
                                             "warmup_fraction": 0.0}).optim
    for first_or_last in (0, 9):  # every step of an epoch has its epoch's LR
        per_epoch = [learning_rate(10 * e + first_or_last, 100, optim) for e in range(10)]
        assert per_epoch == pytest.approx([1.0] * 4 + [0.1] * 4 + [0.01] * 2)
    warm = tiny_config("supervised", optim={"lr": 1.0, "schedule": "step", "epochs": 10,
                                            "warmup_fraction": 0.1}).optim
    assert [learning_rate(t, 100, warm) for t in (0, 5, 10)] == pytest.approx([0.0, 0.5, 1.0])


@pytest.mark.parametrize("schedule", ["relvit", "cosine"])
def test_schedules(tiny_config, schedule):
    optim = tiny_config("supervised", optim={"lr": 1.0, "min_lr": 0.0,
                                             "schedule": schedule}).optim
    lrs = [learning_rate(t, 100, optim) for t in range(101)]
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.5)  # linear warm-up over 10 steps
    assert max(lrs) <= 1.0 and all(a > b for a, b in zip(lrs[10:], lrs[11:]))
    if schedule == "relvit":  # quarter cosine measured from step 0 (spec §5.1)
        assert lrs[10] == pytest.approx(torch.cos(torch.tensor(torch.pi / 20)).item())
        assert lrs[50] == pytest.approx(2 ** -0.5)
        assert lrs[99] == pytest.approx(math.cos(math.pi / 2 * 0.99))
    else:
        assert lrs[10] == pytest.approx(1.0) and lrs[55] == pytest.approx(0.5)
    assert lrs[100] == pytest.approx(0.0, abs=1e-12)  # the end: min_lr
    floor = tiny_config("supervised", optim={"lr": 1.0, "min_lr": 0.1,
                                             "schedule": schedule}).optim
    assert learning_rate(100, 100, floor) == pytest.approx(0.1)
    middle = 0.1 + 0.9 * (2 ** -0.5 if schedule == "relvit" else 0.5)
    assert learning_rate(50 if schedule == "relvit" else 55, 100, floor) == pytest.approx(middle)


def test_the_schedule_runs_over_the_steps_of_all_epochs(tmp_path, tiny_config):
    """Each epoch's last learning rate is the schedule's at that epoch's last step of the run's
    total: counted per epoch, the warm-up would restart every epoch and the LR never decay."""
    cfg = tiny_config("supervised", optim={"epochs": 3})
    train(cfg, tmp_path / "run", progress=False)
    steps = Run(cfg, tmp_path / "unused").steps_per_epoch()
    with (tmp_path / "run" / "history.csv").open() as handle:
        lrs = [float(row["lr"]) for row in csv.DictReader(handle)]
    expected = [learning_rate((e + 1) * steps - 1, 3 * steps, cfg.optim) for e in range(3)]
    assert steps > 1 and lrs == pytest.approx(expected)
    assert lrs[0] > lrs[1] > lrs[2]


def test_the_schedule_counts_the_global_batches_that_are_taken(tmp_path, tiny_config):
    """1437 digits in batches of 2: 719 steps in one process; with 2 processes the last batch of
    one sample is left out, and a schedule of 719 steps per epoch had skipped one step index
    every epoch and ended short of its last learning rate."""
    run = Run(tiny_config("supervised", optim={"batch_size": 2}), tmp_path / "unused")
    assert run.train_size() == 1437 and run.steps_per_epoch() == 719
    run.world = 2  # as under torchrun: the steps do not depend on the rank
    assert run.steps_per_epoch() == 718


@pytest.mark.parametrize("mode,values,best", [
    ("pretrain", [math.nan, 2.0, 1.0, 0.5, math.inf], 3),
    ("supervised", [math.nan, 0.2, 0.5, math.nan, 0.4], 2),
    ("supervised", [0.5, 0.75, 0.75, 0.625], 1),  # ties: the earlier epoch
    ("pretrain", [3.0, 2.0, 2.0, 2.5], 1)])
def test_the_best_epoch_is_never_non_finite_and_the_earlier_of_a_tie(tmp_path, tiny_config,
                                                                      mode, values, best):
    """A NaN first epoch had kept best.pt: every comparison with NaN is false. A tie keeps the
    earlier epoch, as Lightning's ModelCheckpoint compares strictly."""
    run = Run(tiny_config(mode), tmp_path / "unused")
    key, _ = run.selection()
    run.best = {}
    for epoch, value in enumerate(values):
        if run._is_best({key: value}):
            run.best = {key: value, "epoch": epoch}
    assert run.best["epoch"] == best


def test_each_epoch_stream_and_rank_draws_from_its_own_seed(tmp_path, tiny_config):
    """An epoch's order, augmentation, dropout and jitter come from `_epoch_seed`: the same seed
    for two epochs would repeat them, for two ranks would give every rank the same draws.
    `Run.generator` (augmentation, jitter) takes the rank: two ranks had drawn the same crops.
    `Run.sample_stream` (file transforms' per-sample seeds) changes with the epoch and is the
    same on every rank, whose samples' crops must not depend on the world."""
    seeds = [_epoch_seed(3, e, k, r) for e in range(50) for k in range(4) for r in range(8)]
    assert len(set(seeds)) == len(seeds)
    assert _epoch_seed(3, 7, 2) == _epoch_seed(3, 7, 2, rank=0)  # one process is rank 0
    run = Run(tiny_config("supervised"), tmp_path / "unused")
    streams = [run.sample_stream(epoch) for epoch in range(4)]
    assert len(set(streams)) == 4
    draws = []
    for rank in (0, 1):
        run.rank, run.world = rank, 2  # as rank 0 and 1 of two, without a process group
        draws.append(torch.rand(8, generator=run.generator(0, 2)))
        assert [run.sample_stream(epoch) for epoch in range(4)] == streams
    assert not torch.equal(draws[0], draws[1])


def test_epoch_means_are_sums_over_samples():
    assert _means({"loss": 6.0, "acc": 1.5}, 3) == {"loss": 2.0, "acc": 0.5}


def test_evaluation_draws_are_the_same_every_epoch(tmp_path, tiny_config):
    """The validation split's random draws (here mega-patch cuts) are fixed, so the epochs'
    validation losses, which pick best.pt, differ by the weights only."""
    cfg = tiny_config("pretrain", data={"image_size": 32}, ssl={"megapatch_side": 5})
    run = Run(cfg, tmp_path / "run")
    run.prepare()
    split = next(iter(run.splits.evals.values()))
    first = run.evaluate(split)
    run.history.append({"epoch": 1})
    assert run.evaluate(split) == first


def test_a_changed_config_replaces_the_run_only_when_asked(tmp_path, tiny_config):
    train(tiny_config("supervised", optim={"epochs": 1}), tmp_path / "run", progress=False)
    changed = tiny_config("supervised", optim={"epochs": 1, "lr": 1e-3})
    with pytest.raises(TrainingError, match="--replace-changed"):
        train(changed, tmp_path / "run", progress=False)
    metrics = train(changed, tmp_path / "run", progress=False, replace_changed=True)
    assert metrics is not None
    aside = list(tmp_path.glob("run.replaced-*"))
    assert len(aside) == 1 and (aside[0] / "metrics.json").is_file()  # finished work kept


def test_a_config_edit_undone_takes_the_finished_run_back(tmp_path, tiny_config, monkeypatch):
    """An edit undone had trained the run again, its finished twin left in a .replaced-*
    folder (GPU-days in the paper tier): that folder is moved back, and nothing is trained.
    Two replacements within a second had collided on the folder's name."""
    first = tiny_config("supervised", optim={"epochs": 1})
    edited = tiny_config("supervised", optim={"epochs": 1, "lr": 1e-3})
    run = tmp_path / "run"
    metrics = train(first, run, progress=False)
    weights = (run / "best.pt").read_bytes()
    monkeypatch.setattr(time, "strftime", lambda *args: "20261129-120000")  # one second
    train(edited, run, progress=False, replace_changed=True)
    (tmp_path / "run.replaced-20261129-120000" / "metrics.json").unlink()  # finished.json stays

    def no_training(*args):
        raise AssertionError("trained again")

    monkeypatch.setattr(Run, "_train_epoch", no_training)
    again = train(first, run, progress=False, replace_changed=True)
    assert again["best"] == metrics["best"] and (run / "best.pt").read_bytes() == weights
    assert sorted(p.name for p in tmp_path.glob("run.replaced-*")) == [
        "run.replaced-20261129-120000-2"]  # the edited run, kept aside in its turn
    # a twin whose best.pt is damaged is not taken back: the run trains anew
    aside = tmp_path / "run.replaced-20261129-120000-2"
    (aside / "best.pt").write_bytes(b"damaged")
    monkeypatch.undo()
    assert train(edited, run, progress=False, replace_changed=True) is not None
    assert (aside / "best.pt").read_bytes() == b"damaged"  # left where it was


def test_a_resumed_run_takes_the_device_s_adamw_and_keeps_the_run_s_peak_memory(
        tmp_path, tiny_config, monkeypatch):
    """A last.pt of a CUDA run (fused AdamW) resumed on the CPU had kept fused: the saved
    groups replace the new ones; and a resumed run reported its last process's peak memory."""
    from relvit.train import provenance

    cfg = tiny_config("supervised", optim={"epochs": 2})
    monkeypatch.setattr(provenance, "peak_memory_mb", lambda device: 1000.0)
    assert train(cfg, tmp_path / "run", progress=False, stop_after=1) is None
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["peak_memory"] == {"peak_memory_mb": 1000.0, "peak_memory_reserved_mb": None}
    for group in state["optimizer"]["param_groups"]:
        group["fused"] = True  # as a CUDA run saves it
    torch.save(state, tmp_path / "run" / "last.pt")
    monkeypatch.setattr(provenance, "peak_memory_mb", lambda device: 5.0)
    loaded = []  # what load_state_dict sees: it places each `step` by the saved groups' flag
    load = torch.optim.AdamW.load_state_dict
    monkeypatch.setattr(torch.optim.AdamW, "load_state_dict",
                        lambda self, saved: loaded.append(saved) or load(self, saved))
    run = Run(cfg, tmp_path / "run")
    run.prepare()
    assert [group["fused"] for group in loaded[0]["param_groups"]] == [False]
    assert not any(group["fused"] for group in run.optimizer.param_groups)
    assert run.fit()["peak_memory_mb"] == 1000.0


def test_a_redone_upstream_run_replaces_the_finetune_that_started_from_it(tmp_path,
                                                                         tiny_config):
    """The workflow reruns a changed pretrain run (--replace-changed), then its finetune with
    the same command: the finished finetune must not resume from weights of the old pretrain
    run's best.pt (same path, another file), whose numbers it would report again."""
    pre, fine = tmp_path / "pre", tmp_path / "fine"
    finetune = tiny_config("finetune", optim={"epochs": 1}, init_checkpoint=str(pre / "best.pt"))
    train(tiny_config("pretrain", optim={"epochs": 1}), pre, progress=False)
    train(finetune, fine, progress=False)
    train(tiny_config("pretrain", optim={"epochs": 1, "lr": 5e-3}), pre, progress=False,
          replace_changed=True)
    with pytest.raises(TrainingError, match="init_checkpoint .*another file than the one it "
                                            "started from"):
        train(finetune, fine, progress=False)
    again = train(finetune, fine, progress=False, replace_changed=True)
    assert len(list(tmp_path.glob("fine.replaced-*"))) == 1  # the old finetune, kept aside
    fresh = train(finetune, tmp_path / "fresh", progress=False)
    assert again["best"] == fresh["best"]
    # unchanged, a finished run only writes its metrics again
    assert train(finetune, fine, progress=False)["best"] == fresh["best"]


def test_a_run_killed_before_its_last_history_row_completes_it(tmp_path, tiny_config):
    """Killed between last.pt and history.csv at the last epoch, the rerun goes straight to
    finish(), which writes history.csv again."""
    cfg = tiny_config("supervised", optim={"epochs": 2})
    train(cfg, tmp_path / "run", progress=False)
    history = tmp_path / "run" / "history.csv"
    whole = history.read_text()
    history.write_text("\n".join(whole.splitlines()[:2]) + "\n")  # header + epoch 1
    for record in ("finished.json", "metrics.json"):  # finish() writes them after history.csv
        (tmp_path / "run" / record).unlink()
    train(cfg, tmp_path / "run", progress=False)
    assert history.read_text() == whole


def test_a_kill_before_best_pt_is_mended_on_resuming(tmp_path, tiny_config, monkeypatch):
    """best.pt had been written before last.pt: a kill between them, then a resume that did
    not pick the same epoch as best again, left best.pt holding an epoch that metrics.json did
    not call best. last.pt now comes first, and the resume writes best.pt from it."""
    from relvit.train import loop

    cfg = tiny_config("pretrain", optim={"epochs": 3})
    whole = train(cfg, tmp_path / "whole", progress=False)
    save = loop.atomic_save

    def killed_at_best(state, path, **kwargs):
        if path.name == "best.pt" and state["epoch"] > 1:
            raise KeyboardInterrupt
        return save(state, path, **kwargs)

    monkeypatch.setattr(loop, "atomic_save", killed_at_best)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "split", progress=False)
    killed = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    assert killed["best"]["epoch"] == killed["epoch"] > 1  # last.pt got there first
    monkeypatch.setattr(loop, "atomic_save", save)
    resumed = train(cfg, tmp_path / "split", progress=False)
    assert resumed["best_epoch"] == whole["best_epoch"]
    a = torch.load(tmp_path / "whole" / "best.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "best.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == whole["best_epoch"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_an_epoch_evaluated_on_resuming_keeps_its_own_number(tmp_path, tiny_config,
                                                            monkeypatch):
    """An epoch whose evaluation failed is evaluated first on resuming, and recorded as that
    epoch: best_epoch and best.pt name epoch 1, the better one, not the epoch after it."""
    evaluation, failing = Run.evaluation, [True]

    def scripted(self, epoch):
        if failing[0]:
            failing[0] = False
            raise TrainingError("evaluation failed")
        return {**evaluation(self, epoch), "val_acc_clf": [0.9, 0.1][epoch]}

    monkeypatch.setattr(Run, "evaluation", scripted)
    cfg = tiny_config("supervised", optim={"epochs": 2})
    with pytest.raises(TrainingError, match="evaluation failed"):
        train(cfg, tmp_path / "run", progress=False)
    metrics = train(cfg, tmp_path / "run", progress=False)
    assert metrics["best_epoch"] == 1
    assert torch.load(tmp_path / "run" / "best.pt", weights_only=True)["epoch"] == 1


def test_a_best_pt_of_another_epoch_than_the_resumed_record_is_refused(tmp_path, tiny_config):
    """What the old order of writes could leave: best.pt ahead of last.pt's record of its
    best epoch, whose weights are gone. Also a damaged best.pt that the resume cannot rewrite."""
    from relvit.train.checkpoint import atomic_save

    cfg = tiny_config("supervised", optim={"epochs": 3})
    run = tmp_path / "run"
    train(cfg, run, stop_after=2, progress=False)
    state = torch.load(run / "last.pt", weights_only=True)
    state["best"] = state["history"][0]  # the record's best: epoch 1; best.pt holds another
    atomic_save(state, run / "last.pt")
    best = torch.load(run / "best.pt", weights_only=True)
    best["epoch"] = 2
    atomic_save(best, run / "best.pt")
    with pytest.raises(CheckpointError, match=r"best.pt holds epoch 2: epoch 1's weights, the "
                       r"best of the run resumed after epoch 2, are gone: move .* aside"):
        train(cfg, run, progress=False)
    (run / "best.pt").write_bytes(b"damaged")
    with pytest.raises(CheckpointError, match=r"best.pt cannot be read.*; epoch 1's weights"):
        train(cfg, run, progress=False)


class _OpCount(TorchDispatchMode):
    """Non-view ATen ops dispatched in a block (about the kernel launches on a GPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += not func.is_view
        return func(*args, **(kwargs or {}))


def test_stat_sums_equal_per_key_sums_in_a_few_launches_per_step():
    """`StatSums` adds a step's statistics as one vector: the float64 sums of adding each on its
    own, bit for bit (an integer statistic exactly too), in 4 ops per step for 7 statistics (3
    for a key set's first step; one cast, product and sum each would be 21); a step with other
    keys adds its own vector, and `by_key` puts them together."""
    gen = torch.Generator().manual_seed(0)
    keys = ("loss", "loss_rel", "acc_rel", "acc_rel_all", "loss_pos", "acc_pos")
    steps = [{**{k: torch.rand((), generator=gen) for k in keys},
              "hits": torch.tensor(2**25 + i)} for i in range(5)]
    sums, expected = StatSums(), {}
    for i, stats in enumerate(steps):
        with _OpCount() as ops:
            sums.add(stats, 8 + i)
        assert ops.count == (3 if i == 0 else 4)
        for key, value in stats.items():
            term = value.to(torch.float64) * (8 + i)
            expected[key] = expected[key] + term if key in expected else term
    got = sums.by_key()
    assert list(got) == list(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected), (got, expected)
    assert got["hits"].item() == sum((2**25 + i) * (8 + i) for i in range(5))

    with _OpCount() as ops:
        sums.add({"loss": torch.tensor(1.0), "acc_clf": torch.tensor(0.5)}, 2)
        sums.add({}, 4)  # a step without statistics adds nothing
    assert ops.count == 3
    got = sums.by_key()
    torch.testing.assert_close(got["loss"], expected["loss"] + 2, rtol=1e-15, atol=0)
    assert got["acc_clf"].item() == 1.0 and list(got)[-1] == "acc_clf"


@pytest.mark.parametrize("backbone", ["vit_small", "swin_tiny"])
def test_parameter_groups_exempt_norms_biases_and_position_parameters(backbone):
    """`optim.decay_norm_and_bias: false`: matrices decay; 1-D tensors, ViT's pos_embed and CLS
    token and Swin's relative position bias tables (2-D) do not. The original decays all (Q9)."""
    from relvit.models.backbones import build_backbone

    model = build_backbone(backbone, 32, embed_dim=12, depth=4 if backbone == "swin_tiny" else 1,
                           num_heads=1, patch_size=2 if backbone == "swin_tiny" else 8,
                           **({"window_size": 2} if backbone == "swin_tiny" else {}))
    decay, keep = parameter_groups(model, False, 0.1)
    assert keep["weight_decay"] == 0.0
    kept = {id(p) for p in keep["params"]}
    names = {name for name, p in model.named_parameters() if id(p) in kept}
    matrices = {name for name, p in model.named_parameters() if id(p) not in kept}
    assert all(p.ndim >= 2 for p in decay["params"]) and matrices
    assert not any("norm" in name or name.endswith("bias") for name in matrices)
    position = {"vit_small": ("pos_embed", "cls_token"),
                "swin_tiny": ("relative_position_bias_table",)}[backbone]
    assert all(any(n.endswith(p) for n in names) for p in position)
    assert not any(n.endswith(position) for n in matrices)
    [everything] = parameter_groups(model, True, 0.1)
    assert len(everything["params"]) == len(list(model.parameters()))


def test_resuming_on_other_cpu_threads_is_said(tmp_path, tiny_config, caplog):
    """The CPU's thread count changes the order of its sums, so a run resumed on another count
    does not end bit for bit as an uninterrupted one: said, as a change of process count is."""
    cfg = tiny_config("supervised", optim={"epochs": 2})
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        train(cfg, tmp_path / "run", stop_after=1, progress=False)
        torch.set_num_threads(2)
        with caplog.at_level("WARNING", logger="relvit"):
            train(cfg, tmp_path / "run", progress=False)
    finally:
        torch.set_num_threads(threads)
    assert "ran on 1 CPU threads so far, now 2" in caplog.text


@pytest.mark.parametrize("progress", [False, True])
def test_a_run_says_what_it_trains_how_far_it_is_and_what_it_got(tmp_path, tiny_config, caplog,
                                                                  monkeypatch, progress):
    """Log files (no progress bar) had no line before the first epoch's end and none within an
    epoch; with the bar, epoch lines lost their time stamp (written past logging)."""
    import yaml

    import relvit.train.loop as loop
    from relvit.cli import main

    monkeypatch.setattr(loop, "PROGRESS_EVERY_S", 0.0)  # a line after every step
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_config("pretrain").to_dict()))
    run = tmp_path / "run"
    argv = ["pretrain", "--config", str(config), "--out", str(run), "--threads", "1"]
    monkeypatch.setattr(loop.sys.stderr, "isatty", lambda: progress)
    with caplog.at_level("INFO", logger="relvit"):
        assert main(argv + ([] if progress else ["--no-progress"])) == 0
    lines = [record.getMessage() for record in caplog.records]
    assert lines[0].startswith(f"training {run}: pretrain, epochs 1-2 of 2, ")
    assert ("epoch 1/2: step 1/" in caplog.text) is not progress  # the bar shows it instead
    if not progress:  # the time left counts the evaluation once an epoch has measured it
        assert re.search(r"epoch 1/2: step 1/\d+, [\d,]+ images/s, training done in "
                         r"\d[^,]*, then evaluation$", caplog.text, re.M)
        assert re.search(r"epoch 2/2: step 1/\d+, [\d,]+ images/s, training done in "
                         r"\d[^,]*, then evaluation \(the last took \d.*\)$", caplog.text, re.M)
    assert any(line.startswith("epoch 1/2 lr=") and line.endswith(" s)") for line in lines)
    finished = lines[-1]
    assert finished.startswith(f"finished {run} in ") and finished.endswith(
        f"every number in {run / 'metrics.json'}")
    assert "held-out pretext accuracy at the last: relations " in finished


def test_a_finetune_started_over_still_loads_its_init_checkpoint(tmp_path, tiny_config):
    """A finetune folder holding only best.pt and config.yaml (its last*.pt and records deleted)
    starts over: from the pretrain weights again, not from random ones (a mutant that loaded
    them only when no best.pt was there passed every test)."""
    train(tiny_config("pretrain"), tmp_path / "pre", progress=False)
    cfg = tiny_config("finetune", init_checkpoint=str(tmp_path / "pre" / "best.pt"))
    first = train(cfg, tmp_path / "fine", progress=False)
    for name in ("last.pt", "last.prev.pt", "finished.json", "metrics.json"):
        (tmp_path / "fine" / name).unlink()
    again = train(cfg, tmp_path / "fine", progress=False)
    assert again["init_sha256"] == first["init_sha256"] is not None
    assert again["fresh_backbone_keys"] == ["vit.pos_embed"]
    assert again["best_top1"] == first["best_top1"]  # the same start, the same run


@pytest.mark.parametrize("decay_all, wd", [(True, 0.05), (False, 0.3)])
def test_adamw_takes_the_configured_weight_decay(tmp_path, tiny_config, decay_all, wd):
    """optim.weight_decay reaches AdamW (its own default is 0.01); exempt params get 0."""
    cfg = tiny_config("supervised", optim={"weight_decay": wd, "decay_norm_and_bias": decay_all})
    groups = Run(cfg, tmp_path / "unused").optimizer.param_groups
    assert [g["weight_decay"] for g in groups] == ([wd] if decay_all else [wd, 0.0])


def test_a_resumed_finetune_keeps_its_trained_weights(tmp_path, tiny_config):
    """Resuming a finetune from last.pt must not load the pretrain backbone over it again."""
    train(tiny_config("pretrain", optim={"epochs": 1}), tmp_path / "pre", progress=False)
    cfg = tiny_config("finetune", optim={"epochs": 2},
                      init_checkpoint=str(tmp_path / "pre" / "best.pt"))
    assert train(cfg, tmp_path / "fine", stop_after=1, progress=False) is None
    saved = torch.load(tmp_path / "fine" / "last.pt", weights_only=True)["model"]
    run = Run(cfg, tmp_path / "fine")
    run.prepare()
    own = run.model.state_dict()
    assert all(torch.equal(own[k], saved[k]) for k in saved)


def test_each_epoch_takes_its_own_order_of_every_sample(tmp_path, tiny_config):
    """The order is reseeded per epoch (not the same shuffle every epoch) and is a permutation."""
    run = Run(tiny_config("supervised"), tmp_path / "unused")
    orders = [run.epoch_order(e) for e in range(3)]
    n = run.train_size()
    assert all(torch.equal(o.sort().values, torch.arange(n)) for o in orders)
    assert not torch.equal(orders[0], orders[1]) and not torch.equal(orders[1], orders[2])
    first = [next(iter(run.train_batches(e)))[1] for e in range(2)]
    assert not torch.equal(first[0], first[1])


def test_evaluation_is_the_exact_accuracy_and_loss_over_the_split(tmp_path, tiny_config):
    """Spec §7: the batch-size-weighted mean of per-batch numbers, i.e. the split's exact
    accuracy (360 test digits in batches of 128, 128 and 104: a mean of the batch means is
    another number). The history row's val_* columns are those of the first evaluation split
    (digits: test), not of another split nor under the split's own name."""
    import torch.nn.functional as F

    from relvit.data.loading import to_float_images

    run = Run(tiny_config("supervised"), tmp_path / "unused")
    run.prepare()
    split = run.splits.evals["test"]
    assert len(split.labels) % run.eval_batch_size() != 0
    got = run.evaluate(split)
    assert next(iter(run.splits.evals)) == "test"
    assert run.evaluation(0) == {f"val_{key}": value for key, value in got.items()}
    run.model.eval()
    with torch.no_grad():
        images = to_float_images(split.images, run.geo.image_size)
        batch = run.objective.batch(images, split.labels, False, torch.Generator())
        logits = run.model(batch.images)["logits"]
    acc = (logits.argmax(1) == split.labels).double().mean().item()
    assert got["acc_clf"] == pytest.approx(acc, abs=1e-9)
    assert got["loss"] == pytest.approx(F.cross_entropy(logits, split.labels).item(), rel=1e-5)


def test_the_epochs_training_numbers_are_means_over_samples(tmp_path, tiny_config, monkeypatch):
    """history.csv's train_* are sample-weighted means over the epoch (1437 digits: 11 batches
    of 128 and one of 29), not means of the batch means."""
    real = Run.train_loss

    def train_loss(self, *args, **kwargs):
        loss, stats, size = real(self, *args, **kwargs)
        return loss, {**stats, "size": torch.tensor(float(size))}, size

    monkeypatch.setattr(Run, "train_loss", train_loss)
    train(tiny_config("supervised", optim={"epochs": 1}), tmp_path / "run", progress=False)
    with (tmp_path / "run" / "history.csv").open() as handle:
        [row] = list(csv.DictReader(handle))
    sizes = [128] * 11 + [29]
    assert float(row["train_size"]) == pytest.approx(sum(s * s for s in sizes) / sum(sizes))


def test_a_second_evaluation_split_reports_the_best_epochs_number_and_the_last(tmp_path,
                                                                              tiny_config):
    """Flowers-102 (Q18): val picks the best epoch; the test split's top-1 at that epoch and at
    the last are both in metrics.json (test_datasets' one-epoch run cannot tell them apart)."""
    import dataclasses

    run = Run(tiny_config("supervised"), tmp_path / "unused")
    test = run.splits.evals["test"]
    run.splits = dataclasses.replace(run.splits, evals={"val": test, "test": test})
    run.best = {"epoch": 1, "val_acc_clf": 0.75, "test_acc_clf": 0.5}
    run.history = [run.best, {"epoch": 2, "val_acc_clf": 0.625, "test_acc_clf": 0.7}]
    m = run.task_metrics()
    assert m["eval_split"] == "val"
    assert (m["best_top1"], m["last_top1"]) == (75.0, 62.5)
    assert (m["test_top1_at_best"], m["test_top1_last"]) == (50.0, 70.0)


def test_a_key_only_one_config_holds_is_a_change(tiny_config):
    """A key that the saved config (an older version's, or an edited config.yaml) lacks or
    adds is a difference."""
    cfg = tiny_config("supervised")
    lacking = cfg.to_dict()
    del lacking["optim"]["min_lr"]
    assert config_changes(cfg, lacking) == [f"optim.min_lr: None -> {cfg.optim.min_lr!r}"]
    adding = cfg.to_dict()
    adding["optim"]["extra"] = 1
    assert config_changes(cfg, adding) == ["optim.extra: 1 -> None"]
    assert config_changes(cfg, cfg.to_dict()) == []


def test_the_newest_finished_twin_is_taken_back(tmp_path, tiny_config):
    """Of several finished twins of the run moved aside, the newest is moved back (the later of
    two moves within a second included)."""
    cfg = tiny_config("supervised", optim={"epochs": 1})
    run = tmp_path / "run"
    train(cfg, run, progress=False)
    for stamp in ("20260101-000000", "20260102-000000-2", "20260102-000000"):
        aside = tmp_path / f"run.replaced-{stamp}"
        shutil.copytree(run, aside)
        record = json.loads((aside / "finished.json").read_text())
        (aside / "finished.json").write_text(json.dumps({**record, "which": stamp}))
    shutil.rmtree(run)
    again = train(cfg, run, progress=False, replace_changed=True)
    assert again["which"] == "20260102-000000-2"  # the later of two moves within a second
    assert not (tmp_path / "run.replaced-20260102-000000-2").exists()
