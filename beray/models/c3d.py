"""C3D: Tran et al., "Learning Spatiotemporal Features with 3D Convolutional Networks", ICCV 2015.

Eight 3x3x3 convs (64-128-256-256-512-512-512-512), stride 1, padding 1, each
followed by BN and ReLU (the BN variant that self-supervised video work, the
BE authors' code included, trains from scratch). Max pools after conv1a
(1x2x2, keeping early temporal signal), conv2a, conv3b and conv4b (2x2x2).
The net ends at conv5b's map, as the BE code's C3D does: pool5 and fc6-fc8
are Tran et al.'s classifier head, and a max pool5 would not change v.
"""

from __future__ import annotations

from collections import OrderedDict

import torch.nn as nn
from torch import Tensor

from beray.models.backbone import Backbone, channels, init_weights, register


def conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(c_in, c_out, 3, padding=1), nn.BatchNorm3d(c_out), nn.ReLU(inplace=True))


@register("c3d")
class C3D(Backbone):
    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        c = [channels(n, width) for n in (64, 128, 256, 256, 512, 512, 512, 512)]
        self.layers = nn.Sequential(OrderedDict([
            ("conv1a", conv_bn_relu(3, c[0])), ("pool1", nn.MaxPool3d((1, 2, 2), (1, 2, 2))),
            ("conv2a", conv_bn_relu(c[0], c[1])), ("pool2", nn.MaxPool3d(2, 2)),
            ("conv3a", conv_bn_relu(c[1], c[2])), ("conv3b", conv_bn_relu(c[2], c[3])), ("pool3", nn.MaxPool3d(2, 2)),
            ("conv4a", conv_bn_relu(c[3], c[4])), ("conv4b", conv_bn_relu(c[4], c[5])), ("pool4", nn.MaxPool3d(2, 2)),
            ("conv5a", conv_bn_relu(c[5], c[6])), ("conv5b", conv_bn_relu(c[6], c[7])),
        ]))
        self.out_channels = c[7]
        init_weights(self)

    def features(self, x: Tensor) -> Tensor:
        return self.layers(x)
