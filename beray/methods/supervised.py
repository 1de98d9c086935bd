"""Supervised fine-tuning (Sec. 4.1): the pre-trained backbone, a new FC layer, cross-entropy on labels.

The same contract as the self-supervised methods (a ``forward`` returning ``loss`` and what
to log, ``views_for``), so the Ray Train loop and data pipeline fine-tune as they pretrain.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from beray.batch import Views


class Classifier(nn.Module):
    """Backbone -> spatio-temporal max-pooled v -> dropout -> FC to ``num_classes``."""

    inputs = ("x_o", "label")

    @classmethod
    def views_for(cls, **_) -> Views:
        """One augmented clip per video and its label; no distracting view (no BE while fine-tuning)."""
        return Views(distract=False)

    def __init__(self, backbone: nn.Module, num_classes: int, dropout: float = 0.5):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(backbone.out_channels, num_classes)  # the new layer, randomly initialised

    def logits(self, x: Tensor) -> Tensor:
        return self.fc(self.dropout(self.backbone(x)[1]))

    def forward(self, x_o: Tensor, label: Tensor) -> dict[str, Tensor]:
        logits = self.logits(x_o)
        return {"loss": F.cross_entropy(logits, label),
                "acc": (logits.detach().argmax(1) == label).float().mean()}
