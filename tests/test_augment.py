"""Augmentation set A: one draw per clip (temporally consistent), a new draw per view."""

from __future__ import annotations

import numpy as np
import torch

from beray.augment.spatial import augment_a, two_views
from beray.config import AugmentConfig


def _static_clip(t=8, h=48, w=64):
    rng = np.random.default_rng(0)
    return np.repeat(rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8), t, axis=0)  # (T, H, W, 3)


def test_every_frame_gets_the_same_crop_rotation_and_jitter():
    torch.manual_seed(0)
    transform = augment_a(AugmentConfig(size=32))
    for _ in range(5):
        x_o, x_v = two_views(_static_clip(), transform)
        for x in (x_o, x_v):
            assert x.shape == (8, 3, 32, 32) and x.dtype == torch.uint8
            assert torch.equal(x, x[:1].expand_as(x))  # identical input frames stay identical


def test_the_two_views_are_different_draws():
    torch.manual_seed(1)
    x_o, x_v = two_views(_static_clip(), augment_a(AugmentConfig(size=32)))
    assert (x_o.float() - x_v.float()).abs().mean() > 5


def test_without_jitter_and_rotation_a_view_is_a_crop_of_the_clip():
    # a horizontal ramp: any crop-and-resize of it is still increasing from left to right
    ramp = np.broadcast_to(np.linspace(0, 255, 64, dtype=np.float32)[None, None, :, None], (4, 48, 64, 3))
    transform = augment_a(AugmentConfig(size=32, rotation=0.0, jitter_p=0.0))
    torch.manual_seed(2)
    x_o, _ = two_views(ramp.astype(np.uint8), transform)
    row = x_o[0, 0, 16].float()
    assert (row.diff() >= -1).all() and row[-1] - row[0] > 60


def test_size_224():
    x_o, _ = two_views(_static_clip(t=2, h=240, w=320), augment_a(AugmentConfig(size=224)))
    assert x_o.shape == (2, 3, 224, 224)
