import numpy as np
import pytest

from beray.data import sampling


def test_clip_indices_stride_and_start():
    assert sampling.clip_indices(100, 4, 3, start=10).tolist() == [10, 13, 16, 19]


def test_short_video_loops():
    # 10 frames cannot hold 4 frames at stride 4 (span 13): indices wrap around
    assert sampling.clip_span(4, 4) == 13
    assert sampling.clip_indices(10, 4, 4).tolist() == [0, 4, 8, 2]
    assert sampling.max_start(10, 4, 4) == 0


def test_random_start_covers_every_fitting_position():
    rng = np.random.default_rng(0)
    starts = {sampling.random_start(20, 4, 2, rng) for _ in range(500)}
    assert starts == set(range(0, 20 - 7 + 1))


def test_uniform_starts_span_first_to_last():
    assert sampling.uniform_starts(100, 16, 4, 3).tolist() == [0, 20, 39]
    assert sampling.uniform_starts(100, 16, 4, 1).tolist() == [0]
    assert sampling.uniform_starts(10, 16, 4, 4).tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize("args", [(0, 1), (4, 0)])
def test_bad_arguments(args):
    with pytest.raises(ValueError):
        sampling.clip_span(*args)
