"""The batch contract between the data pipeline and the methods.

A method declares the views it needs of each video (``Views``); the pipeline
decodes and ships exactly those, and nothing else. Both sides import this
module, so a method never imports the video reader and the data code never
imports a method.

A training batch is a dict of tensors, one row per video:

- ``x_o``, ``x_v``, ``x_h``: uint8 clips (B, T, C, H, W), or (B, clips, T, C, H, W)
  when a view holds several consecutive clips (clip order prediction);
- ``x_d`` = noise(x_v) (Eq. 1 for Background Erasing), made on the Train worker
  from x_v (``beray.augment.be.add_noise``), which it replaces;
- ``h_valid``: bool (B,), False where a video holds no clip distinct from x_o;
- ``label``: int64 (B,); ``index``: int64 (B,), the record's position in its subset.

Clips travel as uint8 and become normalised float (B, C, T, H, W) only on the
device (``beray.methods.build.prepare_clips``).
"""

from __future__ import annotations

from dataclasses import dataclass

CLIPS = ("x_o", "x_d", "x_h")  # the clip views a method reads (x_v becomes x_d before the method sees it)


@dataclass(frozen=True)
class Views:
    """What a method needs of each video; the pipeline decodes and ships nothing else."""

    clips: int = 1  # consecutive clips per view (clip order prediction: 3)
    hard_negative: bool = False  # also x_h and h_valid (MoCo + BE, Eq. 7)
    distract: bool = True  # x_v, from which the worker makes x_d (False: x_o alone, as fine-tuning needs)

    def __post_init__(self):
        if self.clips < 1 or (self.clips > 1 and self.hard_negative) or (self.hard_negative and not self.distract):
            raise ValueError(f"unsupported views: {self}")
