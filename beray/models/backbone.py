"""The backbone contract and registry: F(x; theta) -> (f, v).

Every backbone maps a clip x (B, 3, T, H, W) to its last conv feature map
f (B, C, T', H', W') and v (B, C), the spatio-temporal global max of f: the
paper's encoders are "followed by a spatio-temporal max pooling layer"
(Sec. 4.1), and phi in Eq. 6 is that pooling plus a linear layer.
Eq. 4's psi (spatial max only, C x T) is ``f.amax(dim=(3, 4))``.
"""

from __future__ import annotations

import abc
from typing import Callable, TypeVar

import torch.nn as nn
from torch import Tensor

MIN_CHANNELS = 4
BACKBONES: dict[str, Callable[[float], Backbone]] = {}
_B = TypeVar("_B", bound=Callable[..., "Backbone"])


class Backbone(nn.Module, abc.ABC):
    """Base class: subclasses set ``out_channels`` and implement ``features``."""

    out_channels: int

    @abc.abstractmethod
    def features(self, x: Tensor) -> Tensor:
        """The last conv feature map f, (B, C, T', H', W')."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f = self.features(x)
        return f, f.amax(dim=(2, 3, 4))


def register(name: str) -> Callable[[_B], _B]:
    """Decorator adding a constructor ``width -> Backbone`` to ``BACKBONES``."""

    def add(constructor: _B) -> _B:
        BACKBONES[name] = constructor
        return constructor

    return add


def build_backbone(name: str, width: float = 1.0) -> Backbone:
    """The backbone ``name`` with every channel count scaled by ``width`` (1.0: the published net)."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")
    return BACKBONES[name](width)


def channels(c: int, width: float) -> int:
    """``c`` channels scaled by ``width``, never fewer than ``MIN_CHANNELS``."""
    return max(MIN_CHANNELS, round(c * width))


def init_weights(net: nn.Module) -> None:
    """torchvision's VideoResNet initialisation: He (fan-out) convs, unit BN."""
    for m in net.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
