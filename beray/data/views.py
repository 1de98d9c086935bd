"""The views a method trains on, made from one video record: decode, sample, augment (set A).

Plain NumPy/PyTorch, no Ray: the Ray Data pipeline maps these over records, and
the DataLoader baseline of ``beray.bench train`` calls the same functions.

- MoCo: x_o and x_v, two draws of A (a^1, a^2) on one clip; x_h, another clip of
  the same video with the same draw a^1 as x_o (the hard negative of Eq. 7).
- rotnet / cubic_puzzle: x_o and x_v.
- cop: 3 consecutive clips per view, with one draw of A shared by the 3 clips.

Clips are uint8 (T, C, H, W); the noise (x_d = BE(x_v)) is applied to batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from beray.augment.spatial import AugmentConfig, augment_a, to_video
from beray.data import sampling
from beray.data.datasets import VideoRecord
from beray.data.video import VideoReader

COP_CLIPS = 3


@dataclass(frozen=True)
class ViewSpec:
    method: str  # moco, rotnet, cubic_puzzle, cop
    num_frames: int
    stride: int
    decode_size: int
    augment: AugmentConfig
    timeout_s: float | None = None  # per video; slower ones are abandoned as unreadable


class ViewMaker:
    """Callable: a record (``record_row``'s dict) -> dict of uint8 views, or raises VideoReadError."""

    def __init__(self, spec: ViewSpec, seed: int | None = None):
        self.spec = spec
        self.transform = augment_a(spec.augment)
        self.rng = np.random.default_rng(seed)
        if seed is not None:
            torch.manual_seed(seed)  # torchvision's v2 transforms draw from torch's global RNG

    def __call__(self, record: dict) -> dict:
        s = self.spec
        with VideoReader(record["path"], timeout_s=s.timeout_s) as reader:
            lo, n = reader.segment(record.get("start_frame"), record.get("end_frame"))
            clips = COP_CLIPS if s.method == "cop" else (2 if s.method == "moco" else 1)
            idx = self._indices(n, clips)
            frames = reader.frames(lo + idx.reshape(-1), s.decode_size)
        video = to_video(frames)  # (clips * T, C, H, W)
        t = s.num_frames
        if s.method == "moco":
            x_o_h = self._a(video)  # one draw a^1 for x_o and the hard negative x_h
            return {"x_o": x_o_h[:t], "x_h": x_o_h[t:], "x_v": self._a(video[:t]), "label": record["label"]}
        if s.method == "cop":
            x_o, x_v = self._a(video), self._a(video)
            return {"x_o": x_o.reshape(COP_CLIPS, t, *x_o.shape[1:]), "x_v": x_v.reshape(COP_CLIPS, t, *x_v.shape[1:]),
                    "label": record["label"]}
        return {"x_o": self._a(video), "x_v": self._a(video), "label": record["label"]}

    def _a(self, video) -> np.ndarray:
        return self.transform(video).as_subclass(Tensor).numpy()

    def _indices(self, n: int, clips: int) -> np.ndarray:
        """(clips, T) frame indices: MoCo's clip and a different one (its hard negative), or
        COP's consecutive clips, or one clip."""
        s = self.spec
        span = sampling.clip_span(s.num_frames, s.stride)
        if clips == COP_CLIPS:
            total = COP_CLIPS * span
            start = int(self.rng.integers(0, max(n - total, 0) + 1))
            return np.stack([sampling.clip_indices(n, s.num_frames, s.stride, start + i * span) for i in range(clips)])
        starts = [sampling.random_start(n, s.num_frames, s.stride, self.rng)]
        if clips == 2:  # the hard negative: another start, as far from the first as the video allows
            choices = np.arange(sampling.max_start(n, s.num_frames, s.stride) + 1)
            far = choices[np.abs(choices - starts[0]) >= span // 2]
            starts.append(int(self.rng.choice(far if far.size else choices)))
        return np.stack([sampling.clip_indices(n, s.num_frames, s.stride, st) for st in starts])


def record_row(r: VideoRecord) -> dict:
    """A VideoRecord as a plain row (what Ray Data and DataLoaders carry)."""
    return {"path": r.path, "label": r.label, "video_id": r.video_id,
            "start_frame": r.start_frame if r.start_frame is not None else -1,
            "end_frame": r.end_frame if r.end_frame is not None else -1}
