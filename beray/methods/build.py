"""From a config to a method, and from a batch of uint8 clips to its loss (one training step's math)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from beray.config import Config
from beray.methods.moco import MoCoBE
from beray.methods.pretext import build_pretext
from beray.models import build_backbone

# Kinetics-400 statistics, as torchvision's video models use
MEAN = torch.tensor([0.43216, 0.394666, 0.37645])
STD = torch.tensor([0.22803, 0.22145, 0.216989])


def build_method(cfg: Config) -> nn.Module:
    """MoCo + BE (Eq. 7) or a pretext task + BE (Eq. 5) on the configured backbone."""
    backbone = build_backbone(cfg.model.backbone, cfg.model.width)
    m = cfg.method
    if m.name == "moco":
        return MoCoBE(backbone, m.dim, m.queue_size, m.momentum, m.tau, m.hard_negative)
    return build_pretext(m.name, backbone, beta=m.beta)


def make_optimizer(model: nn.Module, cfg: Config) -> torch.optim.SGD:
    """SGD over the trainable parameters (MoCo's key encoder is not), Sec. 4.1 settings."""
    o = cfg.optim
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=o.lr, momentum=o.momentum,
                           weight_decay=o.weight_decay)


def prepare_clips(x: Tensor, device: torch.device) -> Tensor:
    """uint8 (..., T, C, H, W) from the pipeline -> normalised float (..., C, T, H, W) on ``device``.

    Clips travel as uint8 (4x less than float) and become float only on the device.
    """
    x = x.to(device, non_blocking=True).float().div_(255)
    x = (x - MEAN.to(device).view(3, 1, 1)) / STD.to(device).view(3, 1, 1)
    return x.transpose(-4, -3)


def method_loss(model: nn.Module, method: str, batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    """The loss of one batch and what to log with it; ``loss`` is what to minimise."""
    x_o, x_d = prepare_clips(batch["x_o"], device), prepare_clips(batch["x_d"], device)
    if method == "moco":
        x_h = prepare_clips(batch["x_h"], device) if "x_h" in batch else None
        logits, labels = model(x_o, x_d, x_h)
        loss = F.cross_entropy(logits, labels)
        acc = (logits.detach().argmax(1) == labels).float().mean()
        return {"loss": loss, "acc": acc}
    return model(x_o, x_d)
