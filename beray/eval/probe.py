"""Heads on frozen features: the weighted kNN vote and a linear classifier (multinomial logistic
regression fitted by L-BFGS on the cached features, never on re-decoded clips)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from beray.eval.metrics import knn_scores


class LinearProbe:
    """Standardised features -> one linear layer, fitted to convergence by full-batch L-BFGS with an
    L2 penalty ``weight_decay``; zero-initialised, so the fit is deterministic."""

    def __init__(self, x: Tensor, y: Tensor, num_classes: int, weight_decay: float = 1e-3, max_iter: int = 500):
        x = x.float()
        self.mean, self.std = x.mean(0), x.std(0).clamp_min(1e-6)
        z = (x - self.mean) / self.std
        self.w = torch.zeros(x.shape[1], num_classes, requires_grad=True)
        self.b = torch.zeros(num_classes, requires_grad=True)
        opt = torch.optim.LBFGS([self.w, self.b], lr=1.0, max_iter=max_iter, history_size=20,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-6, tolerance_change=1e-9)

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(z @ self.w + self.b, y) + weight_decay * self.w.square().sum()
            loss.backward()
            return loss

        opt.step(closure)

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        return ((x.float() - self.mean) / self.std) @ self.w + self.b


def head_scores(head: str, train_x: Tensor, train_y: Tensor, num_classes: int, k: int = 20):
    """A function from query features to (Q, classes) scores: ``knn`` or ``linear``, fitted on the train features."""
    if head == "knn":
        return lambda q: knn_scores(train_x, train_y, q, num_classes, k=k)
    if head == "linear":
        return LinearProbe(train_x, train_y, num_classes)
    raise ValueError(f"unknown head {head!r}; allowed: knn, linear")
