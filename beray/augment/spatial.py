"""Basic augmentation set A (Sec. 3.1, 4.1): temporally consistent crop, rotation, colour jitter, resize.

One draw of parameters per clip, shared by all its frames (torchvision's v2
transforms treat a ``tv_tensors.Video`` that way); x_o and x_v are two
independent draws on the same clip, so they are crops at different spatial
locations. No horizontal flip: it would turn "moving left" into "moving right".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from beray.config import AugmentConfig

if TYPE_CHECKING:
    from torch import Tensor
    from torchvision import tv_tensors
    from torchvision.transforms import v2

# torch and torchvision are imported by the functions that use them: every Ray Data plan of the training
# stream carries the augment section, and the coordinator actors that unpickle a plan (Ray Data's split
# coordinator, Ray Train's dataset manager) should not pay seconds of imports they never use.


def augment_a(config: AugmentConfig = AugmentConfig()) -> v2.Transform:
    """The transform for one clip: uint8 ``tv_tensors.Video`` (T, C, H, W) -> uint8 (T, C, size, size)."""
    from torchvision.transforms import v2

    return v2.Compose([
        v2.RandomResizedCrop(config.size, scale=config.crop_scale, antialias=True),
        v2.RandomRotation(config.rotation),
        v2.RandomApply([v2.ColorJitter(*config.jitter)], p=config.jitter_p),
    ])


def to_video(clip: np.ndarray | Tensor) -> tv_tensors.Video:
    """A decoded clip, uint8 (T, H, W, 3) as the reader returns it, as a (T, 3, H, W) video tensor."""
    import torch
    from torchvision import tv_tensors

    t = torch.from_numpy(np.ascontiguousarray(clip)) if isinstance(clip, np.ndarray) else clip
    return tv_tensors.Video(t.permute(0, 3, 1, 2))


def two_views(clip: np.ndarray | Tensor, transform: v2.Transform) -> tuple[Tensor, Tensor]:
    """x_o and x_v: two independent draws of A on the same clip, uint8 (T, 3, size, size) each."""
    from torch import Tensor

    video = to_video(clip)
    return transform(video).as_subclass(Tensor), transform(video).as_subclass(Tensor)
