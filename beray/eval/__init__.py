"""Evaluation of checkpoints, ``python -m beray.eval MODE`` (Sec. 4.1-4.7).

- ``metrics``: kNN vote, top-k, Recall@K, 10-clip averaging, Pearson (plain PyTorch)
- ``probe``: the kNN and linear heads on frozen features
- ``clips``: deterministic test clips (centre, uniform, cut, static)
- ``source``: a checkpoint, its config and its models, read with ``weights_only``
- ``extract``: Ray Data batch inference (decode tasks -> model actors), cached
- ``fields``: the result fields each mode reports (a sweep's objective is checked against them)
- ``context``: one evaluation's checkpoint, config, dataset and features
- ``frozen`` (knn, linear, retrieve, background), ``finetune``, ``static_bias``, ``cam``: the modes
- ``report``: markdown and JSON out
"""
