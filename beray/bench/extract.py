"""``python -m beray.bench extract``: frozen feature extraction through Ray Data (decode tasks feeding
model actors) against the same model on clips already in memory (the ceiling), on BackgroundBias-Synth.

Both paths run the model with the same threads (one actor, one thread each on a CPU machine;
one GPU on a GPU machine): the ratio says how much of the model's speed the streaming pipeline
keeps. The model is freshly initialised: speed does not depend on the weights.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from beray.config import Config, load_config
from beray.data.datasets import index_dataset
from beray.data.views import record_row
from beray.eval.clips import ClipSpec, eval_clips
from beray.eval.extract import FeatureModel, extract, model_placement
from beray.models import build_backbone

# A model whose cost is that of a real backbone's share of the work (at 32 px the tiny preset's
# model is so cheap that any pipeline is decode-bound): R3D-18 at half width, 64 px, 16 frames.
DEFAULT_OVERRIDES = ("model.width=0.5", "augment.size=64", "data.num_frames=16")


def _spec(cfg: Config) -> ClipSpec:
    return ClipSpec(cfg.data.num_frames, cfg.data.stride, cfg.augment.size, "centre")


def model_only_clips_per_s(cfg: Config, weights: dict, records: list[dict], threads: int, batch_size: int,
                           repeats: int = 3) -> float:
    clips = np.concatenate([eval_clips(r, _spec(cfg), i) for i, r in enumerate(records[:batch_size])])
    model = FeatureModel([(cfg.model_dump(mode="json"), weights)], "pooled", (2, 7, 7), threads)
    batch = {"x": clips, "video": np.arange(len(clips)), "clip": np.zeros(len(clips), np.int64)}
    model(dict(batch))  # warm-up
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        model(dict(batch))  # returns CPU arrays: waits for the device
    return repeats * len(clips) / (time.perf_counter() - t0)


def run(preset: str = "cpu-tiny", overrides: list[str] | None = None, batch_size: int = 32) -> dict:
    import ray

    from beray.runtime import init_ray

    overrides = list(DEFAULT_OVERRIDES if overrides is None else overrides)
    cfg = load_config(None, overrides, preset=preset)
    index = index_dataset(cfg.data.dataset, cfg.data.root, cfg.data.split, cfg.data.synth)
    records = [record_row(r) for s in ("train", "test_biased", "test_swapped") if s in index.subsets
               for r in index.subsets[s]] or [record_row(r) for r in next(iter(index.subsets.values()))]
    torch.manual_seed(0)
    weights = build_backbone(cfg.model.backbone, cfg.model.width).state_dict()
    init_ray()
    place = model_placement()
    extract([(cfg, weights)], "pooled", [(records[:batch_size], _spec(cfg))], batch_size=batch_size, progress=False)  # warm
    t0 = time.perf_counter()
    (feats,), = extract([(cfg, weights)], "pooled", [(records, _spec(cfg))], batch_size=batch_size, progress=False)
    seconds = time.perf_counter() - t0
    n = len(feats.labels)
    gpu = "num_gpus" in place
    ray.shutdown()  # the ceiling gets the machine to itself
    ceiling = model_only_clips_per_s(cfg, weights, records, place["threads"], batch_size)
    return {"extract_clips_per_s": n / seconds, "model_only_clips_per_s": ceiling,
            "extract_over_model_only": n / seconds / ceiling, "clips": n, "seconds": seconds,
            "actors": place["compute"].max_size, "threads_per_actor": place["threads"], "preset": preset,
            "overrides": overrides, "batch_size": batch_size,
            "device": torch.cuda.get_device_name() if gpu else f"cpu ({os.cpu_count()} cores)"}


def print_table(res: dict) -> None:
    print(f"extract: preset {res['preset']} {' '.join(res['overrides'])}, {res['clips']} clips, batch "
          f"{res['batch_size']}, {res['actors']} model actor(s), {res['device']}\n")
    print(f"  {'Ray Data (decode tasks -> model actors)':<42} {res['extract_clips_per_s']:>8.1f} clips/s "
          f"(start-up included)")
    print(f"  {'model only (clips in memory, same threads)':<42} {res['model_only_clips_per_s']:>8.1f} clips/s")
    print(f"\n  extraction / model only: {res['extract_over_model_only']:.2f}x   (target >= 0.7x)")
