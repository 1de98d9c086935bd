"""Evaluation metrics against known answers on small hand-made inputs."""

from __future__ import annotations

import math

import pytest
import torch

from beray.eval.metrics import clip_average, knn_scores, retrieval_recall, topk_accuracy


def test_knn_over_one_hot_features_is_always_right():
    labels = torch.arange(5).repeat(4)  # 20 gallery items, 5 classes
    gallery = torch.eye(5)[labels] + 0.01 * torch.randn(20, 5, generator=torch.Generator().manual_seed(0))
    queries, query_labels = torch.eye(5), torch.arange(5)
    scores = knn_scores(gallery, labels, queries, num_classes=5, k=4)
    assert topk_accuracy(scores, query_labels, (1,))[1] == 1.0


def test_knn_vote_is_weighted_by_similarity():
    gallery = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, 0.8]])  # one close neighbour of class 0, two far of class 1
    labels = torch.tensor([0, 1, 1])
    scores = knn_scores(gallery, labels, torch.tensor([[1.0, 0.0]]), num_classes=2, k=3, t=0.1)
    assert scores[0].tolist() == pytest.approx([math.exp(10), 2 * math.exp(6)], rel=1e-5)
    assert scores.argmax().item() == 0  # exp(10) > 2 exp(6): the close one wins


def test_topk_accuracy_by_hand():
    scores = torch.tensor([[0.1, 0.5, 0.4], [0.7, 0.2, 0.1], [0.2, 0.3, 0.5]])
    acc = topk_accuracy(scores, torch.tensor([2, 0, 0]), (1, 2))
    assert acc[1] == pytest.approx(1 / 3) and acc[2] == pytest.approx(2 / 3)


def test_retrieval_with_the_gallery_as_queries_recalls_everything_at_1():
    feats = torch.randn(12, 8, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(12) % 3
    rec = retrieval_recall(feats, labels, feats, labels, ks=(1, 5))
    assert rec == {1: 1.0, 5: 1.0}


def test_retrieval_counts_a_query_right_when_any_of_its_top_k_shares_its_class():
    gallery = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = torch.tensor([1, 1, 0])
    rec = retrieval_recall(gallery, labels, torch.tensor([[1.0, 0.05]]), torch.tensor([0]), ks=(1, 2, 3))
    assert rec == {1: 0.0, 2: 0.0, 3: 1.0}  # its class-0 clip is the third nearest


def test_clip_average_is_the_mean_of_softmax():
    logits = torch.tensor([[[0.0, 0.0], [math.log(3), 0.0]]])  # clips give (0.5, 0.5) and (0.75, 0.25)
    assert clip_average(logits)[0].tolist() == pytest.approx([0.625, 0.375])
