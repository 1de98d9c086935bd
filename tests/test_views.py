"""Views: what each method declares, hard negatives that are never x_o, draws fixed by their seed."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import clip_index, write_indexed

from beray.batch import Views
from beray.config import AugmentConfig, load_config
from beray.data import sampling
from beray.data.views import ViewMaker, ViewSpec, video_rng
from beray.methods.build import method_views

# no crop, rotation or jitter: the frames' index bands stay readable after A
PLAIN = AugmentConfig(size=32, crop_scale=(1.0, 1.0), rotation=0.0, jitter_p=0.0)


def _row(path) -> dict:
    return {"path": str(path), "label": 3, "video_id": "v", "start_frame": -1, "end_frame": -1}


@pytest.mark.parametrize("method, expected", [
    ("moco", Views(hard_negative=True)), ("rotnet", Views()), ("cubic_puzzle", Views()), ("cop", Views(clips=3))])
def test_each_method_declares_its_views(method, expected):
    assert method_views(load_config(None, [f"method.name={method}"], preset="cpu-tiny")) == expected
    for n in ("eq6", "reversed", "false"):  # one stream for every hard negative: a pack trains them side by side
        assert method_views(load_config(None, [f"method.hard_negative={n}"], preset="cpu-tiny")) == Views(hard_negative=True)


def test_hard_negative_start_is_half_a_span_away_or_none():
    rng = np.random.default_rng(0)
    span = sampling.clip_span(8, 2)  # 15
    for _ in range(50):
        start = sampling.random_start(100, 8, 2, rng)
        h = sampling.hard_negative_start(100, 8, 2, start, rng)
        assert h is not None and abs(h - start) >= span // 2 and 0 <= h <= 100 - span
    assert sampling.hard_negative_start(20, 8, 2, 3, rng) is None  # starts 0..5: none 7 frames away
    assert sampling.hard_negative_start(10, 8, 2, 0, rng) is None  # shorter than a clip: it loops


def test_a_short_video_ships_no_hard_negative_and_a_long_one_a_distinct_clip(tmp_path):
    spec = ViewSpec(Views(hard_negative=True), num_frames=8, stride=2, decode_size=32, augment=PLAIN)
    maker = ViewMaker(spec)
    short = maker(_row(write_indexed(tmp_path / "short.avi", 20)), video_rng(0, 0, 0))
    assert not short["h_valid"] and np.array_equal(short["x_h"], short["x_o"])
    for i in range(5):
        long = maker(_row(write_indexed(tmp_path / "long.avi", 100)), video_rng(0, 0, i))
        o = clip_index(long["x_o"].transpose(0, 2, 3, 1))
        h = clip_index(long["x_h"].transpose(0, 2, 3, 1))
        assert long["h_valid"] and long["label"] == 3
        assert np.diff(o).tolist() == [2] * 7 and np.diff(h).tolist() == [2] * 7  # clips at stride 2
        assert abs(h[0] - o[0]) >= 7  # they share at most half their frames


def test_the_same_generator_seed_gives_the_same_views(tmp_path):
    spec = ViewSpec(Views(hard_negative=True), 8, 2, 40, AugmentConfig(size=32))  # the full set A
    maker, row = ViewMaker(spec), _row(write_indexed(tmp_path / "v.avi", 100))
    a, b, c = (maker(row, video_rng(7, epoch, 5)) for epoch in (1, 1, 2))
    for k in ("x_o", "x_v", "x_h"):
        assert np.array_equal(a[k], b[k])
    assert not np.array_equal(a["x_o"], c["x_o"])  # another epoch, other draws


def test_clip_order_views_are_consecutive_clips(tmp_path):
    spec = ViewSpec(Views(clips=3), 4, 2, 32, PLAIN)
    out = ViewMaker(spec)(_row(write_indexed(tmp_path / "v.avi", 60)), video_rng(0, 0, 0))
    assert out["x_o"].shape == (3, 4, 3, 32, 32) and "x_h" not in out
    frames = [clip_index(c.transpose(0, 2, 3, 1)) for c in out["x_o"]]
    assert frames[1][0] - frames[0][0] == 7 and frames[2][0] - frames[1][0] == 7  # span (4 - 1) * 2 + 1
