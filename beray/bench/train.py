"""Training throughput: the Ray Data + Ray Train path against what a user would write instead.

Same config (default: the ``cpu-tiny`` preset on BackgroundBias-Synth), same
files, same reader, augmentation and BE, same global batch per step:

- ray: ``beray.train.launch.fit`` (Ray Data streaming into DDP Ray Train workers).
- dataloader: one process, ``torch.utils.data.DataLoader`` with as many loader
  workers as the Ray path has CPUs for data, BE applied per batch in the training
  process (as the Train workers do).
- model_only: the model alone on one batch already in memory (the ceiling).

Steps per second are taken over the epochs after the first (start-up excluded
on both paths).
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from beray.config import Config, load_config
from beray.augment.be import add_noise
from beray.data.pipeline import training_records, view_spec
from beray.data.views import ViewMaker, video_rng
from beray.methods.build import build_method, make_optimizer, method_views, train_step


class _Views(Dataset):
    """The same views as the pipeline's, one video per item (the DataLoader shuffles)."""

    def __init__(self, cfg: Config):
        self.rows = training_records(cfg)
        self.spec = view_spec(cfg, method_views(cfg))
        self.seed, self.epoch, self.maker = cfg.run.seed, 0, None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        if self.maker is None:  # one per loader worker
            self.maker = ViewMaker(self.spec)
        return {**self.maker(self.rows[i], video_rng(self.seed, self.epoch, i)), "index": i}


def _collate(items: list[dict]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.stack([it[k] for it in items])) for k in items[0]}


def _device(cfg: Config) -> torch.device:
    return torch.device("cuda" if cfg.run.gpus_per_worker > 0 else "cpu")


def _stepper(cfg: Config, device: torch.device):
    """The model and one training step of it, as the Ray Train loop runs it (x_d on the device, AMP on CUDA)."""
    torch.manual_seed(cfg.run.seed)
    model = build_method(cfg).to(device).train()
    optimizer = make_optimizer(model, cfg)
    amp = cfg.optim.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    def step(batch: dict[str, torch.Tensor], epoch: int) -> float:
        batch = add_noise({k: v.to(device, non_blocking=True) for k, v in batch.items()}, cfg.be, cfg.run.seed, epoch)
        return train_step(model, optimizer, scaler, batch, device, amp)["loss"].item()
    return step


def data_cpus(cfg: Config, cpus: float) -> int:
    """The CPUs the Ray path leaves to its data pipeline (at least 1): the DataLoader gets as many workers."""
    return max(1, round(cpus - cfg.run.workers * cfg.run.cpus_per_worker))


def dataloader_steps_per_s(cfg: Config, workers: int, epochs: int) -> float:
    device = _device(cfg)
    step = _stepper(cfg, device)
    views = _Views(cfg)
    loader = DataLoader(views, batch_size=cfg.optim.batch_size, shuffle=True, drop_last=True,
                        num_workers=workers, collate_fn=_collate, pin_memory=device.type == "cuda")
    steps, seconds = 0, 0.0
    for epoch in range(epochs):
        views.epoch = epoch  # loader workers are started per epoch: they see it
        t0 = time.perf_counter()
        n = 0
        for batch in loader:
            step(batch, epoch)
            n += 1
        if epoch > 0:
            steps, seconds = steps + n, seconds + time.perf_counter() - t0
    return steps / seconds


def model_only_steps_per_s(cfg: Config, steps: int = 30) -> float:
    device = _device(cfg)
    step = _stepper(cfg, device)
    batch = _collate([_Views(cfg)[i] for i in range(cfg.optim.batch_size)])
    batch = {k: v.to(device) for k, v in batch.items()}
    step(batch, 0)  # warm-up (cuDNN picks its kernels)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(batch, 0)  # .item() waits for the device
    return steps / (time.perf_counter() - t0)


def ray_steps_per_s(cfg: Config) -> tuple[float, float]:
    """Steps/s and data-wait fraction of the Ray path, over the epochs after the first."""
    from beray.runtime import init_ray
    from beray.train.launch import fit

    init_ray()
    with tempfile.TemporaryDirectory() as storage:
        cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"storage": storage, "images_every": 0})})
        info = fit(cfg, name="bench-train")
        per_epoch = info.metrics["history"]
    later = [m for m in per_epoch if m["epoch"] > 1]
    steps = sum(m["steps"] for m in later)
    seconds = sum(m["steps"] * cfg.optim.batch_size / m["clips_per_s"] for m in later)
    return steps / seconds, float(np.mean([m["data_wait_fraction"] for m in later]))


def run(preset: str = "cpu-tiny", overrides: list[str] = (), epochs: int = 4, device: str = "cpu",
        repeats: int = 1) -> dict:
    """``device`` cuda: one GPU per Train worker, and the DataLoader and model-only paths on CUDA.
    ``repeats``: Ray and DataLoader runs taken in turn this many times; the figures are their medians, and
    the ratio's spread is the range of the per-repeat ratios (a shared machine drifts between runs)."""
    if device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("error: --device cuda: no CUDA device on this machine")
        overrides = [*overrides, "run.gpus_per_worker=1"]
    cfg = load_config(None, [f"optim.epochs={epochs}", *overrides], preset=preset)
    import ray

    from beray.runtime import init_ray

    init_ray()
    cpus = ray.cluster_resources().get("CPU", 1)
    workers = data_cpus(cfg, cpus)
    runs = []
    for _ in range(repeats):
        init_ray()
        ray_sps, wait = ray_steps_per_s(cfg)
        ray.shutdown()  # the DataLoader gets the machine to itself
        runs.append((ray_sps, wait, dataloader_steps_per_s(cfg, workers, epochs)))
    ray_sps, wait, dl_sps = (float(np.median(col)) for col in zip(*runs))
    ratios = [r / d for r, _, d in runs]
    model_sps = model_only_steps_per_s(cfg)
    return {
        "ray_steps_per_s": ray_sps, "dataloader_steps_per_s": dl_sps, "model_only_steps_per_s": model_sps,
        "ray_over_dataloader": float(np.median(ratios)), "ratios": ratios, "repeats": repeats,
        "ray_data_wait_fraction": wait, "loader_workers": workers,
        "preset": preset, "overrides": list(overrides), "batch_size": cfg.optim.batch_size,
        "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({os.cpu_count()} cores)",
    }


def print_table(res: dict) -> None:
    print(f"train: preset {res['preset']} {' '.join(res['overrides'])}, global batch {res['batch_size']}, "
          f"{res['device']}\n")
    print(f"  {'Ray Data + Ray Train':<34} {res['ray_steps_per_s']:>7.2f} steps/s   "
          f"(data wait {100 * res['ray_data_wait_fraction']:.0f}% of step time)")
    print(f"  {'DataLoader, ' + str(res['loader_workers']) + ' loader worker(s)':<34} "
          f"{res['dataloader_steps_per_s']:>7.2f} steps/s")
    print(f"  {'model only (clips in memory)':<34} {res['model_only_steps_per_s']:>7.2f} steps/s")
    spread = (f", median of {res['repeats']} runs in turn, range {min(res['ratios']):.2f}-{max(res['ratios']):.2f}x"
              if res["repeats"] > 1 else "")
    print(f"\n  Ray / DataLoader: {res['ray_over_dataloader']:.2f}x{spread}   (target >= 1.0x)")
