"""3D CNN backbones x (B, 3, T, H, W) -> (f, v): C3D, R3D-18/34, I3D, R(2+1)D-18.

    from beray.models import build_backbone, BACKBONES
    net = build_backbone("r3d_18", width=1.0)
    f, v = net(x)   # f: (B, C, T', H', W'); v: (B, C), the spatio-temporal max of f
    net.out_channels
"""

from beray.models import c3d, i3d, resnet3d  # noqa: F401  (each module registers its backbones)
from beray.models.backbone import BACKBONES, Backbone, build_backbone

__all__ = ["BACKBONES", "Backbone", "build_backbone"]
