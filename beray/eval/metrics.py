"""Evaluation metrics on features and logits: plain PyTorch, no Ray, no decoding.

- ``knn_scores``: weighted cosine k-nearest-neighbour vote (Wu et al. 2018's
  instance-discrimination protocol): the k most similar gallery features vote for
  their class with weight exp(similarity / t).
- ``topk_accuracy``: top-1 / top-5 from class scores.
- ``retrieval_recall``: Section 4.3, Recall@K as the paper counts it: a query is
  correct when one of its K nearest gallery clips shares its class.
- ``clip_average``: Section 4.1's test protocol, a video's prediction is the mean
  of its clips' softmax predictions.
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
