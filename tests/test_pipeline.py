"""The Ray Data stream: new batches every epoch, the same stream for the same seed and epoch."""

from __future__ import annotations

import numpy as np
import ray
from conftest import tiny_overrides

from beray.config import load_config
from beray.data.pipeline import build_dataset, run_data
from beray.methods.build import method_views


def _epoch(ds, state, epoch: int, per_batch: int) -> list[dict]:
    ray.get(state.set_epoch.remote(epoch))
    return [{k: v.cpu().numpy() for k, v in b.items()}
            for b in ds.iter_torch_batches(batch_size=per_batch, drop_last=False)]


def test_batches_mix_anew_every_epoch_and_replay_for_the_same_seed(ray_cluster, tiny_synth, tmp_path):
    overrides = tiny_overrides(tiny_synth, tmp_path, "mix") + ["run.workers=1", "be.noise=mixup"]
    cfg = load_config(None, overrides, preset="cpu-tiny")
    state = run_data("mix")
    try:
        ds = build_dataset(cfg, "mix", state, method_views(cfg))
        e0, e0_again, e1 = _epoch(ds, state, 0, 4), _epoch(ds, state, 0, 4), _epoch(ds, state, 1, 4)
    finally:
        ray.kill(state)
    n = 12  # tiny_synth's training videos
    for epoch in (e0, e1):  # every video once per epoch
        assert sorted(np.concatenate([b["index"] for b in epoch]).tolist()) == list(range(n))
    groups = [{frozenset(b["index"].tolist()) for b in epoch} for epoch in (e0, e1)]
    assert groups[0] != groups[1]  # other videos share a batch (and are mixed with each other)
    for a, b in zip(e0, e0_again):  # same seed and epoch: the same batches, pixel for pixel
        assert set(a) == {"x_o", "x_v", "x_h", "h_valid", "label", "index"}  # x_d is made on the worker
        for k in a:
            assert np.array_equal(a[k], b[k]), k
    assert not np.array_equal(e0[0]["x_v"], e1[0]["x_v"])
