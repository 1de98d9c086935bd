"""BackgroundBias-Synth: deterministic bytes, the bias it promises, motions that are what they say."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

from beray.data.datasets import index_dataset
from beray.data.synth import CLASSES, FAMILIES, SynthConfig, assign_families, ensure_synth, foreground_masks, generate
from beray.data.video import read_clip

SMALL = SynthConfig(size=32, frames=16, train_per_class=4, test_per_class=2, seed=3)


def _digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_any_workers(tmp_path):
    a = _digest(generate(tmp_path / "a", SMALL, workers=1, progress=False))
    b = _digest(generate(tmp_path / "b", SMALL, workers=2, progress=False))
    assert a == b and len(a) == 6 * (4 + 2 + 2) + 6  # videos, 3 manifests, classes, json, preview
    c = _digest(generate(tmp_path / "c", SynthConfig(**{**SMALL.__dict__, "seed": 4}), workers=2, progress=False))
    assert c["train.csv"] != a["train.csv"] or any(c[k] != a[k] for k in a if k.endswith(".avi"))


def test_manifests_index_and_videos_read(tmp_path):
    root = generate(tmp_path / "s", SMALL, workers=2, progress=False)
    idx = index_dataset("synth", root)
    assert list(idx.subsets) == ["train", "test_biased", "test_swapped"]
    assert idx.classes == list(CLASSES)
    assert [len(v) for v in idx.subsets.values()] == [24, 12, 12]
    clip = read_clip(idx.subsets["train"][0].path, 8, 2)
    assert clip.shape == (8, 32, 32, 3)


@pytest.mark.parametrize("rho", [0.9, 0.6])
def test_assigned_bias_is_rho(rho):
    labels = np.repeat(np.arange(6), 2000)
    fam = assign_families(labels, rho, np.random.default_rng(0), biased=True)
    own = (fam == labels).mean()
    assert abs(own - rho) < 4 * math.sqrt(rho * (1 - rho) / len(labels))
    # the other families share the rest evenly
    others = np.bincount((fam - labels)[fam != labels] % 6, minlength=6)[1:]
    assert others.min() > 0.8 * others.mean()
    swapped = assign_families(labels, rho, np.random.default_rng(1), biased=False)
    table = np.histogram2d(labels, swapped, bins=6)[0]
    assert abs((swapped == labels).mean() - 1 / 6) < 0.02 and table.min() > 0.7 * table.mean()


def test_generated_train_split_holds_the_bias(tmp_path):
    config = SynthConfig(size=32, frames=2, train_per_class=60, test_per_class=60, rho=0.9)
    root = generate(tmp_path / "b", config, workers=2, progress=False)

    def own_fraction(split):
        rows = (root / f"{split}.csv").read_text().splitlines()[1:]
        return np.mean([FAMILIES.index(r.split(",")[3]) == int(r.split(",")[1]) for r in rows])

    n = 360
    assert abs(own_fraction("train") - 0.9) < 3 * math.sqrt(0.09 / n)
    assert abs(own_fraction("test_biased") - 0.9) < 3 * math.sqrt(0.09 / n)
    assert abs(own_fraction("test_swapped") - 1 / 6) < 3 * math.sqrt((1 / 6) * (5 / 6) / n)


@pytest.mark.parametrize("label", range(6))
def test_motion_matches_the_class(label):
    masks = foreground_masks(label, 64, 16, np.random.default_rng(label))
    ys, xs = [np.array([np.nonzero(m)[i].mean() for m in masks]) for i in (0, 1)]
    dx, dy = xs[-1] - xs[0], ys[-1] - ys[0]
    name = CLASSES[label]
    if name in ("left", "right", "up", "down"):
        main, side = (dx, dy) if name in ("left", "right") else (dy, dx)
        assert abs(main) > 10 and abs(side) < 1
        assert (main > 0) == (name in ("right", "down"))
        return
    # rotation: the T turns about a fixed point, so its centroid runs along a circle round
    # it. Fit that circle and follow the centroid's angle: image y points down, so a
    # clockwise turn on screen is a growing angle.
    assert np.ptp(xs) < 0.3 * 64 and np.ptp(ys) < 0.3 * 64
    a = np.stack([xs, ys, np.ones_like(xs)], 1)
    (bx, by, _), *_ = np.linalg.lstsq(a, xs**2 + ys**2, rcond=None)  # x^2+y^2 = bx x + by y + c
    turn = np.unwrap(np.arctan2(ys - by / 2, xs - bx / 2))
    per_frame = np.rad2deg(turn[-1] - turn[0]) / (len(xs) - 1)
    assert 6 < abs(per_frame) < 16  # synth turns 8-14 degrees a frame
    assert (per_frame > 0) == (name == "clockwise")


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="rho"):
        SynthConfig(rho=1.5)
    with pytest.raises(ValueError, match="size"):
        SynthConfig(size=33)


def test_ensure_synth_generates_once(tmp_path, monkeypatch):
    monkeypatch.setenv("BERAY_CACHE", str(tmp_path))
    root = ensure_synth(SMALL, progress=False)
    stamp = (root / "synth.json").stat().st_mtime_ns
    assert ensure_synth(SMALL, progress=False) == root
    assert (root / "synth.json").stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
