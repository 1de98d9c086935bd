"""Soak: does memory grow as clips are read? The reader in one process, then the Ray Data pipeline.

Private resident memory (USS, from /proc) is sampled as clips go by: the
reader's process, then the pipeline's driver plus every Ray worker process. The growth
is the slope of a least-squares line through the samples after warm-up (the
first 20% of clips), in MB per 1,000 clips. Target: under 1 MB per 1,000 clips.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from beray import console
from beray.bench.decode import ucf_like_videos
from beray.data.video import read_clip


def private_mb(pid: int | str = "self") -> float:
    """Private resident memory (USS) in MB: what a process holds alone. Unlike RSS it leaves
    out the shared object-store pages every Ray process maps, which would be counted once per
    process and grow as the store's pages get touched, not as anything leaks."""
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return 0.0
    kb = sum(int(line.split()[1]) for line in rollup if line.startswith(("Private_Clean:", "Private_Dirty:")))
    return kb / 1024


# Ray's own processes: its agents, and Ray Data's actors that keep stats and metric series
# per block and per dataset execution (one per epoch). Reported apart from the processes that
# run beray's code.
RAY_BOOKKEEPING = (b"ray::_StatsActor", b"ray::DashboardAgent", b"ray::RuntimeEnvAgent",
                   b"ray::_AutoscalingCoordinatorActor")


def ray_worker_pids() -> tuple[list[int], list[int]]:
    """Ray's worker processes, in one scan of /proc: (those running tasks and actors, Ray's
    own bookkeeping processes)."""
    tasks, bookkeeping = [], []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                cmd = Path(f"/proc/{p}/cmdline").read_bytes()
            except OSError:
                continue
            if cmd.startswith(b"ray::"):
                (bookkeeping if cmd.startswith(RAY_BOOKKEEPING) else tasks).append(int(p))
    return tasks, bookkeeping


def growth_per_1000(samples: list[tuple[int, float]], warmup: float = 0.2) -> float:
    """MB per 1,000 clips: the least-squares slope of (clips, MB) after the warm-up fraction."""
    clips, mb = np.array(samples, dtype=float).T
    keep = clips >= warmup * clips.max()
    return float(np.polyfit(clips[keep], mb[keep], 1)[0] * 1000)


def soak_reader(clips: int, every: int, progress: bool = True) -> dict:
    import ray
    from tqdm import tqdm

    paths = [str(p) for ps in ucf_like_videos(3).values() for p in ps]
    rng = np.random.default_rng(0)
    samples = []
    t0 = time.perf_counter()
    for i in tqdm(range(clips), desc="reader soak", unit="clip", disable=not progress, file=console.err()):
        read_clip(paths[i % len(paths)], 16, 4, start="random", size=128, rng=rng)
        if i % every == 0:
            samples.append((i, private_mb()))
    return {"clips": clips, "seconds": time.perf_counter() - t0, "samples": samples,
            "growth_mb_per_1000": growth_per_1000(samples)}


def soak_pipeline(clips: int, every: int, epoch_clips: int = 4_800, progress: bool = True) -> dict:
    """Iterate the training pipeline (cpu-tiny preset on BackgroundBias-Synth) epoch after epoch.

    The synthetic set's 240 training videos are repeated so that an epoch holds about
    ``epoch_clips`` clips, as a real dataset's epoch does (UCF101 9.5k, Kinetics 240k). Every
    epoch is a new dataset execution, whose fixed costs 240-clip epochs would count per clip
    twenty times over.
    """
    import ray
    from tqdm import tqdm

    from beray.config import load_config
    from beray.data.pipeline import build_dataset, run_data, training_records
    from beray.methods.build import method_views
    from beray.runtime import init_ray

    cfg = load_config(None, ["run.workers=1", "optim.epochs=100000"], preset="cpu-tiny")  # as many as it takes
    init_ray()
    state = run_data("soak")
    rows = training_records(cfg)
    ds = build_dataset(cfg, "soak", state, method_views(cfg), rows * max(1, round(epoch_clips / len(rows))),
                       per_pass=1)
    driver, workers, bookkeeping, epoch_ends = [], [], [], []
    seen, next_sample, epochs = 0, 0, 0
    t0 = time.perf_counter()
    bar = tqdm(total=clips, desc="pipeline soak", unit="clip", disable=not progress, file=console.err())
    while seen < clips:
        ray.get(state.set_epoch.remote(epochs))
        epochs += 1
        for batch in ds.iter_torch_batches(batch_size=cfg.optim.batch_size, drop_last=True):
            n = len(batch["label"])
            seen += n
            bar.update(n)
            if seen >= next_sample:
                tasks, ray_own = ray_worker_pids()
                driver.append((seen, private_mb()))
                workers.append((seen, sum(map(private_mb, tasks))))
                bookkeeping.append((seen, sum(map(private_mb, ray_own))))
                next_sample += every
            if seen >= clips:
                break
        epoch_ends.append(seen)
    bar.close()
    ray.kill(state)
    total = [(c, d + w) for (c, d), (_, w) in zip(driver, workers)]
    return {"clips": seen, "seconds": time.perf_counter() - t0, "epochs": epochs, "epoch_clips": epoch_ends[0],
            "samples": total, "growth_mb_per_1000": growth_per_1000(total),
            "driver_mb_per_1000": growth_per_1000(driver), "workers_mb_per_1000": growth_per_1000(workers),
            "ray_bookkeeping_mb_per_1000": growth_per_1000(bookkeeping),
            "ray_bookkeeping_mb": [bookkeeping[0][1], bookkeeping[-1][1]]}


def run(clips: int = 20_000, every: int = 250, epoch_clips: int = 4_800, progress: bool = True) -> dict:
    reader = soak_reader(clips, every, progress)
    pipeline = soak_pipeline(clips, every, epoch_clips, progress)
    return {"reader": reader, "pipeline": pipeline,
            "reader_growth_mb_per_1000": reader["growth_mb_per_1000"],
            "pipeline_growth_mb_per_1000": pipeline["growth_mb_per_1000"]}


def print_table(res: dict) -> None:
    print("soak: private memory while reading clips (growth after the first 20%)\n")
    for name in ("reader", "pipeline"):
        r = res[name]
        mb = [m for _, m in r["samples"]]
        print(f"  {name:<9} {r['clips']:>7} clips in {r['seconds']:6.0f} s   USS {mb[0]:7.1f} -> {mb[-1]:7.1f} MB   "
              f"growth {r['growth_mb_per_1000']:+.3f} MB / 1,000 clips")
    p = res["pipeline"]
    print(f"\n  pipeline: {p['epochs']} epochs of {p['epoch_clips']} clips; of its growth, the driver (which runs Ray Data's"
          f"\n  executor and iterates the batches) {p['driver_mb_per_1000']:+.3f}, the decode workers {p['workers_mb_per_1000']:+.3f}."
          f"\n  private memory (USS); reader: this process; pipeline: the driver and every Ray worker"
          f"\n  process running tasks. Target: < 1 MB / 1,000 clips."
          f"\n  Ray's own bookkeeping processes (_StatsActor, DashboardAgent, ...) went {p['ray_bookkeeping_mb'][0]:.0f}"
          f" -> {p['ray_bookkeeping_mb'][1]:.0f} MB: {p['ray_bookkeeping_mb_per_1000']:+.2f} MB / 1,000 clips"
          f"\n  (they keep stats per block and per dataset execution; not counted above).")
