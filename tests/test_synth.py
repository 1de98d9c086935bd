"""BackgroundBias-Synth: deterministic bytes, the bias it promises, motions that are what they say."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest

from beray.data.datasets import index_dataset
from beray.data.synth import (CLASSES, FAMILIES, SynthConfig, assign_families, ensure_synth, foreground_masks, generate,
                              plan, render, synth_config)
from beray.data.video import read_clip

SMALL = SynthConfig(size=32, frames=16, train_per_class=4, test_per_class=2, unbiased_per_class=3, seed=3)


def _digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.ray
def test_same_seed_same_bytes_any_workers(tmp_path):
    a = _digest(generate(tmp_path / "a", SMALL, workers=1, progress=False))
    b = _digest(generate(tmp_path / "b", SMALL, workers=2, progress=False))
    assert a == b and len(a) == 6 * (4 + 2 + 2 + 3) + 7  # videos, 4 manifests, classes, json, preview
    c = _digest(generate(tmp_path / "c", SynthConfig(**{**SMALL.__dict__, "seed": 4}), workers=2, progress=False))
    assert c["train.csv"] != a["train.csv"] or any(c[k] != a[k] for k in a if k.endswith(".avi"))


@pytest.mark.ray
def test_manifests_index_and_videos_read(tmp_path):
    root = generate(tmp_path / "s", SMALL, workers=2, progress=False)
    idx = index_dataset("synth", root)
    assert list(idx.subsets) == ["train", "test_biased", "test_swapped", "train_unbiased"]
    assert idx.classes == list(CLASSES)
    assert [len(v) for v in idx.subsets.values()] == [24, 12, 12, 18]
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


@pytest.mark.ray
def test_generated_train_split_holds_the_bias(tmp_path):
    config = SynthConfig(size=32, frames=2, train_per_class=60, test_per_class=60, unbiased_per_class=60, rho=0.9)
    root = generate(tmp_path / "b", config, workers=2, progress=False)

    def own_fraction(split):
        rows = (root / f"{split}.csv").read_text().splitlines()[1:]
        return np.mean([FAMILIES.index(r.split(",")[3]) == int(r.split(",")[1]) for r in rows])

    n = 360
    assert abs(own_fraction("train") - 0.9) < 3 * math.sqrt(0.09 / n)
    assert abs(own_fraction("test_biased") - 0.9) < 3 * math.sqrt(0.09 / n)
    assert abs(own_fraction("test_swapped") - 1 / 6) < 3 * math.sqrt((1 / 6) * (5 / 6) / n)
    assert abs(own_fraction("train_unbiased") - 1 / 6) < 3 * math.sqrt((1 / 6) * (5 / 6) / n)


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


def test_concurrent_drivers_write_one_copy_whose_records_follow_its_root_wherever_it_is_mounted(tmp_path):
    # Two drivers of a cluster (sweeps started side by side) generate the same copy into one shared cache at
    # once: each writes its own temporary folder, one rename wins, both get the same root, nothing is left.
    import shutil
    import subprocess
    import sys

    code = ("import sys; from beray.data.synth import SynthConfig, ensure_synth; "
            "print(ensure_synth(SynthConfig(size=32, frames=16, train_per_class=4, test_per_class=2, "
            "unbiased_per_class=3, seed=3), progress=False))")
    env = {**__import__("os").environ, "BERAY_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    roots = {p.communicate(timeout=300)[0].strip() for p in procs}
    assert len(roots) == 1 and [p.returncode for p in procs] == [0, 0]
    root = Path(roots.pop())
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [root.name]  # one copy, no temporary folder
    assert _digest(root) == _digest(generate(tmp_path / "solo", SMALL, workers=1, progress=False))
    # its manifests name videos relative to the root: mounted elsewhere (another node's path), it still reads
    moved = shutil.move(str(root), tmp_path / "elsewhere")
    idx = index_dataset("synth", moved)
    assert all(str(r.path).startswith(str(moved)) for v in idx.subsets.values() for r in v)
    assert read_clip(idx.subsets["test_swapped"][0].path, 8, 2).shape[0] == 8


def _background_pixels(spec, config):
    """The video of ``spec`` and a mask of the pixels no frame's T covers."""
    video = render(spec, config)
    return video, video.std(0).max(-1) == 0


def test_background_pool_shares_textures_across_videos_and_splits():
    pooled = SynthConfig(size=32, frames=4, train_per_class=8, test_per_class=4, background_pool=2, seed=1)
    specs = plan(pooled)
    assert {s.background_id for s in specs} == {0, 1}
    by_texture = {}
    for s in specs:
        by_texture.setdefault((s.family, s.background_id), []).append(s)
    shared = next(v for v in by_texture.values() if len({x.split for x in v}) > 1)  # a texture in two splits
    (va, sa), (vb, sb) = (_background_pixels(x, pooled) for x in shared[:2])
    both = sa & sb  # pixels that are background in both videos
    assert both.mean() > 0.5 and np.array_equal(va[0][both], vb[0][both])
    own = SynthConfig(size=32, frames=4, train_per_class=8, test_per_class=4, seed=1)
    same_family = [s for s in plan(own) if s.family == shared[0].family][:2]
    (va, sa), (vb, sb) = (_background_pixels(x, own) for x in same_family)
    assert not np.array_equal(va[0][sa & sb], vb[0][sa & sb])  # pool 0: a texture of its own per video


def test_object_pool_shares_the_t_s_colour():
    config = SynthConfig(size=32, frames=4, train_per_class=6, object_pool=1, seed=2)
    colours = set()
    for s in plan(config)[:12:5]:
        video = render(s, config)
        changed = video[0][video.std(0).max(-1) > 0].reshape(-1, 3)  # the T, and where it passes
        values, counts = np.unique(changed, axis=0, return_counts=True)
        colours.add(tuple(values[counts.argmax()]))  # one flat colour outnumbers any texture value
    assert all(s.object_id == 0 for s in plan(config))
    assert len(colours) <= 2  # one appearance; its contrast flips only with a light or dark background


@pytest.mark.parametrize("jitter", [0, 3])
def test_camera_jitter_moves_the_background_by_at_most_jitter(jitter):
    config = SynthConfig(size=48, frames=16, train_per_class=1, camera_jitter=jitter, seed=5)
    spec = next(s for s in plan(config) if FAMILIES[s.family] == "stripes")
    video = render(spec, config).astype(np.int16)

    def misfit(t, dy, dx):  # median over the centre, so the T's few pixels do not count
        return np.median(np.abs(np.roll(video[t], (dy, dx), (0, 1)) - video[0])[8:-8, 8:-8])

    shifts = range(-2 * jitter, 2 * jitter + 1)
    for t in range(1, 16):  # some shift within 2 * jitter (two offsets in [0, 2 * jitter]) maps frame t onto frame 0
        assert min(misfit(t, dy, dx) for dy in shifts for dx in shifts) == 0, t
    moved = sum(misfit(t, 0, 0) > 0 for t in range(1, 16))
    assert moved == 0 if jitter == 0 else moved >= 10  # a static camera, or a background that moves


def test_synth_options_are_checked_by_name():
    assert synth_config({"background_pool": 8, "rho": 1}) == SynthConfig(background_pool=8, rho=1.0)
    with pytest.raises(ValueError, match="unknown BackgroundBias-Synth option 'pool'"):
        synth_config({"pool": 8})
    with pytest.raises(ValueError, match="camera_jitter must lie in"):
        synth_config({"camera_jitter": 9})
    with pytest.raises(ValueError, match="object_pool must be int"):
        synth_config({"object_pool": "many"})
