"""Build and fit the TorchTrainer of one run: Ray Data stream in, checkpoints and logs out."""

from __future__ import annotations

import ctypes
import os
import time
from dataclasses import dataclass
from pathlib import Path

import ray
import yaml

from beray.config import Config, to_yaml


@dataclass
class RunInfo:
    name: str
    dir: Path  # storage/name: Ray Train's checkpoints, config.yaml, tensorboard/
    checkpoint: str | None
    metrics: dict


def run_name(cfg: Config) -> str:
    return cfg.run.name or f"{cfg.method.name}-{cfg.be.noise}-{time.strftime('%Y%m%d-%H%M%S')}"


# Ray kills worker processes idle for 1 s by default; a decode task's process then pays the
# imports of torch, torchvision and PyAV again at every epoch (seconds on a small machine).
# Keep them for 10 minutes. On a cluster: `ray start --system-config=...` (see cluster.yaml).
SYSTEM_CONFIG = {"idle_worker_killing_time_threshold_ms": 600_000}


# glibc gives each thread its own malloc arena (up to 8 per core) and each arena keeps its
# high-water mark, so under Ray's and Ray Data's threads resident memory ratchets up for tens of
# thousands of clips. Two arenas: `python -m beray.bench soak`'s pipeline growth went from 1.05 to
# 0.72 MB per 1,000 clips (2 cores, 20k clips). On a cluster, export it before `ray start` (README).
MALLOC_ARENA_MAX = 2
_M_ARENA_MAX = -8  # mallopt's parameter number, from glibc's malloc.h


def cap_malloc_arenas(n: int = MALLOC_ARENA_MAX) -> None:
    """Cap glibc's malloc arenas at ``n`` in this process (now) and in the processes it starts
    (through MALLOC_ARENA_MAX); a value the user set wins. A no-op without glibc."""
    value = os.environ.setdefault("MALLOC_ARENA_MAX", str(n))
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, int(value))
    except (OSError, AttributeError, ValueError):
        pass  # not glibc, or the user's own value is not a number: glibc ignores it too


def init_ray(**kwargs) -> dict:
    """Join ``RAY_ADDRESS``'s cluster if set, else start a local instance (no-op when connected)."""
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS") or None
        if address is None:
            kwargs.setdefault("_system_config", SYSTEM_CONFIG)
            cap_malloc_arenas()  # before the raylet starts: its workers inherit the setting
        return ray.init(address=address, log_to_driver=True, **kwargs).address_info
    return {}


def fit(cfg: Config, name: str | None = None) -> RunInfo:
    """Pretrain ``cfg`` with ``cfg.run.workers`` Ray Train workers; resumes when ``name`` has checkpoints."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from beray.data.pipeline import build_dataset, skipped_videos, training_records
    from beray.train.loop import train_loop_per_worker

    rows = training_records(cfg)  # a bad dataset fails here, before Ray starts
    name = name or run_name(cfg)
    storage = Path(cfg.run.storage).expanduser().resolve()
    run_dir = storage / name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    init_ray()
    ledger = skipped_videos(name, create=True)  # lives as long as this driver
    use_gpu = cfg.run.gpus_per_worker > 0
    resources = {"CPU": cfg.run.cpus_per_worker, **({"GPU": cfg.run.gpus_per_worker} if use_gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "run_name": name,
                           "log_dir": str(run_dir / "tensorboard")},
        scaling_config=ScalingConfig(num_workers=cfg.run.workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(name=name, storage_path=str(storage),
                             failure_config=FailureConfig(max_failures=cfg.run.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=3)),
        datasets={"train": build_dataset(cfg, name, rows)},
    )
    result = trainer.fit()
    skipped = ray.get(ledger.all.remote())
    ray.kill(ledger)
    metrics = dict(result.metrics or {})
    metrics["skipped_total"] = len(skipped)
    metrics["history"] = result.return_value or []  # rank 0's per-epoch metrics of the last attempt
    return RunInfo(name, run_dir, result.checkpoint.path if result.checkpoint else None, metrics)


def load_run_config(run_dir: str | Path) -> Config:
    """The config a run was started with (its ``config.yaml``)."""
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} is not a beray run (no config.yaml)")
    return Config.model_validate(yaml.safe_load(path.read_text()))
