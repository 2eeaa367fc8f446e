"""SSL targets: closed form, symmetry, class counts and consistency with permuted patches."""

import math

import pytest
import torch

from fixtures.tracing import RecordingBackend

from relvit.ssl.patches import patchify, permute_patches, unpatchify
from relvit.ssl.targets import (
    CENTRE,
    RELATION_NAMES,
    angle_targets,
    distance_targets,
    position_targets,
    relation_targets,
)


def compass(ri: int, ci: int, rj: int, cj: int) -> int:
    """Where (ri, ci) lies relative to (rj, cj), written out case by case."""
    vertical = "U" if ri < rj else "D" if ri > rj else "C"
    horizontal = "L" if ci < cj else "R" if ci > cj else "C"
    return RELATION_NAMES.index(horizontal + vertical)


@pytest.mark.parametrize("h,w", [(1, 1), (2, 3), (4, 4), (7, 7), (3, 8)])
def test_relation_targets_match_the_closed_form(h, w):
    t = relation_targets(h, w)
    assert t.dtype == torch.long and t.shape == (h * w, h * w)
    for i in range(h * w):
        for j in range(h * w):
            assert t[i, j] == compass(i // w, i % w, j // w, j % w)


def test_examples_from_the_spec():
    t = relation_targets(3, 3)
    assert RELATION_NAMES[t[3, 4]] == "LC"  # cell 3 is left of cell 4 in the same row
    assert RELATION_NAMES[t[1, 4]] == "CU"  # directly above
    assert RELATION_NAMES[t[8, 4]] == "RD"  # below-right


@pytest.mark.parametrize("side", [2, 5, 8])
def test_symmetry_and_centre_only_on_the_diagonal(side):
    t = relation_targets(side, side)
    assert torch.equal(t.T, 8 - t)
    assert torch.equal(t == CENTRE, torch.eye(side * side, dtype=torch.bool))


@pytest.mark.parametrize("side,corner,edge,centre", [(7, 441, 147, 49), (8, 784, 224, 64)])
def test_class_counts(side, corner, edge, centre):
    counts = torch.bincount(relation_targets(side, side).flatten(), minlength=9).tolist()
    assert counts == [corner, edge, corner, edge, centre, edge, corner, edge, corner]


def test_permutation_indexes_every_target():
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(12, generator=g)
    base = relation_targets(3, 4)
    t = relation_targets(3, 4, perm)
    assert torch.equal(t, base[perm][:, perm])
    assert torch.equal(position_targets(12, perm), perm)
    assert torch.equal(position_targets(12), torch.arange(12))
    assert torch.equal(distance_targets(3, 4, perm), distance_targets(3, 4)[perm][:, perm])
    batched = torch.stack([perm, torch.arange(12)])
    tb = relation_targets(3, 4, batched)
    assert tb.shape == (2, 12, 12) and torch.equal(tb[0], t) and torch.equal(tb[1], base)


def test_targets_move_with_the_image_patches():
    """Shuffle a batch of images by patches; the targets must describe where each moved patch
    came from, which we recover from the patch contents themselves."""
    g = torch.Generator().manual_seed(1)
    b, side, p = 3, 4, 2
    n = side * side
    # every patch is a constant image whose value is its original cell index
    cells = torch.arange(n, dtype=torch.float32).view(1, 1, side, side).expand(b, 3, side, side)
    images = cells.repeat_interleave(p, dim=2).repeat_interleave(p, dim=3)
    perm = torch.stack([torch.randperm(n, generator=g) for _ in range(b)])
    shuffled = unpatchify(permute_patches(patchify(images, p), perm), (side, side))
    origin = patchify(shuffled, p)[:, :, 0, 0, 0].long()  # original cell of each slot
    assert torch.equal(origin, perm)
    rel = relation_targets(side, side, perm)
    for k in range(b):
        for i in range(n):
            for j in range(n):
                oi, oj = origin[k, i].item(), origin[k, j].item()
                assert rel[k, i, j] == compass(oi // side, oi % side, oj // side, oj % side)
    assert torch.equal(position_targets(n, perm), origin)


def test_a_shared_permutation_puts_original_cell_perm_k_into_slot_k():
    """`permute_patches` with a 1-D perm [N] (shared by the batch): slot k holds the patch of
    original cell perm[k], as the batched form does (its inverse had passed the other tests)."""
    patches = torch.arange(2 * 4, dtype=torch.float32).view(2, 4, 1, 1, 1)  # value = 4 * b + cell
    perm = torch.tensor([2, 0, 3, 1])  # not an involution: its inverse is [1, 3, 0, 2]
    out = permute_patches(patches, perm)
    assert out.flatten().tolist() == [2.0, 0.0, 3.0, 1.0, 6.0, 4.0, 7.0, 5.0]
    assert torch.equal(out, permute_patches(patches, perm.expand(2, -1)))
    # on images: a 2 x 2 grid of 1-px cells, the rebuilt image reads perm row-major
    image = torch.tensor([[[[10.0, 11.0], [12.0, 13.0]]]])
    moved = unpatchify(permute_patches(patchify(image, 1), perm), (2, 2))
    assert moved.flatten().tolist() == [12.0, 10.0, 13.0, 11.0]


def test_distance_targets():
    d = distance_targets(3, 3)
    assert torch.allclose(d.diagonal(), torch.full((9,), -1.0))
    assert d.max() == 1.0 and d[0, 8] == 1.0  # opposite corners
    assert torch.isclose(d[0, 1], torch.tensor(2 * (1 / (2 * math.sqrt(2))) - 1))
    assert torch.equal(d, d.T)
    # a 1x1 grid is all diagonal: -1 (as it is for every permuted sample)
    assert distance_targets(1, 1).tolist() == [[-1.0]]
    assert distance_targets(1, 1, torch.zeros(3, 1, dtype=torch.long)).tolist() == [[[-1.0]]] * 3


def test_angle_targets_follow_the_original_definition():
    a = angle_targets(3, 3)
    assert a.min() == -1.0 and a.max() == 1.0 and torch.equal(a, a.T)
    # cells on one ray from the origin (-1.5, -1.5) have parallel position vectors: angle ~ 0
    assert a[0, 4] < -0.98 and a[0, 8] < -0.98  # not exactly -1: the +1e-4 in the denominator
    assert a[2, 6] == 1.0  # the widest angle: top-right vs bottom-left


def test_bad_permutation_is_refused():
    with pytest.raises(ValueError, match="5 entries, the grid has 4"):
        relation_targets(2, 2, torch.arange(5))


@pytest.mark.parametrize("make", [relation_targets, distance_targets, angle_targets])
def test_targets_traced_by_torch_compile_are_made_on_the_permutations_device(make):
    """Inside a compiled region (`compile_step`) the tables are built on the permutation's
    device, in the graph: a table cached on the host would be traced as a host-to-device copy,
    which keeps CUDA graphs off the whole region. The meta device stands in for CUDA. The values
    are the cached tables' (CPU)."""
    recorded = RecordingBackend()
    perm = torch.stack([torch.randperm(12) for _ in range(2)])
    torch._dynamo.reset()
    traced = torch.compile(lambda p: make(3, 4, p), backend=recorded, dynamic=False)
    traced(perm.to("meta"))
    assert recorded.devices == {torch.device("meta")}
    torch.testing.assert_close(traced(perm), make(3, 4, perm))
    torch._dynamo.reset()
