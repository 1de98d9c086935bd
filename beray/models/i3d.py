"""I3D: Carreira & Zisserman, "Quo Vadis, Action Recognition? A New Model and the Kinetics Dataset", CVPR 2017.

Inception-v1 (Szegedy et al. 2015) inflated to 3D, RGB stream, as in Fig. 3 of
the paper and DeepMind's kinetics-i3d code: Conv3d_1a_7x7 (stride 2),
MaxPool 1x3x3, Conv3d_2b_1x1, Conv3d_2c_3x3, MaxPool 1x3x3, Mixed_3b-3c,
MaxPool 3x3x3 (stride 2), Mixed_4b-4f, MaxPool 2x2x2 (stride 2), Mixed_5b-5c.
Every conv is followed by BN and ReLU; TF "SAME" padding becomes symmetric
padding (ceil mode for the 2x2x2 pool), which gives the same output sizes.
The net ends at Mixed_5c (the avg pool and logits conv are the head).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn as nn
from torch import Tensor

from beray.models.backbone import Backbone, channels, init_weights, register

# Inception-v1 widths (Szegedy et al. 2015, Table 1): #1x1, #3x3 reduce, #3x3,
# #5x5 reduce, #5x5 (a 3x3x3 conv in I3D), pool proj. Output: #1x1 + #3x3 + #5x5 + pool proj.
MIXED = {
    "mixed_3b": (64, 96, 128, 16, 32, 32),
    "mixed_3c": (128, 128, 192, 32, 96, 64),
    "mixed_4b": (192, 96, 208, 16, 48, 64),
    "mixed_4c": (160, 112, 224, 24, 64, 64),
    "mixed_4d": (128, 128, 256, 24, 64, 64),
    "mixed_4e": (112, 144, 288, 32, 64, 64),
    "mixed_4f": (256, 160, 320, 32, 128, 128),
    "mixed_5b": (256, 160, 320, 32, 128, 128),
    "mixed_5c": (384, 192, 384, 48, 128, 128),
}


class Unit3d(nn.Sequential):
    """Conv (no bias, "same" padding) + BN + ReLU: the Unit3D of kinetics-i3d."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1) -> None:
        super().__init__(
            nn.Conv3d(c_in, c_out, kernel, stride, padding=kernel // 2, bias=False),
            nn.BatchNorm3d(c_out),
            nn.ReLU(inplace=True),
        )


class Mixed(nn.Module):
    """Inflated Inception module: 1x1 | 1x1 -> 3x3x3 | 1x1 -> 3x3x3 | 3x3x3 max pool -> 1x1, concatenated."""

    def __init__(self, c_in: int, c: Sequence[int]) -> None:
        super().__init__()
        self.branch0 = Unit3d(c_in, c[0])
        self.branch1 = nn.Sequential(Unit3d(c_in, c[1]), Unit3d(c[1], c[2], 3))
        self.branch2 = nn.Sequential(Unit3d(c_in, c[3]), Unit3d(c[3], c[4], 3))
        self.branch3 = nn.Sequential(nn.MaxPool3d(3, 1, padding=1), Unit3d(c_in, c[5]))
        self.out_channels = c[0] + c[2] + c[4] + c[5]

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], dim=1)


@register("i3d")
class I3D(Backbone):
    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        c64, c192 = channels(64, width), channels(192, width)
        layers: list[tuple[str, nn.Module]] = [
            ("conv1a", Unit3d(3, c64, kernel=7, stride=2)),
            ("pool2a", nn.MaxPool3d((1, 3, 3), (1, 2, 2), padding=(0, 1, 1))),
            ("conv2b", Unit3d(c64, c64)),
            ("conv2c", Unit3d(c64, c192, kernel=3)),
            ("pool3a", nn.MaxPool3d((1, 3, 3), (1, 2, 2), padding=(0, 1, 1))),
        ]
        c = c192
        for name, widths in MIXED.items():
            if name == "mixed_4b":
                layers.append(("pool4a", nn.MaxPool3d(3, 2, padding=1)))
            if name == "mixed_5b":
                layers.append(("pool5a", nn.MaxPool3d(2, 2, ceil_mode=True)))
            mixed = Mixed(c, [channels(n, width) for n in widths])
            layers.append((name, mixed))
            c = mixed.out_channels
        self.layers = nn.Sequential(OrderedDict(layers))
        self.out_channels = c
        init_weights(self)

    def features(self, x: Tensor) -> Tensor:
        return self.layers(x)
