"""The fields each evaluation mode reports, dotted as a sweep's ``objective`` names them, so that a
sweep asking for a field its evaluation will not report is refused before any trial trains.

``knn``, ``linear`` and ``finetune`` report ``SUBSET.top1``, ``.top5`` and ``.videos`` for each test
subset; ``retrieve`` ``SUBSET.R@K`` and ``.queries``; ``background`` ``HEAD.NAME`` for the kNN and
linear heads fitted on BackgroundBias-Synth's biased train split.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

TOPK = ("top1", "top5", "videos")
RECALL_AT = (1, 5, 10, 20, 50)
RETRIEVAL = (*(f"R@{k}" for k in RECALL_AT), "queries")
BACKGROUND_HEADS = ("knn", "linear")
BACKGROUND = ("test_biased", "test_swapped", "gap", "static_biased", "static_swapped", "unbiased_swapped")
BACKGROUND_SUBSETS = ("train", "test_biased", "test_swapped")
ANY_SUBSET = "*"  # where the subsets are known only once the data is indexed


def test_subsets(subsets) -> list[str]:
    """``test``, or where a dataset has several test subsets (BackgroundBias-Synth), each of them."""
    return ["test"] if "test" in subsets else [s for s in subsets if s.startswith("test")]


def result_fields(mode: str, subsets: list[str] | None) -> list[str]:
    """The dotted fields ``mode`` reports on a dataset with ``subsets`` (None: not known before indexing,
    a field then names any subset). Modes that report no scores for a sweep (``cam``) give none."""
    if mode == "background":
        return [f"{head}.{name}" for head in BACKGROUND_HEADS for name in BACKGROUND]
    leaves = {"knn": TOPK, "linear": TOPK, "finetune": TOPK, "retrieve": RETRIEVAL}.get(mode, ())
    tests = [ANY_SUBSET] if subsets is None else test_subsets(subsets)
    return [f"{subset}.{leaf}" for subset in tests for leaf in leaves]


def unknown_field(metric: str, fields: list[str]) -> bool:
    return not any(fnmatchcase(metric, f) for f in fields)
