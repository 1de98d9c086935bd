"""Ray Data pipeline: records -> decode + views (Ray tasks) -> noise on batches (x_d) -> Train workers.

Nothing is materialised: records (paths and labels) are the only thing held
whole; decoded clips stream through Ray Data's executor, whose backpressure
bounds memory. Each iteration of the dataset (one epoch) re-runs the pipeline,
so every epoch draws new clips, new crops and new noise.

A video that cannot be read is skipped: the decode task drops it, counts it on
the ``beray_skipped_videos`` Ray metric and records its path and reason with the
run's ``SkippedVideos`` actor, which the training loop drains every epoch.
"""

from __future__ import annotations

import numpy as np
import ray
import torch

from beray.augment.be import distract
from beray.augment.spatial import AugmentConfig as AugmentParams
from beray.config import Config
from beray.data.datasets import index_dataset
from beray.data.video import VideoReadError
from beray.data.views import ViewMaker, ViewSpec, record_row


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
                    AugmentParams(a.size, tuple(a.crop_scale), a.rotation, tuple(a.jitter), a.jitter_p))


def decode_views(row: dict, spec: ViewSpec, run_name: str) -> list[dict]:
    """Ray Data ``flat_map``: one record -> [its views], or [] for an unreadable video (skipped,
    counted, named)."""
    record = {**row, "start_frame": row["start_frame"] if row["start_frame"] >= 0 else None,
              "end_frame": row["end_frame"] if row["end_frame"] >= 0 else None}
    try:
        return [ViewMaker(spec)(record)]
    except VideoReadError as e:
        from ray.util.metrics import Counter

        Counter("beray_skipped_videos", "Unreadable videos skipped by the data pipeline",
                tag_keys=("run",)).inc(1, tags={"run": run_name})
        ledger = skipped_videos(run_name)
        if ledger is not None:
            ledger.add.remote(e.path, e.reason)
        return []


def add_noise(batch: dict[str, np.ndarray], noise: str, gamma: float, fg_ratio: float) -> dict[str, np.ndarray]:
    """x_d = noise(x_v) on a batch of uint8 clips, vectorised (Eq. 1 for intra_frame). x_v is dropped."""
    x_v = torch.from_numpy(batch.pop("x_v"))
    shape = x_v.shape  # (B, T, C, H, W), or (B, clips, T, C, H, W) for clip order prediction
    flat = x_v.reshape(-1, *shape[-4:])
    options = {"fg_ratio": fg_ratio} if noise == "fame" else {}
    batch["x_d"] = distract(flat, noise, gamma, layout="BTCHW", **options).reshape(shape).numpy()
    return batch


def build_dataset(cfg: Config, run_name: str) -> ray.data.Dataset:
    """The training stream for ``cfg``: rows with uint8 x_o, x_d (and x_h for MoCo) and label."""
    index = index_dataset(cfg.data.dataset, cfg.data.root, cfg.data.split)
    if cfg.data.subset not in index.subsets:
        raise ValueError(f"data.subset {cfg.data.subset!r} not in {index.name}; "
                         f"allowed: {', '.join(index.subsets)}")
    rows = [record_row(r) for r in index.subsets[cfg.data.subset]]
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the training loop prints its own progress
    ctx.print_on_execution_start = False
    ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows) // 4))
    ds = ds.random_shuffle()  # metadata only: a new order every epoch
    ds = ds.flat_map(decode_views, fn_kwargs={"spec": view_spec(cfg), "run_name": run_name},
                     num_cpus=cfg.data.decode_cpus, concurrency=cfg.data.decode_concurrency)
    per_worker = cfg.optim.batch_size // cfg.run.workers
    return ds.map_batches(add_noise, batch_size=per_worker, batch_format="numpy", num_cpus=cfg.data.decode_cpus,
                          fn_kwargs={"noise": cfg.be.noise, "gamma": cfg.be.gamma, "fg_ratio": cfg.be.fg_ratio})
