"""3D ResNets from torchvision's ``VideoResNet``, without their head (avgpool, fc).

R3D-18 and R(2+1)D-18: Tran et al., "A Closer Look at Spatiotemporal
Convolutions for Action Recognition", CVPR 2018 (torchvision ``r3d_18`` and
``r2plus1d_18``). R3D-34: the same net with [3, 4, 6, 3] BasicBlocks, as in
Hara et al., "Can Spatiotemporal 3D CNNs Retrace the History of 2D CNNs and
ImageNet?", CVPR 2018. At ``width=1.0`` the state dict is torchvision's, minus fc.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch.nn as nn
from torch import Tensor
from torchvision.models.video.resnet import BasicBlock, Conv2Plus1D, Conv3DSimple, VideoResNet

from beray.models.backbone import Backbone, channels, init_weights, register


def basic_stem(c: int) -> nn.Sequential:
    """torchvision's ``BasicStem`` (3x7x7 conv, stride 1x2x2) with ``c`` output channels."""
    return nn.Sequential(
        nn.Conv3d(3, c, kernel_size=(3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
        nn.BatchNorm3d(c),
        nn.ReLU(inplace=True),
    )


def r2plus1d_stem(c: int) -> nn.Sequential:
    """torchvision's ``R2Plus1dStem`` (1x7x7 then 3x1x1 conv, 45 mid channels at c=64)."""
    mid = max(1, 45 * c // 64)
    return nn.Sequential(
        nn.Conv3d(3, mid, kernel_size=(1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
        nn.BatchNorm3d(mid),
        nn.ReLU(inplace=True),
        nn.Conv3d(mid, c, kernel_size=(3, 1, 1), stride=(1, 1, 1), padding=(1, 0, 0), bias=False),
        nn.BatchNorm3d(c),
        nn.ReLU(inplace=True),
    )


class VideoResNetBackbone(Backbone, VideoResNet):
    """torchvision's ``VideoResNet`` ending at layer4, with widths 64-128-256-512 scaled by ``width``."""

    def __init__(
        self,
        block: type[BasicBlock],
        conv_makers: Sequence[type[nn.Module]],
        layers: Sequence[int],
        stem: Callable[[int], nn.Module],
        width: float = 1.0,
    ) -> None:
        nn.Module.__init__(self)  # VideoResNet.__init__ hard-codes the widths: reuse its _make_layer only
        planes = [channels(64 * 2**i, width) for i in range(4)]
        self.stem, self.inplanes = stem(planes[0]), planes[0]
        self.layer1 = self._make_layer(block, conv_makers[0], planes[0], layers[0], stride=1)
        self.layer2 = self._make_layer(block, conv_makers[1], planes[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, conv_makers[2], planes[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, conv_makers[3], planes[3], layers[3], stride=2)
        self.out_channels = self.inplanes
        init_weights(self)

    def features(self, x: Tensor) -> Tensor:
        return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))


@register("r3d_18")
def r3d_18(width: float = 1.0) -> VideoResNetBackbone:
    return VideoResNetBackbone(BasicBlock, [Conv3DSimple] * 4, [2, 2, 2, 2], basic_stem, width)


@register("r3d_34")
def r3d_34(width: float = 1.0) -> VideoResNetBackbone:
    return VideoResNetBackbone(BasicBlock, [Conv3DSimple] * 4, [3, 4, 6, 3], basic_stem, width)


@register("r2plus1d_18")
def r2plus1d_18(width: float = 1.0) -> VideoResNetBackbone:
    return VideoResNetBackbone(BasicBlock, [Conv2Plus1D] * 4, [2, 2, 2, 2], r2plus1d_stem, width)
