"""Eq. (1)-(2) and the noise types of Table 4, checked by the numbers."""

from __future__ import annotations

import math

import pytest
import torch

from beray.augment.be import NOISES, add_noise, add_static_frame, distract, get_noise
from beray.config import BEConfig

B, C, T, H, W = 6, 3, 8, 16, 16


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _tagged(b=B, t=T, c=1, h=2, w=2):
    """Video v, frame j is the constant 1000 * v + j + 1: a value names its video and frame."""
    v = torch.arange(b).view(b, 1, 1, 1, 1) * 1000.0
    j = torch.arange(t).view(1, 1, t, 1, 1) + 1.0
    return (v + j).expand(b, c, t, h, w).clone()  # BCTHW


def _recover(x_v, x_d):
    """lam and the static frame's value per video, from x_d = (1 - lam) x_v + lam s (constant frames)."""
    dv = x_v[:, 0, 1:, 0, 0] - x_v[:, 0, :-1, 0, 0]
    dd = x_d[:, 0, 1:, 0, 0] - x_d[:, 0, :-1, 0, 0]
    lam = 1 - (dd / dv).mean(1)
    static = (x_d[:, 0, 0, 0, 0] - (1 - lam) * x_v[:, 0, 0, 0, 0]) / lam
    return lam, static


def test_eq2_time_derivative_scales_by_one_minus_lam():
    x_v = torch.rand(B, C, T, H, W, dtype=torch.float64)
    x_d = distract(x_v, "intra_frame", gamma=0.3, generator=_gen())
    dv, dd = x_v.diff(dim=2), x_d.diff(dim=2)
    scale = (dd * dv).sum(dim=(1, 2, 3, 4)) / (dv * dv).sum(dim=(1, 2, 3, 4))  # least squares, per video
    assert torch.allclose(dd, scale.view(B, 1, 1, 1, 1) * dv, atol=1e-12)
    assert ((scale >= 0.7) & (scale <= 1.0)).all()  # 1 - lam with lam in [0, gamma]
    assert scale.unique().numel() == B  # every video its own lam


def test_gamma_zero_is_identity():
    x_v = torch.rand(B, C, T, H, W)
    for name in ("intra_frame", "inter_frame", "gaussian", "mixup"):
        assert torch.equal(distract(x_v, name, gamma=0.0, generator=_gen()), x_v)


def test_static_frame_is_own_for_intra_and_other_for_inter():
    x_v = _tagged(b=32).double()
    for name, own in (("intra_frame", True), ("inter_frame", False)):
        lam, static = _recover(x_v, distract(x_v, name, gamma=0.3, generator=_gen(1)))
        video, frame = torch.div(static.round(), 1000, rounding_mode="floor"), static.round() % 1000 - 1
        assert torch.allclose(static, static.round(), atol=1e-2)  # a frame's value exactly: one whole frame
        assert (video == torch.arange(32)).all() == own and (own or (video != torch.arange(32)).all())
        assert frame.unique().numel() > 4  # each video its own k


def test_lam_and_k_distributions():
    n, gamma = 4000, 0.3
    x_v = _tagged(b=n, t=T)
    lam, static = _recover(x_v.double(), distract(x_v.double(), "intra_frame", gamma=gamma, generator=_gen(7)))
    k = (static.round() % 1000 - 1).long()
    # Kolmogorov-Smirnov against U[0, gamma]: 1.63 / sqrt(n) is the 1% critical value
    u = (lam / gamma).sort().values
    ks = torch.maximum((torch.arange(1, n + 1) / n - u).abs(), (u - torch.arange(n) / n).abs()).max()
    assert ks < 1.63 / math.sqrt(n) and lam.min() >= 0 and lam.max() <= gamma
    counts = torch.bincount(k, minlength=T).double()
    chi2 = ((counts - n / T) ** 2 / (n / T)).sum()
    assert chi2 < 18.5 and counts.numel() == T  # chi-square, 7 dof, 1% critical value


def test_uint8_path_within_half_a_grey_level_and_layouts_agree():
    x = torch.randint(0, 256, (B, C, T, H, W), dtype=torch.uint8)
    exact = distract(x.double(), "intra_frame", 0.3, _gen(3))
    u8 = distract(x, "intra_frame", 0.3, _gen(3))
    assert u8.dtype == torch.uint8 and (u8.double() - exact).abs().max() <= 0.5 + 1e-4
    btchw = distract(x.transpose(1, 2), "intra_frame", 0.3, _gen(3), layout="BTCHW")
    assert torch.equal(btchw.transpose(1, 2), u8)


def test_add_static_frame_is_eq1():
    x_v, static, lam = torch.rand(2, T, C, 4, 4), torch.rand(2, 1, C, 4, 4), torch.tensor([0.1, 0.25]).view(2, 1, 1, 1, 1)
    assert torch.allclose(add_static_frame(x_v, static, lam), (1 - lam) * x_v + lam * static)


def test_mixup_interpolates_frame_by_frame_with_another_video():
    x_v = _tagged(b=8).double()
    x_d = distract(x_v, "mixup", 0.5, _gen(2))
    # x_d - x_v = lam (x_other - x_v) = lam * 1000 * (other - v) at every frame when frames pair up (same j)
    diff = (x_d - x_v)[:, 0, :, 0, 0]
    assert torch.allclose(diff, diff[:, :1].expand_as(diff), atol=1e-9)
    assert (diff[:, 0].abs() > 0).all()  # always another video


def test_cutmix_replaces_one_box_in_every_frame():
    x_v = _tagged(b=8, h=32, w=32)
    x_d = distract(x_v, "cutmix", 0.5, _gen(4))
    changed = x_d != x_v  # (B, C, T, H, W)
    assert (changed == changed[:, :, :1]).all()  # the same box in every frame
    for b in range(8):
        rows, cols = changed[b, 0, 0].any(1).nonzero(), changed[b, 0, 0].any(0).nonzero()
        if rows.numel():
            box = changed[b, 0, 0, rows.min():rows.max() + 1, cols.min():cols.max() + 1]
            assert box.all()  # a rectangle
            assert box.numel() / (32 * 32) <= 0.5 + 0.07
            assert ((x_d[b, 0][:, changed[b, 0, 0]] - x_v[b, 0][:, changed[b, 0, 0]]) % 1000 == 0).all()


def test_gaussian_adds_one_identical_noise_image():
    x_v = torch.zeros(2, C, T, 8, 8) + torch.arange(T).view(1, 1, T, 1, 1)
    x_d = distract(x_v, "gaussian", 0.3, _gen(5))
    residual = x_d - x_v * (x_d.diff(dim=2) / x_v.diff(dim=2)).mean(dim=(1, 2, 3, 4), keepdim=True)
    assert torch.allclose(residual, residual[:, :, :1].expand_as(residual), atol=1e-4)  # same in every frame
    assert residual[:, :, 0].std() > 0


def test_fame_keeps_the_moving_square_on_the_other_videos_background():
    g = torch.Generator().manual_seed(0)
    bg = torch.rand(2, C, 1, 32, 32, generator=g).expand(2, C, T, 32, 32).clone()  # static textures
    x_v = bg.clone()
    for t in range(T):  # video 0: a 6x6 square moving right along rows 10-15
        x_v[0, :, t, 10:16, 2 + 2 * t:8 + 2 * t] = 1.0 + t
    x_d = get_noise("fame")(x_v, 0.3, _gen(), "BCTHW", fg_ratio=0.3)
    path = torch.zeros(32, 32, dtype=torch.bool)
    path[10:16, 2:8 + 2 * (T - 1)] = True
    assert torch.equal(x_d[0][:, :, path], x_v[0][:, :, path])  # the mask covers the square's path
    assert torch.equal(x_d[0][:, :, ~path], bg[1][:, :, ~path])  # the rest is video 1's background


def test_registry_and_validation():
    assert set(NOISES) == {"none", "gaussian", "mixup", "cutmix", "inter_frame", "intra_frame", "fame"}
    with pytest.raises(ValueError, match="intra_frame"):
        get_noise("salt")
    with pytest.raises(ValueError, match="gamma"):
        distract(torch.rand(2, C, T, 4, 4), "intra_frame", gamma=1.5)
    x = torch.rand(2, C, T, 4, 4)
    for name in NOISES:  # one signature for all
        assert NOISES[name](x, 0.3, _gen(), "BCTHW").shape == x.shape


def test_a_batch_noise_depends_on_the_batch_alone_and_gamma_scales_the_same_draws():
    """Two models on one stream (a pack) draw their noise from (seed, epoch, videos, noise type) only."""
    x_v = torch.randint(0, 256, (4, T, 3, 8, 8), dtype=torch.uint8)  # BTCHW, as batches arrive
    batch = {"x_v": x_v, "index": torch.tensor([7, 2, 9, 4]), "label": torch.zeros(4)}
    a = add_noise(batch, BEConfig(noise="intra_frame", gamma=0.3), seed=5, epoch=2)
    assert set(a) == {"x_d", "index", "label"} and "x_v" in batch and a["x_d"].dtype == torch.uint8
    torch.manual_seed(123)  # whatever ran before, in the same process
    other = add_noise(batch, BEConfig(noise="mixup", gamma=0.5), seed=5, epoch=2)
    b = add_noise(batch, BEConfig(noise="intra_frame", gamma=0.3), seed=5, epoch=2)
    assert torch.equal(a["x_d"], b["x_d"]) and not torch.equal(other["x_d"], a["x_d"])
    assert not torch.equal(add_noise(batch, BEConfig(noise="intra_frame", gamma=0.3), seed=5, epoch=3)["x_d"], a["x_d"])
    moved = {**batch, "index": torch.tensor([2, 7, 9, 4])}  # other videos: other draws
    assert not torch.equal(add_noise(moved, BEConfig(noise="intra_frame", gamma=0.3), seed=5, epoch=2)["x_d"], a["x_d"])
    # the same noise type with twice the gamma: the same frames and lam draws, twice the step from x_v
    d = add_noise(batch, BEConfig(noise="intra_frame", gamma=0.6), seed=5, epoch=2)["x_d"].float() - x_v.float()
    step = a["x_d"].float() - x_v.float()
    assert step.abs().max() > 5 and (d - 2 * step).abs().max() <= 1.5
