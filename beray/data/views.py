"""The views a method trains on, made from one video record: decode, sample, augment (set A).

Plain NumPy/PyTorch, no Ray: the Ray Data pipeline maps these over records, and
the DataLoader baseline of ``beray.bench train`` calls the same functions.

A method declares what it needs as ``beray.batch.Views`` (``beray.methods.build.method_views``);
``ViewMaker`` builds exactly that:

- x_o and x_v: two draws of A (a^1, a^2) on the same clip(s) (Fig. 2); the noise
  (x_d = BE(x_v)) is applied later, to whole batches on the Train worker.
- ``distract=False`` (supervised fine-tuning): x_o alone, no x_v and no noise.
- ``clips`` > 1 (clip order prediction): that many consecutive clips per view,
  one draw of A shared by them.
- ``hard_negative`` (MoCo, Eq. 7): x_h, another clip of the same video with x_o's
  draw a^1, and ``h_valid``, False when the video holds no clip distinct from x_o
  (then x_h is a copy of x_o and the loss leaves it out).

Every random draw for a video (clip starts, crops, jitter) comes from the
generator it is given: ``video_rng(seed, epoch, index)`` makes a run reproducible.
Clips are uint8 (T, C, H, W).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from beray.augment.spatial import augment_a, to_video
from beray.batch import Views
from beray.config import AugmentConfig
from beray.data import sampling
from beray.data.datasets import VideoRecord
from beray.data.video import VideoReader


@dataclass(frozen=True)
class ViewSpec:
    views: Views
    num_frames: int
    stride: int
    decode_size: int
    augment: AugmentConfig
    timeout_s: float | None = None  # per video; slower ones are abandoned as unreadable


def video_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of every draw made for video ``index`` in ``epoch`` of a run seeded ``seed``."""
    return np.random.default_rng([seed, epoch, 0, index])  # 0: video draws (1: noise, 2: order, 3: ranks)


class ViewMaker:
    """Callable: (record, rng) -> dict of uint8 views, or raises VideoReadError."""

    def __init__(self, spec: ViewSpec):
        self.spec = spec
        self.transform = augment_a(spec.augment)

    def __call__(self, record: dict, rng: np.random.Generator) -> dict:
        import torch  # here, not at the top: see beray.augment.spatial

        s, v = self.spec, self.spec.views
        torch.manual_seed(int(rng.integers(2**62)))  # torchvision's v2 transforms draw from torch's global RNG
        t = s.num_frames
        with VideoReader(record["path"], timeout_s=s.timeout_s) as reader:
            lo, n = reader.segment(record.get("start_frame"), record.get("end_frame"))
            starts = self._starts(n, rng)
            idx = np.concatenate([sampling.clip_indices(n, t, s.stride, st) for st in starts if st is not None])
            video = to_video(reader.frames(lo + idx, s.decode_size))  # (clips * T, C, H, W)
        out = {"label": record["label"]}
        if v.hard_negative:
            x_o_h = self._a(video)  # one draw a^1 for x_o and the hard negative x_h
            out.update(x_o=x_o_h[:t], x_v=self._a(video[:t]), h_valid=starts[1] is not None)
            out["x_h"] = x_o_h[t:] if out["h_valid"] else out["x_o"]  # masked in the loss when not valid
            return out
        x = {"x_o": self._a(video), **({"x_v": self._a(video)} if v.distract else {})}
        if v.clips > 1:
            x = {k: c.reshape(v.clips, t, *c.shape[1:]) for k, c in x.items()}
        return {**out, **x}

    def _a(self, video) -> np.ndarray:
        from torch import Tensor

        return self.transform(video).as_subclass(Tensor).numpy()

    def _starts(self, n: int, rng: np.random.Generator) -> list[int | None]:
        """Clip starts: ``clips`` consecutive ones, or one and the hard negative's (None: no distinct clip)."""
        s, v = self.spec, self.spec.views
        if v.clips > 1:
            span = sampling.clip_span(s.num_frames, s.stride)
            first = int(rng.integers(0, max(n - v.clips * span, 0) + 1))
            return [first + i * span for i in range(v.clips)]
        start = sampling.random_start(n, s.num_frames, s.stride, rng)
        if not v.hard_negative:
            return [start]
        return [start, sampling.hard_negative_start(n, s.num_frames, s.stride, start, rng)]


def record_row(r: VideoRecord) -> dict:
    """A VideoRecord as a plain row (what Ray Data and DataLoaders carry)."""
    return {"path": r.path, "label": r.label, "video_id": r.video_id,
            "start_frame": r.start_frame if r.start_frame is not None else -1,
            "end_frame": r.end_frame if r.end_frame is not None else -1}
