"""The Ray Data stream: new batches every epoch, the same stream for the same seed and epoch."""

from __future__ import annotations

import numpy as np
import ray
from conftest import tiny_overrides

from beray.config import load_config
from beray.data.pipeline import build_dataset, run_data
from beray.methods.build import method_views
from beray.train.epochs import EpochStream


def _pass(ds, state, epoch: int, per_batch: int) -> list[dict]:
    """One iteration of ``ds`` from ``epoch``, as the Train workers cut it: batches within one epoch."""
    ray.get(state.set_epoch.remote(epoch))
    stream = EpochStream(ds.iter_torch_batches(batch_size=None), per_batch)
    return [[{k: v.cpu().numpy() for k, v in b.items()} for b in stream.epoch(e)] for e in range(epoch, 2)]


def test_batches_mix_anew_every_epoch_and_replay_for_the_same_seed(ray_cluster, tiny_synth, tmp_path):
    overrides = tiny_overrides(tiny_synth, tmp_path, "mix") + ["run.workers=1", "be.noise=mixup"]
    cfg = load_config(None, overrides, preset="cpu-tiny")
    state = run_data("mix")
    try:
        ds = build_dataset(cfg, "mix", state, method_views(cfg))  # one pass spans both epochs
        e0, e1 = _pass(ds, state, 0, 4)
        e0_alone = _pass(build_dataset(cfg, "mix", state, method_views(cfg), per_pass=1), state, 0, 4)[0]
        e1_resumed, = _pass(ds, state, 1, 4)  # a run resumed at epoch 2 draws what the whole run drew there
    finally:
        ray.kill(state)
    n = 12  # tiny_synth's training videos
    for epoch in (e0, e1):  # every video once per epoch
        assert sorted(np.concatenate([b["index"] for b in epoch]).tolist()) == list(range(n))
    groups = [{frozenset(b["index"].tolist()) for b in epoch} for epoch in (e0, e1)]
    assert groups[0] != groups[1]  # other videos share a batch (and are mixed with each other)
    # same seed and epoch: the same batches, pixel for pixel, whichever epoch the pass started at
    for a, b in [*zip(e0, e0_alone, strict=True), *zip(e1, e1_resumed, strict=True)]:
        assert set(a) == {"x_o", "x_v", "x_h", "h_valid", "label", "index"}  # x_d is made on the worker
        for k in a:
            assert np.array_equal(a[k], b[k]), k
    assert not np.array_equal(e0[0]["x_v"], e1[0]["x_v"])


def test_a_decode_task_where_the_data_root_is_empty_stops_the_run_but_a_missing_video_is_skipped(
        ray_cluster, tiny_synth, tmp_path):
    import pytest

    from beray.data.pipeline import make_clips, record_table, training_records, view_spec
    from beray.data.reach import DataNotVisible, data_root

    cfg = load_config(None, tiny_overrides(tiny_synth, tmp_path, "reach") + ["run.workers=1"], preset="cpu-tiny")
    rows = training_records(cfg)
    spec, skipped = view_spec(cfg, method_views(cfg)), []
    gone = [{**r, "path": r["path"] + ".gone"} for r in rows[:2]] + rows[2:4]  # two lost videos, two good
    out = make_clips(record_table(gone), np.arange(4), spec, 0, 0, lambda p, why: skipped.append((p, why)),
                     data_root([r["path"] for r in rows]))
    assert out["index"].tolist() == [2, 3] and [why for _, why in skipped] == ["file not found"] * 2
    empty = tmp_path / "mnt"  # the root as a node without the shared file system sees it: an empty folder
    empty.mkdir()
    moved = [{**r, "path": str(empty / r["path"][len(str(tiny_synth)) + 1:])} for r in rows[:4]]
    with pytest.raises(DataNotVisible, match=rf"node \S+ \(id \w+\) cannot see the training data: {empty} "):
        make_clips(record_table(moved), np.arange(4), spec, 0, 0, lambda p, why: skipped.append((p, why)), str(empty))
    assert len(skipped) == 2  # nothing skipped: the run stops at its first batch


def test_epoch_stream_cuts_batches_within_one_epoch():
    import torch

    def block(epoch, *index):
        return {"index": torch.tensor(index), "epoch": torch.full((len(index),), epoch)}

    blocks = [block(0, 0, 1, 2), block(0, 3, 4), {}, block(0, 5), block(1, 6, 7, 8), block(1, 9), block(2, 10, 11),
              block(3, 12, 13)]
    stream = EpochStream(iter(blocks), 2)
    batches = lambda e: [b["index"].tolist() for b in stream.epoch(e)]  # noqa: E731
    assert batches(0) == [[0, 1], [2, 3], [4, 5]]  # across blocks; an empty block (all skipped) passes
    first = stream.epoch(1)
    assert next(first)["index"].tolist() == [6, 7]  # epoch 1 cut short after one batch (another rank ran out)
    assert batches(2) == [[10, 11]]  # epoch 1's rest is skipped, its last odd clip too
    assert batches(3) == [[12, 13]] and batches(4) == []
    assert set(next(EpochStream(iter(blocks), 2).epoch(0))) == {"index"}  # the epoch column is the stream's own


def test_a_capped_epoch_decodes_its_steps_and_one_task_to_spare_per_worker(tmp_path):
    from beray.data.pipeline import task_clips, tasks_per_epoch

    cfg = lambda *sets: load_config(None, [*tiny_overrides(tmp_path, tmp_path, "t"), *sets])  # noqa: E731
    two = cfg("run.max_steps_per_epoch=3")  # 2 workers, batch 4: tasks of 2 clips, 6 for 3 steps
    assert task_clips(two) == 2 and tasks_per_epoch(two, 100) == 6 + 2
    one = cfg("run.max_steps_per_epoch=3", "run.workers=1")  # tasks of 4 clips, 3 for 3 steps
    assert task_clips(one) == 4 and tasks_per_epoch(one, 100) == 3 + 1
    assert tasks_per_epoch(two, 13) == 7  # never more than every record once
    assert tasks_per_epoch(cfg(), 13) == 7


def test_a_run_s_passes_are_as_few_as_fit_and_of_equal_length(tmp_path):
    from beray.data.pipeline import MAX_TASKS_PER_PASS, epochs_per_pass, tasks_per_epoch

    cfg = lambda epochs: load_config(None, [*tiny_overrides(tmp_path, tmp_path, "t", epochs=epochs)])  # noqa: E731
    n = 2 * 80  # 80 tasks of 2 clips an epoch: 25 epochs fit in a pass of at most 2,048 tasks
    assert tasks_per_epoch(cfg(1), n) == 80 and MAX_TASKS_PER_PASS // 80 == 25
    assert epochs_per_pass(cfg(20), n) == 20  # the whole run
    assert epochs_per_pass(cfg(100), n) == 25  # 4 passes
    assert epochs_per_pass(cfg(101), n) == 21  # 5 passes of 21 (not 25, 25, 25, 25 and 1 in a pass of 25)
    assert epochs_per_pass(cfg(45), n * 30) == 1  # an epoch larger than a pass: one epoch each


def test_a_stream_that_delivers_nothing_for_its_limit_raises_and_its_reader_stops_on_close():
    import threading
    import time

    import pytest

    from beray.train.epochs import DataStalled, Deadline

    release = threading.Event()

    def blocks():
        yield 1
        release.wait()  # a pipeline whose tasks cannot be scheduled
        yield 2
        raise OSError("the pipeline's own error")

    stream = Deadline(blocks(), timeout_s=0.5)
    assert next(stream) == 1
    t0 = time.monotonic()
    with pytest.raises(DataStalled, match=r"no batch for 0\.5 s \(data\.stall_timeout_s\)"):
        next(stream)
    assert 0.5 <= time.monotonic() - t0 < 5
    release.set()
    assert next(stream) == 2
    with pytest.raises(OSError, match="own error"):  # raised where the batch is taken, not lost in the thread
        next(stream)
    endless = Deadline(iter(range(10**9)), timeout_s=None)
    assert next(endless) == 0
    endless.close()
    endless.thread.join(timeout=5)
    assert not endless.thread.is_alive()
