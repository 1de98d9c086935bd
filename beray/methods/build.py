"""From a config to a method and the views it needs, and from a batch of uint8 clips to its loss
(one training step's math)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from beray.batch import CLIPS, Views
from beray.config import Config
from beray.methods.moco import MoCoBE
from beray.methods.pretext import PRETEXTS
from beray.methods.supervised import Classifier
from beray.models import Backbone, build_backbone

# Kinetics-400 statistics, as torchvision's video models use
MEAN = torch.tensor([0.43216, 0.394666, 0.37645])
STD = torch.tensor([0.22803, 0.22145, 0.216989])


def _method(cfg: Config) -> tuple[type[nn.Module], dict]:
    """The method's class and its settings from ``cfg.method``."""
    m = cfg.method
    if m.name == "moco":
        return MoCoBE, {"dim": m.dim, "queue_size": m.queue_size, "momentum": m.momentum, "tau": m.tau,
                        "hard_negative": m.hard_negative, "distracted_query": m.distracted_query}
    if m.name == "finetune":
        return Classifier, {"num_classes": m.num_classes, "dropout": m.dropout}
    return PRETEXTS[m.name], {"beta": m.beta}


def build_method(cfg: Config) -> nn.Module:
    """MoCo + BE (Eq. 7), a pretext task + BE (Eq. 5) or a fine-tuning classifier on the configured backbone."""
    cls, kwargs = _method(cfg)
    return cls(build_backbone(cfg.model.backbone, cfg.model.width), **kwargs)


def encoder(model: nn.Module) -> Backbone:
    """The backbone F(x; theta) that a method trains (MoCo's query encoder's), what downstream tasks keep."""
    model = getattr(model, "module", model)  # DDP
    return model.encoder_q.backbone if isinstance(model, MoCoBE) else model.backbone


def method_views(cfg: Config) -> Views:
    """What the configured method needs of each video (its own declaration), for the pipeline."""
    cls, kwargs = _method(cfg)
    return cls.views_for(**kwargs)


def make_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """The optimiser over the trainable parameters (MoCo's key encoder is not): SGD with the Sec. 4.1
    settings, or AdamW (decoupled weight decay) for the small synthetic presets."""
    o = cfg.optim
    params = [p for p in model.parameters() if p.requires_grad]
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


def prepare_clips(x: Tensor, device: torch.device) -> Tensor:
    """uint8 (..., T, C, H, W) from the pipeline -> normalised float (..., C, T, H, W) on ``device``.

    Clips travel as uint8 (4x less than float) and become float only on the device.
    """
    x = x.to(device, non_blocking=True).float().div_(255)
    x = (x - MEAN.to(device, non_blocking=True).view(3, 1, 1)) / STD.to(device, non_blocking=True).view(3, 1, 1)
    return x.transpose(-4, -3)




def method_loss(model: nn.Module, batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    """The loss of one batch and what to log with it; ``loss`` is what to minimise. The batch holds
    what the method's views asked for; every method takes the ``inputs`` it names from it."""
    wanted = getattr(model, "module", model).inputs  # DDP wraps the method
    inputs = {k: prepare_clips(batch[k], device) if k in CLIPS else batch[k].to(device, non_blocking=True)
              for k in wanted if k in batch}
    return model(**inputs)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               batch: dict[str, Tensor], device: torch.device, amp: bool = False) -> dict[str, Tensor]:
    """One optimiser step on ``batch``, in float16 autocast with loss scaling when ``amp`` (CUDA),
    as torch.amp's recipe writes it. Returns the method's outputs (``loss`` and what to log)."""
    with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
        out = method_loss(model, batch, device)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(out["loss"]).backward()
    scaler.step(optimizer)
    scaler.update()
    return out
