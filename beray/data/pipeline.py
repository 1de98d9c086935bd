"""Ray Data pipeline: records -> decode, views and noise (x_d) in Ray tasks -> Train workers.

Nothing is materialised: records (paths and labels) are the only thing held
whole; decoded clips stream through Ray Data's executor, whose backpressure
bounds memory. Each iteration of the dataset (one epoch) re-runs the pipeline,
so every epoch draws new clips, new crops and new noise.

A video that cannot be read is skipped: the decode task drops it, counts it on
the ``beray_skipped_videos`` Ray metric and records its path and reason with the
run's ``SkippedVideos`` actor, which the training loop drains every epoch.
"""

from __future__ import annotations

import warnings

import numpy as np
import ray
import torch
from ray.data import RandomSeedConfig

from beray.augment.be import distract
from beray.augment.spatial import AugmentConfig as AugmentParams
from beray.config import Config
from beray.data.datasets import index_dataset
from beray.data.video import VideoReadError
from beray.data.views import ViewMaker, ViewSpec, record_row


ROWS_PER_BLOCK = 8  # records per decode task


@ray.remote(num_cpus=0)
class SkippedVideos:
    """The run's ledger of unreadable videos: path -> reason, drained once per epoch."""

    def __init__(self):
        self.new: dict[str, str] = {}
        self.total: dict[str, str] = {}

    def add(self, path: str, reason: str) -> None:
        self.new[path] = reason
        self.total[path] = reason

    def drain(self) -> dict[str, str]:
        out, self.new = self.new, {}
        return out

    def all(self) -> dict[str, str]:
        return dict(self.total)


def skipped_videos(run_name: str, create: bool = False):
    """The ``SkippedVideos`` actor of ``run_name``: created by the driver (so it lives as long as
    the run), looked up by decode tasks and workers; None when there is none."""
    name = f"beray-skipped-{run_name}"
    if create:
        return SkippedVideos.options(name=name, namespace="beray", get_if_exists=True).remote()
    try:
        return ray.get_actor(name, namespace="beray")
    except ValueError:
        return None


def view_spec(cfg: Config) -> ViewSpec:
    a = cfg.augment
    return ViewSpec(cfg.method.name, cfg.data.num_frames, cfg.data.stride, cfg.data.decode_size,
                    AugmentParams(a.size, tuple(a.crop_scale), a.rotation, tuple(a.jitter), a.jitter_p),
                    cfg.data.decode_timeout_s)


def decode_batch(batch: dict[str, np.ndarray], spec: ViewSpec, run_name: str, noise: str, gamma: float,
                 fg_ratio: float) -> dict[str, np.ndarray]:
    """Ray Data ``map_batches``: records -> their views -> x_d = noise(x_v), in one task.

    An unreadable video is dropped from the batch, counted on the ``beray_skipped_videos``
    metric and named to the run's ``SkippedVideos`` ledger.
    """
    maker = ViewMaker(spec)
    views = []
    for i in range(len(batch["path"])):
        record = {k: v.item() if isinstance(v, np.generic) else v for k, v in ((k, batch[k][i]) for k in batch)}
        try:
            views.append(maker(record))
        except VideoReadError as e:
            _skip(run_name, e.path, e.reason)
    if not views:
        return {}
    out = {k: np.stack([v[k] for v in views]) for k in views[0]}
    return add_noise(out, noise, gamma, fg_ratio)


def _skip(run_name: str, path: str, reason: str) -> None:
    from ray.util.metrics import Counter

    Counter("beray_skipped_videos", "Unreadable videos skipped by the data pipeline",
            tag_keys=("run",)).inc(1, tags={"run": run_name})
    ledger = skipped_videos(run_name)
    if ledger is not None:
        ledger.add.remote(path, reason)


def add_noise(batch: dict[str, np.ndarray], noise: str, gamma: float, fg_ratio: float) -> dict[str, np.ndarray]:
    """x_d = noise(x_v) on a batch of uint8 clips, vectorised (Eq. 1 for intra_frame). x_v is dropped."""
    with warnings.catch_warnings():  # Ray hands out read-only arrays; x_v is only read
        warnings.simplefilter("ignore", UserWarning)
        x_v = torch.from_numpy(batch.pop("x_v"))
    shape = x_v.shape  # (B, T, C, H, W), or (B, clips, T, C, H, W) for clip order prediction
    flat = x_v.reshape(-1, *shape[-4:])
    options = {"fg_ratio": fg_ratio} if noise == "fame" else {}
    batch["x_d"] = distract(flat, noise, gamma, layout="BTCHW", **options).reshape(shape).numpy()
    return batch


def training_records(cfg: Config) -> list[dict]:
    """The records of ``cfg.data``'s subset as rows; raises DatasetError or ValueError naming what is wrong."""
    index = index_dataset(cfg.data.dataset, cfg.data.root, cfg.data.split)
    if cfg.data.subset not in index.subsets:
        raise ValueError(f"data.subset {cfg.data.subset!r} is not in {index.name}; "
                         f"allowed: {', '.join(index.subsets)}")
    rows = [record_row(r) for r in index.subsets[cfg.data.subset]]
    if len(rows) < cfg.optim.batch_size:
        raise ValueError(f"{index.name}/{cfg.data.subset} has {len(rows)} videos, fewer than one batch "
                         f"(optim.batch_size {cfg.optim.batch_size})")
    return rows


def build_dataset(cfg: Config, run_name: str, rows: list[dict] | None = None) -> ray.data.Dataset:
    """The training stream for ``cfg``: rows with uint8 x_o, x_d (and x_h for MoCo) and label."""
    rows = list(rows if rows is not None else training_records(cfg))
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the training loop prints its own progress
    ctx.print_on_execution_start = False
    # Shuffle the records once here, then the order of blocks of ROWS_PER_BLOCK records every
    # epoch (seeded, reseeded per epoch): batches mix videos from across the dataset with no
    # all-to-all shuffle of decoded clips, and tasks stay big enough to amortise their overhead.
    # (A full per-epoch shuffle or a local shuffle buffer cost 10-20% of throughput here.)
    np.random.default_rng(cfg.run.seed).shuffle(rows)
    ds = ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // ROWS_PER_BLOCK)))
    ds = ds.randomize_block_order(seed=RandomSeedConfig(seed=cfg.run.seed, reseed_after_execution=True))
    per_worker = cfg.optim.batch_size // cfg.run.workers
    # One fused operator: decode, views and noise of ``per_worker`` records per call, so the
    # noises that pair videos (mixup, cutmix, inter_frame, fame) pair them within a batch.
    return ds.map_batches(decode_batch, batch_size=per_worker, batch_format="numpy", num_cpus=cfg.data.decode_cpus,
                          concurrency=cfg.data.decode_concurrency,
                          fn_kwargs={"spec": view_spec(cfg), "run_name": run_name, "noise": cfg.be.noise,
                                     "gamma": cfg.be.gamma, "fg_ratio": cfg.be.fg_ratio})
