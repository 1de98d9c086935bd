"""Evaluation metrics on features and logits: plain PyTorch, no Ray, no decoding.

- ``knn_scores``: weighted cosine k-nearest-neighbour vote (Wu et al. 2018's
  instance-discrimination protocol): the k most similar gallery features vote for
  their class with weight exp(similarity / t).
- ``topk_accuracy``: top-1 / top-5 from class scores.
- ``retrieval_recall``: Section 4.3, Recall@K as the paper counts it: a query is
  correct when one of its K nearest gallery clips shares its class.
- ``clip_average``: Section 4.1's test protocol, a video's prediction is the mean
  of its clips' softmax predictions.
- ``pearson``: Section 4.5's correlation, rho and its exact p-value.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor


def knn_scores(gallery: Tensor, gallery_labels: Tensor, queries: Tensor, num_classes: int, k: int = 20,
               t: float = 0.07, chunk: int = 1024) -> Tensor:
    """(Q, num_classes) vote of each query's ``k`` nearest gallery features (cosine similarity)."""
    g = F.normalize(gallery.float(), dim=1)
    k = min(k, g.shape[0])
    out = []
    for q in F.normalize(queries.float(), dim=1).split(chunk):
        sim, idx = (q @ g.T).topk(k, dim=1)
        votes = torch.zeros(q.shape[0], num_classes, device=q.device)
        out.append(votes.scatter_add_(1, gallery_labels[idx], (sim / t).exp()))
    return torch.cat(out)


def topk_accuracy(scores: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """k -> fraction of rows whose label is among their ``k`` highest scores (k capped at the classes)."""
    ranked = scores.argsort(dim=1, descending=True)
    hit = ranked == labels.view(-1, 1)
    return {k: hit[:, :k].any(dim=1).float().mean().item() for k in ks}


def retrieval_recall(gallery: Tensor, gallery_labels: Tensor, queries: Tensor, query_labels: Tensor,
                     ks: tuple[int, ...] = (1, 5, 10, 20, 50)) -> dict[int, float]:
    """Section 4.3: K -> fraction of queries with a same-class clip among their K nearest (cosine)."""
    sim = F.normalize(queries.float(), dim=1) @ F.normalize(gallery.float(), dim=1).T
    nearest = sim.topk(min(max(ks), gallery.shape[0]), dim=1).indices
    hit = gallery_labels[nearest] == query_labels.view(-1, 1)
    return {k: hit[:, :k].any(dim=1).float().mean().item() for k in ks}


def clip_average(logits: Tensor) -> Tensor:
    """(videos, clips, classes) logits -> (videos, classes): the mean of the clips' softmax."""
    return logits.float().softmax(dim=-1).mean(dim=1)


def pearson(x: Tensor, y: Tensor) -> tuple[float, float]:
    """Pearson's rho of two samples and its two-sided p-value under the null of no correlation: under
    it, (rho + 1) / 2 follows Beta(n/2 - 1, n/2 - 1) (the exact test ``scipy.stats.pearsonr`` runs).
    Both are NaN when a sample is constant."""
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    n = x.numel()
    if n < 3:
        raise ValueError(f"Pearson's rho needs at least 3 points, got {n}")
    if x.norm() == 0 or y.norm() == 0:  # a constant sample: rho is undefined
        return float("nan"), float("nan")
    rho = max(-1.0, min(1.0, float((x @ y) / (x.norm() * y.norm()))))
    from scipy.special import betainc

    a = n / 2 - 1
    return rho, min(1.0, 2 * float(betainc(a, a, (1 - abs(rho)) / 2)))


def per_class_accuracy(scores: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """(num_classes,) top-1 accuracy of each class's samples; NaN for a class with none."""
    hit = (scores.argmax(dim=1) == labels).float()
    n = torch.zeros(num_classes).scatter_add_(0, labels, torch.ones_like(hit))
    return torch.zeros(num_classes).scatter_add_(0, labels, hit) / n
