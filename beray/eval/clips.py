"""Test-time clips: deterministic, no augmentation, every clip a centre crop at the training size.

A video's clips come in one of four samplings:

- ``centre``: one clip in the middle of the video (frozen-feature kNN and linear probes);
- ``uniform``: ``clips`` clips uniformly spaced over the video, the paper's 10-clip test (Sec. 4.1);
- ``cut``: the video cut into consecutive clips of T frames at the stride, each a retrieval query
  or gallery item (Sec. 4.3);
- ``static``: one frame, drawn from (seed, video), repeated T times (the static video of Sec. 4.5).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from beray.data import sampling
from beray.data.video import VideoReader

SAMPLINGS = ("centre", "uniform", "cut", "static")


@dataclass(frozen=True)
class ClipSpec:
    num_frames: int
    stride: int
    size: int  # short side at decode, then a centre crop of size x size
    sampling: str = "centre"
    clips: int = 10  # ``uniform`` only
    seed: int = 0  # ``static`` only: which frame

    def __post_init__(self):
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"unknown sampling {self.sampling!r}; allowed: {', '.join(SAMPLINGS)}")


def clip_starts(n: int, spec: ClipSpec) -> np.ndarray:
    """Start frames of the clips of a video (segment) of ``n`` frames."""
    span = sampling.clip_span(spec.num_frames, spec.stride)
    if spec.sampling == "uniform":
        return sampling.uniform_starts(n, spec.num_frames, spec.stride, spec.clips)
    if spec.sampling == "cut":
        return np.arange(0, max(n - span, 0) + 1, span)
    return np.array([sampling.max_start(n, spec.num_frames, spec.stride) // 2])


def eval_clips(record: dict, spec: ClipSpec, index: int, timeout_s: float | None = None) -> np.ndarray:
    """uint8 (clips, T, 3, size, size) of video ``record``; raises VideoReadError."""
    t = spec.num_frames
    with VideoReader(record["path"], timeout_s=timeout_s) as reader:
        lo, n = reader.segment(record.get("start_frame"), record.get("end_frame"))
        if spec.sampling == "static":
            frame = int(np.random.default_rng([spec.seed, index, 4]).integers(n))  # 4: the static-frame stream
            idx = np.full((1, t), frame)
        else:
            idx = np.stack([sampling.clip_indices(n, t, spec.stride, int(s)) for s in clip_starts(n, spec)])
        frames = reader.frames(lo + idx.reshape(-1), spec.size)  # (N * T, H, W, 3), short side = size
    h, w = frames.shape[1:3]
    top, left = (h - spec.size) // 2, (w - spec.size) // 2
    frames = frames[:, top:top + spec.size, left:left + spec.size]
    return np.ascontiguousarray(frames.reshape(len(idx), t, *frames.shape[1:]).transpose(0, 1, 4, 2, 3))
