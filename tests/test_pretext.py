"""Pretext tasks with BE (Eq. 3-5): labels name the transformation applied, Eq. 4 and 5 by numbers."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from beray.methods import PRETEXTS, build_pretext
from beray.methods.pretext import (ClipOrder, CubicPuzzle, RotNet, be_loss, cop_inputs, cubic_puzzle_inputs,
                                   cut_pieces, permutations, psi, rotnet_inputs)

T, H = 4, 16


class TinyBackbone(nn.Module):
    """Stand-in for beray.models: f (B, C, T/2, H/2, W/2) and v = amax of f over (T', H', W')."""

    out_channels = 8

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv3d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv3d(8, 8, 3, stride=2, padding=1)

    def forward(self, x):
        f = self.conv2(F.relu(self.conv1(x)))
        return f, f.amax(dim=(2, 3, 4))


def distinct(*shape):
    """A clip whose every value differs: no rotation or reordering maps it onto itself."""
    n = 1
    for s in shape:
        n *= s
    return torch.arange(n, dtype=torch.float32).view(shape)


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def make(name, **kw):
    torch.manual_seed(0)
    return build_pretext(name, TinyBackbone(), **kw)


def batch(name, b=2, seed=1):
    """(x_o, x_d) for a task, x_d = BE-like blend of x_o with one of its own frames (Eq. 1)."""
    g = seeded(seed)
    shape = (b, 3, 3, T, H, H) if name == "cop" else (b, 3, T, H, H)
    x_o = torch.rand(shape, generator=g)
    x_d = 0.7 * x_o + 0.3 * x_o[..., :1, :, :]
    return x_o, x_d


# -- labels name the transformation -----------------------------------------------------

def test_rotnet_labels_name_rotation():
    x = distinct(4, 3, T, H, H)
    out, labels = rotnet_inputs(x, labels=torch.arange(4))
    for k in range(4):
        assert torch.equal(out[k], torch.rot90(x[k], k, dims=(-2, -1)))
        for other in set(range(4)) - {k}:
            assert not torch.equal(out[k], torch.rot90(x[k], other, dims=(-2, -1)))
        for t in range(T):  # the same rotation for every frame
            assert torch.equal(out[k, :, t], torch.rot90(x[k, :, t], k, dims=(-2, -1)))
    out, labels = rotnet_inputs(x, generator=seeded(3))
    for b, k in enumerate(labels.tolist()):
        assert torch.equal(out[b], torch.rot90(x[b], k, dims=(-2, -1)))


def test_rotnet_all_transforms_is_eq3_literally():
    x = distinct(2, 3, T, H, H)
    out, labels = rotnet_inputs(x, all_transforms=True)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    for i, k in enumerate(labels.tolist()):
        assert torch.equal(out[i], torch.rot90(x[i % 2], k, dims=(-2, -1)))
    model = make("rotnet", all_transforms=True).eval()
    per_r = [F.cross_entropy(model.classify(rotnet_inputs(x, labels=torch.full((2,), k))[0]), torch.full((2,), k))
             for k in range(4)]
    assert torch.allclose(model(x)["loss_pretext"], torch.stack(per_r).mean())  # (1/M) sum over r in R
    with pytest.raises(ValueError, match="square"):
        rotnet_inputs(torch.zeros(1, 3, T, 16, 8))


def test_cubic_puzzle_every_label_unpermutes_to_original_pieces():
    x = distinct(24, 3, T, H, H)
    h = H // 2
    grid = [x[..., :h, :h], x[..., :h, h:], x[..., h:, :h], x[..., h:, h:]]  # raster order, whole T
    shuffled, labels = cubic_puzzle_inputs(x, labels=torch.arange(24))
    assert shuffled.shape == (24, 4, 3, T, h, h)
    perms = permutations(4)
    assert len({tuple(p) for p in perms.tolist()}) == 24
    for k in range(24):
        perm = perms[k]
        for i in range(4):  # position i holds piece perm[i]
            assert torch.equal(shuffled[k, i], grid[perm[i]][k])
        pieces = shuffled[k, torch.argsort(perm)]
        assert torch.equal(pieces, cut_pieces(x)[k])
        top, bottom = torch.cat([pieces[0], pieces[1]], -1), torch.cat([pieces[2], pieces[3]], -1)
        assert torch.equal(torch.cat([top, bottom], -2), x[k])  # reassembles the clip exactly


def test_cubic_puzzle_gap_centres_pieces_in_their_cells():
    x = distinct(1, 3, T, H, H)
    pieces = cut_pieces(x, gap=2)
    assert pieces.shape == (1, 4, 3, T, 6, 6)
    assert torch.equal(pieces[0, 3], x[0, ..., 9:15, 9:15])
    with pytest.raises(ValueError, match="gap"):
        cut_pieces(x, gap=8)


def test_cop_every_label_names_the_clip_order():
    clips = distinct(6, 3, 3, T, H, H)
    out, labels = cop_inputs(clips, labels=torch.arange(6))
    orders = list(itertools.permutations(range(3)))
    assert permutations(3).tolist() == [list(p) for p in orders]
    for k, order in enumerate(orders):
        for i in range(3):
            assert torch.equal(out[k, i], clips[k, order[i]])
        assert torch.equal(out[k, torch.argsort(torch.tensor(order))], clips[k])


def test_random_labels_cover_all_classes_and_follow_the_seed():
    x = torch.zeros(240, 3, 2, 4, 4)
    for fn, n in ((rotnet_inputs, 4), (cubic_puzzle_inputs, 24)):
        _, a = fn(x, generator=seeded(5))
        _, b = fn(x, generator=seeded(5))
        assert torch.equal(a, b) and set(a.tolist()) == set(range(n))
        torch.manual_seed(7)
        _, c = fn(x)
        torch.manual_seed(7)
        assert torch.equal(c, fn(x)[1])  # global RNG when no generator is given
    _, a = cop_inputs(torch.zeros(120, 3, 3, 2, 4, 4), generator=seeded(5))
    assert set(a.tolist()) == set(range(6))


# -- Eq. (4) ----------------------------------------------------------------------------

def test_psi_shape_and_be_term():
    f_o = torch.randn(3, 8, 2, 5, 5, generator=seeded())
    assert psi(f_o).shape == (3, 8, 2)
    assert torch.equal(psi(f_o), f_o.flatten(3).max(3).values)
    assert be_loss(f_o, f_o.clone()).item() == 0.0
    f_d = f_o.clone()
    f_d[1, 2, 0] += 1.0  # raises one channel's max at one time step of sample 1 by exactly 1
    assert be_loss(f_o, f_d, reduction="sum").item() == pytest.approx(1 / 3)  # squared norm over C x T, mean over B
    assert be_loss(f_o, f_d).item() == pytest.approx(1 / (3 * 8 * 2))  # mean over B, C and T (MSE)
    # a spatial shift leaves the spatial max, hence L_be, unchanged: psi pools over H, W
    assert be_loss(f_o, torch.roll(f_o, 2, dims=-1)).item() == 0.0
    assert be_loss(f_o, f_o + 0.1 * torch.randn_like(f_o)).item() > 0


@pytest.mark.parametrize("name", sorted(PRETEXTS))
def test_be_term_zero_for_identical_inputs_positive_otherwise(name):
    model = make(name)
    x_o, x_d = batch(name)
    assert model(x_o, x_o.clone(), generator=seeded())["loss_be"].item() == 0.0
    assert model(x_o, x_d, generator=seeded())["loss_be"].item() > 0
    f_o, _ = model.backbone(x_o.flatten(0, 1) if name == "cop" else x_o)
    f_d, _ = model.backbone(x_d.flatten(0, 1) if name == "cop" else x_d)
    # the BE term is on the un-transformed clips (no BN in the stand-in: separate passes agree)
    assert torch.allclose(model(x_o, x_d, generator=seeded())["loss_be"], be_loss(f_o, f_d), rtol=1e-5)


# -- Eq. (5) ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(PRETEXTS))
def test_eq5_combination(name):
    model = make(name).eval()
    x_o, x_d = batch(name)
    assert model.beta == 1.0
    baseline = model(x_o, generator=seeded())  # no x_d: the plain pretext task
    assert baseline["loss_be"].item() == 0.0 and torch.equal(baseline["loss"], baseline["loss_pretext"])
    for beta in (0.0, 0.5, 1.0):
        out = model(x_o, x_d, beta=beta, generator=seeded())
        assert set(out) == {"loss", "loss_pretext", "loss_be", "acc"}
        assert out["loss_be"].item() > 0
        assert torch.equal(out["loss"], out["loss_pretext"] + beta * out["loss_be"])
        assert torch.allclose(out["loss_pretext"], baseline["loss_pretext"], rtol=1e-5)
        logits, labels = model.predict(x_o, generator=seeded())
        assert torch.allclose(out["loss_pretext"], F.cross_entropy(logits, labels), rtol=1e-5)
        assert out["acc"].item() == (logits.argmax(1) == labels).float().mean().item()
    assert torch.equal(model(x_o, x_d, generator=seeded())["loss"], out["loss"])  # beta defaults to 1.0


def test_cop_order_on_features_equals_order_on_clips():
    model = make("cop").eval()
    x_o, x_d = batch("cop", b=4)
    logits, labels, f_o, f_d = model._pretext_and_be(x_o, x_d, seeded(2))
    ref_logits, ref_labels = model.predict(x_o, generator=seeded(2))
    assert torch.equal(labels, ref_labels)
    assert torch.allclose(logits, ref_logits, atol=1e-5)
    assert f_o.shape == (12, 8, T // 2, H // 2, H // 2)


# -- training ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(PRETEXTS))
def test_one_sgd_step_lowers_the_loss(name):
    kw = {} if name == "rotnet" else {"dropout": 0.0}
    model = make(name, **kw)
    x_o, x_d = batch(name, b=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    before = model(x_o, x_d, generator=seeded())
    opt.zero_grad()
    before["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())
    opt.step()
    after = model(x_o, x_d, generator=seeded())
    assert after["loss"].item() < before["loss"].item()


def test_registry_and_errors():
    assert PRETEXTS == {"rotnet": RotNet, "cubic_puzzle": CubicPuzzle, "cop": ClipOrder}
    assert {n: make(n).num_classes for n in PRETEXTS} == {"rotnet": 4, "cubic_puzzle": 24, "cop": 6}
    assert make("cop", tuple_len=4).num_classes == 24
    assert make("rotnet", beta=0.5).beta == 0.5
    with pytest.raises(ValueError, match="cop.*cubic_puzzle.*rotnet"):
        build_pretext("jigsaw", TinyBackbone())
    x_o, x_d = batch("rotnet")
    with pytest.raises(ValueError, match="shaped like x_o"):
        make("rotnet")(x_o, x_d[:1])
    with pytest.raises(ValueError, match="clips per sample"):
        make("cop")(torch.zeros(2, 2, 3, T, H, H))
    with pytest.raises(ValueError, match="labels"):
        rotnet_inputs(x_o, labels=torch.tensor([0, 4]))
