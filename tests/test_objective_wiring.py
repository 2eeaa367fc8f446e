"""The training objective's wiring: shuffled patches against their targets in a real batch, the
SSL options that reach `Objective` (jitter order, diagonal, symmetric mega-patches), the position
accuracy's class axis and gradient clipping in the training loop."""

import pytest
import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook

from relvit.data.augment import normalize
from relvit.data.registry import get_dataset
from relvit.geometry import NUM_RELATIONS, run_geometry
from relvit.models import losses
from relvit.models.heads import PairProjections
from relvit.ssl.patches import patchify
from relvit.ssl.pipeline import apply_ssl_inputs
from relvit.ssl.targets import angle_targets, position_targets, relation_targets
from relvit.train import objective as objective_module
from relvit.train.loop import build_model, train
from relvit.train.objective import JITTER, Batch, Objective

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.5)
MARGIN = 40.0  # logit of the right class in the oracle's one-hot answers


def make_objective(cfg):
    return Objective(cfg, get_dataset(cfg.data.name), run_geometry(cfg), MEAN, STD)


def shuffling_objective(tiny_config):
    """The Objective of a pretrain run that shuffles patches, without jitter or augmentation,
    and the run's geometry."""
    cfg = tiny_config("pretrain", data={"augment": False},
                      ssl={"shuffle": True, "jitter": False})
    return make_objective(cfg), run_geometry(cfg)


def cell_index_images(b, side, cell):
    """[b, 3, side*cell, side*cell] images in [0, 1] whose grid cell k holds the constant k / n."""
    n = side * side
    cells = (torch.arange(n, dtype=torch.float32) / n).view(1, 1, side, side)
    cells = cells.expand(b, 3, side, side)
    return cells.repeat_interleave(cell, dim=2).repeat_interleave(cell, dim=3).contiguous()


def cells_of(images, cell, n):
    """The original cell of every token of normalised model input, read from its patch content
    (inverse of `cell_index_images` and the normalisation): long [B, N]."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    patches = patchify(images * std + mean, cell)  # [B, N, C, p, p]
    flat = patches.flatten(2)
    # every patch is one constant: moved whole, not mixed with its neighbours
    torch.testing.assert_close(flat, flat[..., :1].expand_as(flat), rtol=0, atol=1e-5)
    found = flat[..., 0] * n
    index = found.round()
    torch.testing.assert_close(found, index, rtol=0, atol=1e-3)
    return index.long()


def compass_of(cells, w):
    """Relation class (i, j) of tokens holding cells [B, N], from the documented closed form
    label = 3 * (sign(r_i - r_j) + 1) + (sign(c_i - c_j) + 1): [B, N, N]."""
    rows, cols = cells // w, cells % w
    vertical = torch.sign(rows[:, :, None] - rows[:, None, :]) + 1
    horizontal = torch.sign(cols[:, :, None] - cols[:, None, :]) + 1
    return 3 * vertical + horizontal


def test_shuffled_patches_and_their_targets_move_together(tiny_config):
    """Q3: with shuffle on and jitter off, every token's patch is the cell that its position and
    relation targets name, in a batch built by `Objective` (not the inverse permutation, not the
    unshuffled order)."""
    objective, geo = shuffling_objective(tiny_config)
    h = w = geo.ssl_grid
    n, b = h * w, 6
    images = cell_index_images(b, h, geo.cell)
    batch = objective.batch(images, torch.zeros(b, dtype=torch.long), True,
                            torch.Generator().manual_seed(3))
    assert batch.grid == (h, w) and batch.perm is not None and batch.perm.shape == (b, n)
    cells = cells_of(batch.images, geo.cell, n)
    # the images were shuffled, and not by a permutation equal to its own inverse
    assert not torch.equal(cells, torch.arange(n).expand(b, n))
    assert not torch.equal(cells.argsort(dim=1), cells)
    assert torch.equal(batch.perm, cells)
    assert torch.equal(position_targets(n, batch.perm), cells)
    assert torch.equal(relation_targets(h, w, batch.perm), compass_of(cells, w))


def test_distance_and_angle_losses_are_the_mse_against_the_shuffled_cells(tiny_config):
    """The unused distance and angle tasks (Q14): their targets follow the patches that were
    shuffled (a distance from the closed form of the cells read back from the patches), and
    each loss is the mean squared error against them. They had only been checked for
    running."""
    cfg = tiny_config("pretrain", data={"augment": False},
                      ssl={"shuffle": True, "jitter": False, "distances": True, "angles": True})
    objective, geo = make_objective(cfg), run_geometry(cfg)
    h = w = geo.ssl_grid
    n, b = h * w, 4
    batch = objective.batch(cell_index_images(b, h, geo.cell), torch.zeros(b, dtype=torch.long),
                            True, torch.Generator().manual_seed(5))
    cells = cells_of(batch.images, geo.cell, n)
    rows, cols = (cells // w).float(), (cells % w).float()
    apart = torch.hypot(rows[:, :, None] - rows[:, None, :], cols[:, :, None] - cols[:, None, :])
    distances = 2 * apart / ((h - 1) ** 2 + (w - 1) ** 2) ** 0.5 - 1
    unshuffled = angle_targets(h, w)
    angles = torch.stack([unshuffled[c][:, c] for c in cells])
    assert not torch.equal(angles, unshuffled.expand(b, n, n))  # shuffled: the test can tell
    gen = torch.Generator().manual_seed(6)
    out = {"distances": torch.randn(b, 1, n, n, generator=gen),
           "angles": torch.randn(b, 1, n, n, generator=gen)}
    _, stats = objective.losses(out, batch)
    for key, name, target in (("distances", "loss_dist", distances),
                              ("angles", "loss_angle", angles)):
        expected = ((out[key][:, 0] - target) ** 2).mean()
        torch.testing.assert_close(stats[name], expected, rtol=1e-5, atol=1e-6)


def test_an_oracle_reading_the_patches_scores_perfectly(tiny_config):
    """The targets `Objective.losses` builds for a shuffled batch are those of the patches the
    model sees: a stub answering from the patch contents has loss ~0 and accuracy 1."""
    objective, geo = shuffling_objective(tiny_config)
    h = w = geo.ssl_grid
    n, b = h * w, 5

    def oracle(images):
        cells = cells_of(images, geo.cell, n)
        positions = F.one_hot(cells, n).float().transpose(1, 2)  # [B, C = N, N]
        relations = F.one_hot(compass_of(cells, w), NUM_RELATIONS).float().permute(0, 3, 1, 2)
        return {"positions": MARGIN * positions, "relations": MARGIN * relations}

    drawn = objective.draw(cell_index_images(b, h, geo.cell), torch.zeros(b, dtype=torch.long),
                           True, torch.Generator().manual_seed(4))
    assert drawn.draws.perm is not None
    loss, stats = objective.step_losses(oracle, drawn, autocast=False)
    for key in ("acc_pos", "acc_rel", "acc_rel_all"):
        assert stats[key].item() == 1.0, (key, stats[key])
    assert loss.item() < 1e-6 and stats["loss_pos"] < 1e-6 and stats["loss_rel"] < 1e-6


@pytest.mark.parametrize("after", [False, True])
def test_jitter_after_normalize_sets_the_order_of_jitter_and_normalisation(tiny_config, after):
    """Q5: `ssl.jitter_after_normalize` true is normalise-then-jitter (the original, whose clamp
    wipes the negative values of the colour-jittered patches), false jitter-then-normalise;
    both with the batch's own draws."""
    cfg = tiny_config("pretrain", data={"augment": False},
                      ssl={"shuffle": True, "jitter": True, "jitter_after_normalize": after})
    geo = run_geometry(cfg)
    objective = make_objective(cfg)
    gen = torch.Generator().manual_seed(5)
    images = torch.rand(4, 3, geo.image_size, geo.image_size, generator=gen)
    drawn = objective.draw(images, torch.zeros(4, dtype=torch.long), True, gen)
    assert drawn.draws.jitter is not None and drawn.draws.perm is not None
    built = objective.build(drawn)
    jitter_first = normalize(apply_ssl_inputs(drawn.images, geo.cell, drawn.draws, JITTER),
                             MEAN, STD)
    normalise_first = apply_ssl_inputs(normalize(drawn.images, MEAN, STD), geo.cell,
                                       drawn.draws, JITTER)
    assert not torch.allclose(jitter_first, normalise_first, atol=1e-3)
    expected = normalise_first if after else jitter_first
    torch.testing.assert_close(built.images, expected, rtol=0, atol=1e-6)
    # the documented difference: normalised first, most patches lose every negative value
    non_negative = (patchify(built.images, geo.cell).flatten(2).amin(dim=-1) >= 0).float().mean()
    assert non_negative > 0.5 if after else non_negative < 0.1, non_negative


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("diagonal", [True, False])
def test_relation_diagonal_reaches_the_relation_loss(tiny_config, diagonal, fused):
    """Q12: `ssl.relation_diagonal` is `relation_loss`'s include_diagonal, on the plain scores
    and on the fused path's projections alike. Whatever it says, acc_rel leaves the diagonal
    out and acc_rel_all counts every pair (the two columns could have been swapped or equal
    unnoticed)."""
    cfg = tiny_config("pretrain", ssl={"relation_diagonal": diagonal, "shuffle": True})
    h = w = run_geometry(cfg).ssl_grid
    n, b = h * w, 3
    gen = torch.Generator().manual_seed(6)
    perm = torch.stack([torch.randperm(n, generator=gen) for _ in range(b)])
    batch = Batch(torch.zeros(b, 3, 4, 4), torch.zeros(b, dtype=torch.long), (h, w), perm)
    pair = PairProjections(torch.randn(b, NUM_RELATIONS, n, 4, generator=gen),
                           torch.randn(b, NUM_RELATIONS, n, 4, generator=gen))
    scores = pair.scores()
    _, stats = make_objective(cfg).losses({"relations": pair if fused else scores}, batch)
    target = relation_targets(h, w, perm)
    expected = losses.relation_loss(scores, target, include_diagonal=diagonal)
    other = losses.relation_loss(scores, target, include_diagonal=not diagonal)
    assert not torch.allclose(expected, other, rtol=1e-4)
    torch.testing.assert_close(stats["loss_rel"], expected, rtol=1e-5, atol=1e-6)
    off = losses.relation_accuracy(scores, target)
    every = losses.relation_accuracy(scores, target, include_diagonal=True)
    assert not torch.isclose(off, every)
    torch.testing.assert_close(stats["acc_rel"].float(), off.float())
    torch.testing.assert_close(stats["acc_rel_all"].float(), every.float())


@pytest.mark.parametrize("dataset, padding, flip", [("digits", 2, False), ("cifar10", 4, True)])
def test_the_training_augmentation_is_the_datasets(tiny_config, dataset, padding, flip):
    """Each dataset's own crop padding and flip: digits are not mirror-symmetric (a flipped 2
    is no digit), so they are never flipped; CIFAR's are. `data.augment: false` does neither.
    `Objective.draw` applies it to training batches only: evaluation batches stay as they are
    (augmenting them, or not the training ones, had passed unnoticed)."""
    from relvit.data.augment import random_crop, random_hflip

    images = torch.rand(64, 3, 8, 8)
    cfg = tiny_config("supervised", data={"name": dataset})
    objective, labels = make_objective(cfg), torch.zeros(64, dtype=torch.long)
    got = objective.augment(images, torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    expected = random_crop(images, padding, gen)
    assert torch.equal(got, random_hflip(expected, gen) if flip else expected)
    trained = objective.draw(images, labels, True, torch.Generator().manual_seed(3))
    evaluated = objective.draw(images, labels, False, torch.Generator().manual_seed(3))
    assert torch.equal(trained.images, got) and not torch.equal(got, images)
    assert torch.equal(evaluated.images, images)
    plain = tiny_config("supervised", data={"name": dataset, "augment": False})
    assert torch.equal(make_objective(plain).augment(images, gen), images)


def test_the_loss_is_the_unweighted_sum_of_the_tasks(tiny_config):
    """Method spec §1.8: joint training adds the classification, relation and position losses,
    unweighted (a mean would weigh each by 1/3)."""
    cfg = tiny_config("joint")
    h = w = run_geometry(cfg).ssl_grid
    n, b = h * w, 3
    gen = torch.Generator().manual_seed(7)
    batch = Batch(torch.zeros(b, 3, 4, 4), torch.tensor([0, 4, 9]), (h, w),
                  torch.arange(n).expand(b, n))
    out = {"logits": torch.randn(b, 10, generator=gen),
           "relations": torch.randn(b, NUM_RELATIONS, n, n, generator=gen),
           "positions": torch.randn(b, n, n, generator=gen)}
    total, stats = make_objective(cfg).losses(out, batch)
    terms = ("loss_clf", "loss_rel", "loss_pos")
    assert set(terms) <= set(stats) and all(stats[k] > 0 for k in terms)
    torch.testing.assert_close(total, sum(stats[k] for k in terms))
    assert stats["loss"] == total


@pytest.mark.parametrize("symmetric", [False, True])
def test_megapatch_symmetric_reaches_the_megapatch_cuts(tiny_config, monkeypatch, symmetric):
    """Q7: `ssl.megapatch_symmetric` is `megapatch_images`' symmetric argument: true, the rows
    and columns of every image share one partition; false, they are cut independently."""
    calls = []
    real = objective_module.megapatch_images

    def recording(*args, **kwargs):
        calls.append(kwargs.get("symmetric"))
        return real(*args, **kwargs)

    monkeypatch.setattr(objective_module, "megapatch_images", recording)
    cfg = tiny_config("pretrain", data={"augment": False},
                      ssl={"megapatch_side": 3, "megapatch_symmetric": symmetric,
                           "jitter": False})
    size, b = run_geometry(cfg).image_size, 16
    ramp = torch.arange(size, dtype=torch.float32) / size
    images = torch.zeros(b, 3, size, size)
    images[:, 0] = ramp[:, None]  # channel 0: the row, channel 1: the column
    images[:, 1] = ramp[None, :]
    drawn = make_objective(cfg).draw(images, torch.zeros(b, dtype=torch.long), True,
                                     torch.Generator().manual_seed(7))
    assert calls == [symmetric]
    out = drawn.images
    assert drawn.grid == (3, 3) and out.shape[-1] == 3 * run_geometry(cfg).cell
    # the resized rows of channel 0 are the resized columns of channel 1 iff the cuts are shared
    same = [torch.allclose(image[0], image[1].T, atol=1e-5) for image in out]
    assert all(same) if symmetric else not all(same), same


def test_position_accuracy_takes_the_class_axis_of_token_logits():
    """`losses.accuracy` on [B, C, N] position logits takes the argmax over the classes (dim 1),
    not over the tokens."""
    table = torch.tensor([[0.0, 5.0, 0.0],  # [C, N]: argmax over classes [2, 0, 1],
                          [0.0, 0.0, 5.0],  # over tokens [1, 2, 0]
                          [5.0, 0.0, 0.0]])
    logits = torch.stack([table, table.roll(1, dims=1)])  # [B = 2, C = 3, N = 3]
    targets = torch.tensor([[2, 0, 1], [1, 2, 0]])
    assert losses.accuracy(logits, targets).item() == 1.0
    assert losses.accuracy(logits, targets.roll(1, dims=1)).item() == 0.0
    assert losses.accuracy(logits, torch.tensor([2, 0, 0])).item() == 0.5  # 2 + 1 of 6
    assert losses.accuracy(logits[:1], torch.tensor([2, 0, 1])).item() == 1.0
    # [B, C] classifier logits too
    assert losses.accuracy(table, torch.tensor([1, 2, 2])).item() == pytest.approx(2 / 3)


def test_the_training_loop_clips_gradients_by_optim_clip_grad(tmp_path, tiny_config,
                                                              monkeypatch):
    """`optim.clip_grad` (the paper's 1.0 by default) clips the global gradient norm at every
    step with that norm; 0 never clips."""
    assert tiny_config("supervised").optim.clip_grad == 1.0
    calls = []
    real = torch.nn.utils.clip_grad_norm_

    def recording(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        calls.append((max_norm, sum(p.grad is not None for p in parameters)))
        return real(parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording)
    steps = []
    hook = register_optimizer_step_post_hook(lambda *_: steps.append(len(calls)))
    try:
        train(tiny_config("supervised", optim={"epochs": 1, "clip_grad": 0.5}),
              tmp_path / "clip", progress=False)
    finally:
        hook.remove()
    assert len(steps) > 1 and steps == list(range(1, len(steps) + 1)), steps  # one per step
    assert all(norm == 0.5 and with_grad > 0 for norm, with_grad in calls), calls
    calls.clear()
    train(tiny_config("supervised", optim={"epochs": 1, "clip_grad": 0.0}),
          tmp_path / "no_clip", progress=False)
    assert calls == []


@pytest.mark.parametrize("flag", ["distances", "angles"])
def test_each_regression_flag_builds_its_own_head(tiny_config, flag):
    """Spec §1.4-1.5: `ssl.distances` builds the distance head and `ssl.angles` the angle head
    (the run's flags reach SSLTasks by position: swapped, no test had seen it)."""
    cfg = tiny_config("pretrain", ssl={flag: True})
    geo = run_geometry(cfg)
    out = build_model(cfg, geo, 10)(torch.rand(2, 3, geo.image_size, geo.image_size))
    assert sorted(out) == sorted(["relations", "positions", flag])


def test_the_position_head_has_a_class_per_megapatch(tiny_config):
    """Spec §2.3: with mega-patches the position head has S^2 classes, not one per base cell."""
    cfg = tiny_config("pretrain", ssl={"megapatch_side": 3})
    geo = run_geometry(cfg)
    assert geo.ssl_grid != 3
    assert build_model(cfg, geo, 10).position_head.linear.out_features == 9


@pytest.mark.parametrize("mode,train", [("pretrain", False), ("joint", True), ("joint", False)])
def test_no_jitter_or_shuffle_outside_the_pretraining_batches(tiny_config, mode, train):
    """Spec §3: the upstream validation has no jitter and no shuffle; downstream-only (joint)
    never jitters or shuffles, even with the SSL options on."""
    shuffle = {"shuffle": True} if mode == "pretrain" else {}  # joint: refused by the config
    cfg = tiny_config(mode, data={"augment": False}, ssl={**shuffle, "jitter": True})
    objective, size = make_objective(cfg), run_geometry(cfg).image_size
    images = torch.rand(4, 3, size, size)
    batch = objective.batch(images, torch.zeros(4, dtype=torch.long), train,
                            torch.Generator().manual_seed(0))
    assert batch.perm is None
    torch.testing.assert_close(batch.images, normalize(images, MEAN, STD), rtol=0, atol=0)


def test_the_classification_loss_is_plain_cross_entropy(tiny_config):
    """Spec §1.7: F.cross_entropy, no label smoothing (only a loss threshold had caught it)."""
    logits = torch.randn(5, 10, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(5)
    batch = Batch(torch.zeros(5, 3, 4, 4), labels, (2, 2), None)
    _, stats = make_objective(tiny_config("supervised")).losses({"logits": logits}, batch)
    torch.testing.assert_close(stats["loss_clf"], F.cross_entropy(logits, labels))


def test_each_ssl_term_is_its_plain_cross_entropy(tiny_config):
    """Spec §1.8, all weights 1: each logged term is the plain loss of its task (the sum test
    alone passes a position or relation term scaled by any factor)."""
    import torch.nn.functional as F

    from relvit.data.registry import get_dataset
    from relvit.geometry import NUM_RELATIONS, run_geometry
    from relvit.ssl.targets import relation_targets
    from relvit.train.objective import Batch, Objective

    cfg = tiny_config("pretrain")
    geo = run_geometry(cfg)
    h = w = geo.ssl_grid
    n, b = h * w, 3
    gen = torch.Generator().manual_seed(7)
    perm = torch.stack([torch.randperm(n, generator=gen) for _ in range(b)])
    batch = Batch(torch.zeros(b, 3, 4, 4), torch.zeros(b, dtype=torch.long), (h, w), perm)
    rel = torch.randn(b, NUM_RELATIONS, n, n, generator=gen)
    pos = torch.randn(b, n, n, generator=gen)  # [B, C = N classes, N tokens]
    objective = Objective(cfg, get_dataset(cfg.data.name), geo, (0.5,) * 3, (0.25,) * 3)
    total, stats = objective.losses({"relations": rel, "positions": pos}, batch)
    torch.testing.assert_close(stats["loss_pos"], F.cross_entropy(pos, perm))
    torch.testing.assert_close(stats["loss_rel"],
                               F.cross_entropy(rel, relation_targets(h, w, perm)))
    torch.testing.assert_close(total, stats["loss_pos"] + stats["loss_rel"])
