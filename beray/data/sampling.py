"""Temporal sampling: which frame indices a clip of T frames at stride s reads.

A clip starting at frame ``start`` covers ``span = (T - 1) * s + 1`` frames.
A video with fewer than ``span`` frames cannot hold a whole clip: its indices
loop (``(start + j * s) mod n``), the convention of the BE and MoCo video code
bases, so every clip still has exactly T frames.
"""

from __future__ import annotations

import numpy as np


def clip_span(num_frames: int, stride: int) -> int:
    """Frames a clip of ``num_frames`` at ``stride`` covers, first to last."""
    if num_frames < 1 or stride < 1:
        raise ValueError(f"num_frames and stride must be >= 1, got {num_frames} and {stride}")
    return (num_frames - 1) * stride + 1


def clip_indices(video_frames: int, num_frames: int, stride: int, start: int = 0) -> np.ndarray:
    """Indices of a clip in a video of ``video_frames`` frames, looped when it is too short."""
    if video_frames < 1:
        raise ValueError("the video has no frames")
    return (start + stride * np.arange(num_frames, dtype=np.int64)) % video_frames


def max_start(video_frames: int, num_frames: int, stride: int) -> int:
    """Last start frame at which a whole clip fits (0 for videos that loop)."""
    return max(video_frames - clip_span(num_frames, stride), 0)


def random_start(video_frames: int, num_frames: int, stride: int, rng: np.random.Generator) -> int:
    """A start frame drawn uniformly from every position where the clip fits."""
    return int(rng.integers(0, max_start(video_frames, num_frames, stride) + 1))


def uniform_starts(video_frames: int, num_frames: int, stride: int, num_clips: int) -> np.ndarray:
    """``num_clips`` start frames spaced uniformly from the first to the last fitting one.

    This is the multi-clip test protocol (the paper's 10-clip fine-tuning test).
    """
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    last = max_start(video_frames, num_frames, stride)
    return np.rint(np.linspace(0, last, num_clips)).astype(np.int64)


def hard_negative_start(video_frames: int, num_frames: int, stride: int, start: int,
                        rng: np.random.Generator) -> int | None:
    """The start of x_h, Eq. (7)'s hard negative: another clip of the same video, drawn uniformly
    from the starts at least half a clip span from x_o's ``start`` (so the two share at most half
    their frames). None when the video holds no such clip: x_h would be x_o itself."""
    span = clip_span(num_frames, stride)
    starts = np.arange(max_start(video_frames, num_frames, stride) + 1)
    far = starts[np.abs(starts - start) >= max(1, span // 2)]
    return int(rng.choice(far)) if far.size else None
