"""Ray Data pipeline: records -> decode and views (x_o, x_v, ...) in Ray tasks -> Train workers, which
make x_d = noise(x_v) on their device (``beray.augment.be.add_noise``).

Nothing is materialised: the records (paths and labels, a table of NumPy
columns put in the object store once) are the only thing held whole; decoded
clips stream through Ray Data's executor, whose backpressure bounds memory.

The dataset's rows are task numbers, and one iteration of it (a pass) spans several
epochs, so that the next epoch's first clips are decoded while this epoch's last
steps train (a pass per epoch would leave the model waiting for a new execution's
first batch every epoch). Task t of a pass that starts at epoch s decodes, for
epoch e = s + t // T (T tasks per epoch), the records at positions
[k * C, (k + 1) * C), k = t % T, of epoch e's permutation of all records
(C = ``data.clips_per_task``, by default one worker's share of the batch), so the
videos that share a batch (and the partners of the pairing noises: mixup, cutmix,
inter_frame, fame) change every epoch. Each clip carries its epoch: the Train
workers cut batches within one epoch (``beray.train.epochs``). Every draw is seeded
from (run seed, epoch, video), and clips come out in order: the same seed gives the
same stream, and a resumed run continues it where the uninterrupted run would be.

A pass's first epoch comes from the run's ``RunData`` actor (its handle travels with the
dataset and the workers' config, which keeps it alive), which the Train workers set
before they start iterating a pass (Ray Data starts an execution only once every
worker has asked for it). The same actor collects unreadable videos:
a decode task drops one from its batch, counts it on the ``beray_skipped_videos``
Ray metric and records its path, reason and epoch; the training loop drains them every epoch.
"""

from __future__ import annotations

import functools
import time
import uuid
from typing import Callable

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from beray.batch import Views
from beray.config import Config
from beray.data.datasets import DatasetError, index_dataset
from beray.data.reach import DataNotVisible, blind_here, data_root
from beray.data.video import VideoReadError
from beray.data.views import ViewMaker, ViewSpec, record_row, video_rng

# torch is imported by the functions that use it (in the decode tasks): see beray.augment.spatial.


@ray.remote(num_cpus=0)
class RunData:
    """A run's data state: the first epoch of the pass being drawn, the unreadable videos (path -> reason, by
    epoch), the CPU-seconds its decode tasks spent, and the lines rank 0 has for the driver's terminal (beray's
    console: Ray's own output goes to a log)."""

    def __init__(self):
        self.epoch = 0
        self.new: dict[int, dict[str, str]] = {}
        self.total: dict[str, str] = {}
        self.lines: list[str] = []
        self.decode = [0.0, 0]  # CPU-seconds, clips

    def add_decode(self, seconds: float, clips: int) -> None:
        self.decode[0] += seconds
        self.decode[1] += clips

    def decoded(self) -> tuple[float, int]:
        return tuple(self.decode)

    def say(self, line: str) -> None:
        self.lines.append(line)

    def lines_from(self, n: int) -> list[str]:
        return self.lines[n:]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def get_epoch(self) -> int:
        return self.epoch

    def add(self, path: str, reason: str, epoch: int = 0) -> None:
        self.new.setdefault(epoch, {})[path] = reason
        self.total[path] = reason

    def drain(self, epoch: int | None = None) -> dict[str, str]:
        """The videos skipped in epochs up to ``epoch`` (None: all) since the last drain. Decode tasks run
        ahead into the next epoch: its skips wait for its own drain."""
        out = {}
        for e in sorted(self.new):
            if epoch is None or e <= epoch:
                out.update(self.new.pop(e))
        return out

    def all(self) -> dict[str, str]:
        return dict(self.total)


def run_data(run_name: str):
    """A new ``RunData`` actor for this attempt of ``run_name``. The driver must hold its handle (Ray ends
    an actor when no handle is left). It lives on the driver's node: a lost worker node then takes the
    workers, not the run's state. Never reused by name: after a lost node, a retried trial would find its
    last attempt's actor, whose owner is gone, before Ray has noticed that it is dead."""
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return RunData.options(name=f"beray-data-{run_name}-{uuid.uuid4().hex[:8]}", namespace="beray",
                           scheduling_strategy=here).remote()


def view_spec(cfg: Config, views: Views) -> ViewSpec:
    d = cfg.data
    return ViewSpec(views, d.num_frames, d.stride, d.decode_size, cfg.augment, d.decode_timeout_s)


@functools.lru_cache(maxsize=4)
def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which epoch ``epoch`` visits ``n`` records: a permutation drawn from (seed, epoch)."""
    return np.random.default_rng([seed, epoch, 2, n]).permutation(n)


def record_table(rows: list[dict]) -> dict[str, np.ndarray]:
    """Rows as NumPy columns (zero-copy from the object store in every decode task)."""
    return {k: np.array([r[k] for r in rows]) for k in rows[0]}


def make_clips(table: dict[str, np.ndarray], indices: np.ndarray, spec: ViewSpec, seed: int, epoch: int,
               on_skip: Callable[[str, str], None], root: str | None = None) -> dict[str, np.ndarray]:
    """The views of records ``indices`` in ``epoch``, stacked, with each record's ``index``.

    A video that cannot be read is left out and passed to ``on_skip(path, reason)``; a missing one where
    this node cannot see the data ``root`` at all raises DataNotVisible (the run stops, naming the node).
    """
    maker = ViewMaker(spec)
    views = []
    for i in indices.tolist():
        record = {k: col[i].item() for k, col in table.items()}
        try:
            views.append({**maker(record, video_rng(seed, epoch, i)), "index": i})
        except VideoReadError as e:
            if root is not None and e.reason == "file not found" and (blind := blind_here(root)):
                raise DataNotVisible(blind) from None
            on_skip(e.path, e.reason)
    if not views:
        return {}
    return {k: np.stack([v[k] for v in views]) for k in views[0]}


def decode_batch(batch: dict[str, np.ndarray], records, spec: ViewSpec, state, run_name: str, seed: int,
                 clips_per_task: int, tasks_per_epoch: int | None = None, epochs: int | None = None,
                 root: str | None = None) -> dict[str, np.ndarray]:
    """Ray Data ``map_batches`` on one task number t of a pass: the clips of its epoch's task, decoded, each
    with its ``epoch``.

    ``records`` is ``record_table``'s columns (or an ObjectRef of them), ``state`` the run's ``RunData`` handle
    (None: the pass starts at epoch 0, skips only counted), ``tasks_per_epoch`` T (None: every record in one
    epoch's tasks), ``epochs`` the run's length (tasks of a pass past it decode nothing). An unreadable video is
    dropped, counted on the ``beray_skipped_videos`` metric (tagged ``run_name``) and named to ``state``.
    """
    import torch  # noqa: F401  a fresh worker's first import (seconds of CPU) is its start-up, not decoding
    import torchvision.transforms.v2  # noqa: F401

    cpu = time.thread_time()
    table = ray.get(records) if isinstance(records, ray.ObjectRef) else records
    n, c = len(table["label"]), clips_per_task
    per_epoch = tasks_per_epoch or -(-n // c)
    first = ray.get(state.get_epoch.remote()) if state is not None else 0
    t = int(batch["id"][0])
    epoch, k = first + t // per_epoch, t % per_epoch
    if epochs is not None and epoch >= epochs:
        return {}
    order = epoch_order(n, seed, epoch)
    out = make_clips(table, order[k * c:(k + 1) * c], spec, seed, epoch,
                     functools.partial(_skip, run_name, state, epoch), root)
    if out:
        out["epoch"] = np.full(len(out["index"]), epoch, dtype=np.int64)
    if state is not None:
        state.add_decode.remote(time.thread_time() - cpu, len(out.get("index", ())))
    return out


def _skip(run_name: str, state, epoch: int, path: str, reason: str) -> None:
    from ray.util.metrics import Counter

    Counter("beray_skipped_videos", "Unreadable videos skipped by the data pipeline",
            tag_keys=("run",)).inc(1, tags={"run": run_name})
    if state is not None:
        state.add.remote(path, reason, epoch)


def training_records(cfg: Config) -> list[dict]:
    """The records of ``cfg.data``'s subset as rows; raises DatasetError naming what is wrong."""
    index = index_dataset(cfg.data.dataset, cfg.data.root, cfg.data.split, cfg.data.synth)
    if cfg.data.subset not in index.subsets:
        raise DatasetError(f"data.subset {cfg.data.subset!r} is not in {index.name}; "
                           f"allowed: {', '.join(index.subsets)}")
    rows = [record_row(r) for r in index.subsets[cfg.data.subset]]
    if len(rows) < cfg.optim.batch_size:
        raise DatasetError(f"{index.name}/{cfg.data.subset} has {len(rows)} videos, fewer than one batch "
                           f"(optim.batch_size {cfg.optim.batch_size})")
    return rows


# Rows (tasks) in one pass at most: each is a small object that Ray Data holds from the start of the pass.
MAX_TASKS_PER_PASS = 2048


def tasks_per_epoch(cfg: Config, n_records: int) -> int:
    """Decode tasks per epoch: every record once, or, under ``run.max_steps_per_epoch``, enough for those steps
    and one task to spare per worker. Per worker: Ray Data hands each block to the worker that has had the
    fewest rows so far in the pass, so in some epochs a worker gets only the blocks its steps need, and one
    skipped video there would cut every rank's epoch short."""
    c = task_clips(cfg)
    n_tasks = -(-n_records // c)
    if cfg.run.max_steps_per_epoch is None:
        return n_tasks
    return min(n_tasks, -(-cfg.run.max_steps_per_epoch * cfg.optim.batch_size // c) + cfg.run.workers)


def task_clips(cfg: Config) -> int:
    """C: clips per decode task (``data.clips_per_task``, by default one worker's share of the batch)."""
    return cfg.data.clips_per_task or max(1, cfg.optim.batch_size // cfg.run.workers)


def epochs_per_pass(cfg: Config, n_records: int) -> int:
    """How many epochs one iteration of the dataset spans: the whole run where its tasks fit in
    ``MAX_TASKS_PER_PASS``, else as few passes as fit them, of equal length (at least one epoch): the tasks of a
    last pass that runs past the run's end decode nothing, but each is still a task."""
    most = max(1, min(cfg.optim.epochs, MAX_TASKS_PER_PASS // tasks_per_epoch(cfg, n_records)))
    return -(-cfg.optim.epochs // -(-cfg.optim.epochs // most))


def build_dataset(cfg: Config, run_name: str, state, views: Views, rows: list[dict] | None = None,
                  per_pass: int | None = None) -> ray.data.Dataset:
    """The training stream for ``cfg``: rows with uint8 x_o, x_v (x_h and h_valid when ``views`` ask
    for them), label, the record's index and the epoch, in blocks of ``data.clips_per_task`` rows.
    One iteration spans ``per_pass`` epochs (default ``epochs_per_pass``) from the epoch set on ``state``,
    the run's ``RunData`` handle, which also collects unreadable videos."""
    rows = list(rows if rows is not None else training_records(cfg))
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the training loop prints its own progress
    ctx.print_on_execution_start = False
    per_epoch = tasks_per_epoch(cfg, len(rows))
    n_tasks = per_epoch * (per_pass or epochs_per_pass(cfg, len(rows)))
    # One row (and one task) per C records. Order is preserved so a seed fixes the stream; the
    # permutation inside the tasks does the shuffling.
    # from_items, not range: range's read tasks ask 1 CPU each, which concurrent trials may never have
    ds = ray.data.from_items([{"id": t} for t in range(n_tasks)], override_num_blocks=n_tasks)
    ds.context.execution_options.preserve_order = True
    return ds.map_batches(decode_batch, batch_size=1, batch_format="numpy", num_cpus=cfg.data.decode_cpus,
                          concurrency=cfg.data.decode_concurrency,
                          fn_kwargs={"records": ray.put(record_table(rows)), "spec": view_spec(cfg, views),
                                     "state": state, "run_name": run_name, "seed": cfg.run.seed,
                                     "clips_per_task": task_clips(cfg), "tasks_per_epoch": per_epoch,
                                     "epochs": cfg.optim.epochs, "root": data_root([r["path"] for r in rows])})
