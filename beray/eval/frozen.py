"""The frozen-backbone modes: ``knn``, ``linear``, ``retrieve`` (Sec. 4.3) and ``background``.

Each takes an ``EvalContext`` and returns a ``Report``. The scoring functions below them work on
feature tensors alone, so they are checked on hand-made features with known answers.
"""

from __future__ import annotations

import time

from torch import Tensor

from beray.data.datasets import DatasetError
from beray.eval.context import EvalContext
from beray.eval.fields import BACKGROUND, BACKGROUND_HEADS, BACKGROUND_SUBSETS, RECALL_AT
from beray.eval.metrics import retrieval_recall, topk_accuracy
from beray.eval.probe import head_scores
from beray.eval.report import Report

def _common(ctx: EvalContext, start: float, *skipped_of) -> dict:
    skipped = {}
    for f in skipped_of:
        skipped.update(f.skipped)
    return {"dataset": ctx.cfg.data.dataset, "split": ctx.cfg.data.split, "checkpoint": str(ctx.source.path),
            "model": ctx.source.describe(), "num_classes": ctx.num_classes,
            "clip": {"num_frames": ctx.cfg.data.num_frames, "stride": ctx.cfg.data.stride, "size": ctx.cfg.augment.size},
            "skipped_videos": skipped, "elapsed_s": round(time.perf_counter() - start, 2)}


def wanted_features(mode: str, ctx: EvalContext) -> tuple[list[tuple[str, str, int]], str]:
    """The (subset, sampling, clips) features and the head that frozen ``mode`` reads."""
    if mode == "background":
        need = set(BACKGROUND_SUBSETS)
        if not need <= set(ctx.index.subsets):
            raise DatasetError(f"background needs the subsets {', '.join(sorted(need))} (BackgroundBias-Synth has "
                               f"them: leave out --dataset); {ctx.index.name} has {', '.join(ctx.index.subsets)}")
        wanted = [("train", "centre", 1), ("test_biased", "centre", 1), ("test_swapped", "centre", 1),
                  ("test_biased", "static", 1), ("test_swapped", "static", 1)]
        if "train_unbiased" in ctx.index.subsets:  # a copy made before version 2 lacks it
            wanted.append(("train_unbiased", "centre", 1))
        return wanted, "pooled"
    sampling, head = ("cut", "map") if mode == "retrieve" else ("centre", "pooled")
    return [(s, sampling, 1) for s in ["train", *ctx.test_subsets()]], head


def frozen_head(ctx: EvalContext, head: str, k: int = 20) -> Report:
    """``knn`` or ``linear``: fitted on the train subset's features, top-1 / top-5 on each test subset."""
    t0 = time.perf_counter()
    subsets = ctx.test_subsets()
    train, *tests = ctx.features_of(*wanted_features(head, ctx))
    score = head_scores(head, train.x, train.labels, ctx.num_classes, k)
    results, rows = {}, []
    for subset, test in zip(subsets, tests):
        acc = topk_accuracy(score(test.x), test.labels)
        results[subset] = {"top1": acc[1], "top5": acc[5], "videos": len(test.labels)}
        rows.append([subset, acc[1], acc[5], len(test.labels)])
    name = {"knn": f"kNN (k = {k}, weighted cosine)", "linear": "linear probe (L-BFGS)"}[head]
    data = {**_common(ctx, t0, train, *tests), "head": head, "gallery_videos": len(train.labels),
            "chance": 1 / ctx.num_classes, "results": results, **({"k": k} if head == "knn" else {})}
    return Report(head, f"{name} on frozen features, {ctx.cfg.data.dataset} split {ctx.cfg.data.split}",
                  ["test subset", "top-1", "top-5", "videos"], rows, data,
                  [f"features: spatio-temporal max of the last feature map, one centre clip per video; "
                   f"fitted on {len(train.labels)} train videos; chance {1 / ctx.num_classes:.3f}"])


def retrieve(ctx: EvalContext, ks: tuple[int, ...] = RECALL_AT) -> Report:
    """Sec. 4.3: train-subset clips as the gallery, each test clip a query; Recall@K."""
    t0 = time.perf_counter()
    subsets = ctx.test_subsets()
    gallery, *tests = ctx.features_of(*wanted_features("retrieve", ctx))
    results, rows = {}, []
    for subset, q in zip(subsets, tests):
        r = retrieval_recall(gallery.x, gallery.labels, q.x, q.labels, ks)
        results[subset] = {**{f"R@{k}": v for k, v in r.items()}, "queries": len(q.labels)}
        rows.append([subset, *r.values(), len(q.labels)])
    data = {**_common(ctx, t0, gallery, *tests), "gallery_clips": len(gallery.labels), "results": results}
    return Report("retrieve", f"video retrieval (Sec. 4.3), {ctx.cfg.data.dataset} split {ctx.cfg.data.split}",
                  ["query subset", *(f"R@{k}" for k in ks), "queries"], rows, data,
                  [f"clips of {ctx.cfg.data.num_frames} frames at stride {ctx.cfg.data.stride} cut from each video; "
                   f"gallery: {len(gallery.labels)} train clips; features adaptively max-pooled to C x 2 x 7 x 7; "
                   "a hit when one of the K nearest (cosine) shares the query's class"])


def background_scores(train: tuple[Tensor, Tensor], tests: dict[str, tuple[Tensor, Tensor]], num_classes: int,
                      k: int = 20, unbiased: tuple[Tensor, Tensor] | None = None) -> dict[str, dict[str, float]]:
    """head -> test name -> top-1 of the kNN and linear heads fitted on the biased ``train``, and ``gap``:
    ``test_biased`` minus ``test_swapped``, the accuracy a model owes to the background. With
    ``unbiased`` (features of a split whose background is independent of the class), also
    ``unbiased_swapped``: heads fitted there, scored on ``test_swapped``, the motion the features hold."""
    out = {}
    for head in BACKGROUND_HEADS:
        score = head_scores(head, *train, num_classes, k)
        out[head] = {name: topk_accuracy(score(x), y, (1,))[1] for name, (x, y) in tests.items()}
        out[head]["gap"] = out[head]["test_biased"] - out[head]["test_swapped"]
        if unbiased is not None:
            x, y = tests["test_swapped"]
            out[head]["unbiased_swapped"] = topk_accuracy(head_scores(head, *unbiased, num_classes, k)(x), y, (1,))[1]
    return out


def _floors(ctx: EvalContext) -> dict:
    """``floors``: what chance and a reader of the background alone score, from the manifests. A reader
    that names the class whose family the background is scores, on each split, the fraction of videos
    whose background is their class's own family. Empty for a copy whose manifests do not say."""
    from beray.data.synth import own_family_fraction

    try:
        own = own_family_fraction(ctx.index.root)
    except (OSError, KeyError, ValueError):
        return {}
    reader = {"test_biased": own["test_biased"], "test_swapped": own["test_swapped"],
              "gap": own["test_biased"] - own["test_swapped"]}
    return {"floors": {"chance": 1 / ctx.num_classes, "background_reader": reader}}


def background(ctx: EvalContext, k: int = 20) -> Report:
    """BackgroundBias-Synth, two probes on frozen features. (a) Background reliance: heads fitted on the
    biased ``train``, scored on ``test_biased`` and ``test_swapped``, their gap, and the same heads on
    static videos (one frame repeated, Sec. 4.5: high static accuracy is background reliance). (b) Motion:
    heads fitted on ``train_unbiased`` (background independent of the class), scored on ``test_swapped``."""
    t0 = time.perf_counter()
    has_unbiased = "train_unbiased" in ctx.index.subsets  # a copy made before version 2 lacks it
    train, *tests = ctx.features_of(*wanted_features("background", ctx))
    unbiased = tests.pop() if has_unbiased else None
    feats = dict(zip(["test_biased", "test_swapped", "static_biased", "static_swapped"], tests))
    scores = background_scores((train.x, train.labels), {n: (f.x, f.labels) for n, f in feats.items()},
                               ctx.num_classes, k, None if unbiased is None else (unbiased.x, unbiased.labels))
    cols = [c for c in BACKGROUND if has_unbiased or c != "unbiased_swapped"]
    rows = [[head, *(s[c] for c in cols)] for head, s in scores.items()]
    data = {**_common(ctx, t0, train, *tests, *([unbiased] if has_unbiased else [])), "k": k,
            "chance": 1 / ctx.num_classes, "results": scores, **_floors(ctx)}
    notes = ["(a) heads fitted on the biased train split; gap = test_biased - test_swapped top-1: what the model "
             "owes to the background (0 for a model that reads motion only)",
             f"static_*: the same heads on static videos (one frame repeated); chance {1 / ctx.num_classes:.3f}"]
    notes.append("(b) unbiased_swapped: heads fitted on train_unbiased (background independent of the class), "
                 "scored on test_swapped: the motion the features hold" if has_unbiased else
                 "(b) left out: this copy of BackgroundBias-Synth has no train_unbiased split (regenerate it)")
    return Report("background", f"background reliance, {ctx.cfg.data.dataset} split {ctx.cfg.data.split}",
                  ["head", *cols], rows, data, notes)
