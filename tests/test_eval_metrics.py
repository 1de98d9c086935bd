"""Evaluation metrics against known answers on small hand-made inputs."""

from __future__ import annotations

import math

import pytest
import torch

from beray.eval.frozen import background_scores
from beray.eval.metrics import (clip_average, knn_scores, pearson, per_class_accuracy, retrieval_recall,
                                topk_accuracy)
from beray.eval.probe import LinearProbe
from beray.eval.static_bias import relative_improvement


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


def test_pearson_matches_the_closed_forms_of_its_null_distribution():
    # n = 4: (rho + 1) / 2 ~ Beta(1, 1), uniform, so p = 1 - |rho|
    x, y = torch.tensor([1.0, 2, 3, 4], dtype=torch.float64), torch.tensor([1.0, 3, 2, 5], dtype=torch.float64)
    rho, p = pearson(x, y)
    dx, dy = x - x.mean(), y - y.mean()
    assert rho == pytest.approx(float((dx @ dy) / (dx.norm() * dy.norm())), abs=1e-12)
    assert p == pytest.approx(1 - abs(rho), abs=1e-12)
    # n = 6: Beta(2, 2), whose CDF is 3u^2 - 2u^3
    x, y = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.6, 0.9]), torch.tensor([-3.0, 5, 1, -2, 4, -6])
    rho, p = pearson(x, y)
    u = (1 - abs(rho)) / 2
    assert p == pytest.approx(2 * (3 * u ** 2 - 2 * u ** 3), abs=1e-12)
    assert rho < 0 and pearson(x, -y)[0] == pytest.approx(-rho)
    assert math.isnan(pearson(x, torch.zeros(6))[0])  # a constant sample has no correlation
    assert pearson(torch.arange(8.0), 2 * torch.arange(8.0) + 1) == pytest.approx((1.0, 0.0), abs=1e-12)


def test_per_class_accuracy_and_relative_improvement_by_hand():
    scores = torch.eye(3)[torch.tensor([0, 1, 1, 2, 0])]  # predictions 0 1 1 2 0
    acc = per_class_accuracy(scores, torch.tensor([0, 0, 1, 2, 2]), 4)
    assert acc[:3].tolist() == [0.5, 1.0, 0.5] and math.isnan(acc[3])
    rel = relative_improvement(torch.tensor([0.6, 0.5, 0.2]), torch.tensor([0.4, 0.5, 0.0]))
    assert rel[:2].tolist() == pytest.approx([50.0, 0.0]) and math.isnan(rel[2])


def test_linear_probe_separates_separable_features():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(4).repeat(10)
    x = torch.randn(40, 16, generator=g) + 3 * torch.eye(4, 16)[y]
    probe = LinearProbe(x, y, 4)
    assert topk_accuracy(probe(x), y, (1,))[1] == 1.0
    assert torch.equal(LinearProbe(x, y, 4)(x), probe(x))  # deterministic


def _features(labels: torch.Tensor, backgrounds: torch.Tensor, w_background: float, w_motion: float) -> torch.Tensor:
    """Coordinates 0-2 one-hot the background family, 3-5 the motion class, each scaled by how much a model reads it."""
    return torch.cat([w_background * torch.eye(3)[backgrounds], w_motion * torch.eye(3)[labels]], dim=1)


def test_background_scores_know_a_background_model_from_a_motion_model():
    y_train = torch.arange(3).repeat(8)
    y_test = torch.arange(3).repeat(4)
    swapped = (y_test + 1) % 3  # test_swapped: every background is another class's
    for reads, biased, gap in (("background", 1.0, 1.0), ("motion", 1.0, 0.0)):
        w = (1.0, 0.0) if reads == "background" else (0.0, 1.0)
        tests = {"test_biased": (_features(y_test, y_test, *w), y_test),
                 "test_swapped": (_features(y_test, swapped, *w), y_test)}
        # train_unbiased: every (class, background) pair three times, so the background says nothing of the class
        y_unb, bg_unb = torch.arange(3).repeat(9), (torch.arange(27) // 3) % 3
        scores = background_scores((_features(y_train, y_train, *w), y_train), tests, 3, k=5,
                                   unbiased=(_features(y_unb, bg_unb, *w), y_unb))
        for head in ("knn", "linear"):
            assert scores[head]["test_biased"] == biased, (reads, head)
            assert scores[head]["gap"] == pytest.approx(gap), (reads, head)
            assert scores[head]["test_swapped"] == pytest.approx(biased - gap)
            if reads == "motion":  # probe (b): a motion model keeps its accuracy when the background cannot help
                assert scores[head]["unbiased_swapped"] == 1.0, head
            else:  # a background model learns nothing from the unbiased split
                assert scores[head]["unbiased_swapped"] <= 0.5, head
