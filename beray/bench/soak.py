"""Soak: does memory grow as clips are read? The reader in one process, then the Ray Data pipeline.

Resident memory (RSS, from /proc) is sampled as clips go by: the reader's
process, then the pipeline's driver plus every Ray worker process. The growth
is the slope of a least-squares line through the samples after warm-up (the
first 20% of clips), in MB per 1,000 clips. Target: under 1 MB per 1,000 clips.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from beray.bench.decode import ucf_like_videos
from beray.data.video import read_clip

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb(pid: int | str = "self") -> float:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 2**20
    except (OSError, IndexError, ValueError):
        return 0.0  # the process is gone


def ray_worker_pids() -> list[int]:
    pids = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                cmd = Path(f"/proc/{p}/cmdline").read_bytes()
            except OSError:
                continue
            if cmd.startswith(b"ray::"):
                pids.append(int(p))
    return pids


def growth_per_1000(samples: list[tuple[int, float]], warmup: float = 0.2) -> float:
    """MB per 1,000 clips: the least-squares slope of (clips, MB) after the warm-up fraction."""
    clips, mb = np.array(samples, dtype=float).T
    keep = clips >= warmup * clips.max()
    return float(np.polyfit(clips[keep], mb[keep], 1)[0] * 1000)


def soak_reader(clips: int, every: int, progress: bool = True) -> dict:
    from tqdm import tqdm

    paths = [str(p) for ps in ucf_like_videos(3).values() for p in ps]
    rng = np.random.default_rng(0)
    samples = []
    t0 = time.perf_counter()
    for i in tqdm(range(clips), desc="reader soak", unit="clip", disable=not progress):
        read_clip(paths[i % len(paths)], 16, 4, start="random", size=128, rng=rng)
        if i % every == 0:
            samples.append((i, rss_mb()))
    return {"clips": clips, "seconds": time.perf_counter() - t0, "samples": samples,
            "growth_mb_per_1000": growth_per_1000(samples)}


def soak_pipeline(clips: int, every: int, progress: bool = True) -> dict:
    """Iterate the training pipeline (cpu-tiny preset on BackgroundBias-Synth) epoch after epoch."""
    from tqdm import tqdm

    from beray.config import load_config
    from beray.data.pipeline import build_dataset, skipped_videos
    from beray.train.launch import init_ray

    cfg = load_config(None, ["run.workers=1"], preset="cpu-tiny")
    init_ray()
    ledger = skipped_videos("soak", create=True)
    ds = build_dataset(cfg, "soak")
    samples, seen, next_sample = [], 0, 0
    t0 = time.perf_counter()
    bar = tqdm(total=clips, desc="pipeline soak", unit="clip", disable=not progress)
    while seen < clips:
        for batch in ds.iter_torch_batches(batch_size=cfg.optim.batch_size, drop_last=True):
            n = len(batch["label"])
            seen += n
            bar.update(n)
            if seen >= next_sample:
                samples.append((seen, rss_mb() + sum(rss_mb(p) for p in ray_worker_pids())))
                next_sample += every
            if seen >= clips:
                break
    bar.close()
    del ledger
    return {"clips": seen, "seconds": time.perf_counter() - t0, "samples": samples,
            "growth_mb_per_1000": growth_per_1000(samples)}


def run(clips: int = 20_000, every: int = 250, progress: bool = True) -> dict:
    reader = soak_reader(clips, every, progress)
    pipeline = soak_pipeline(clips, every, progress)
    return {"reader": reader, "pipeline": pipeline,
            "reader_growth_mb_per_1000": reader["growth_mb_per_1000"],
            "pipeline_growth_mb_per_1000": pipeline["growth_mb_per_1000"]}


def print_table(res: dict) -> None:
    print(f"soak: resident memory while reading clips (growth after the first 20%)\n")
    for name in ("reader", "pipeline"):
        r = res[name]
        mb = [m for _, m in r["samples"]]
        print(f"  {name:<9} {r['clips']:>7} clips in {r['seconds']:6.0f} s   RSS {mb[0]:7.1f} -> {mb[-1]:7.1f} MB   "
              f"growth {r['growth_mb_per_1000']:+.3f} MB / 1,000 clips")
    print("\n  reader: this process; pipeline: driver + all Ray worker processes. Target: < 1 MB / 1,000 clips")
