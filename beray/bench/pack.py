"""``python -m beray.bench train --members N``: one pack of N members against the same N runs one after
another, in one Ray instance.

The members differ in gamma (0, 0.1, 0.2, ...), which the pipeline does not read: the pack decodes each
clip once for all of them, the solo runs once each. Reported for both: wall time (start-up included: a
user waits for it, after a warm-up run that is not counted), the clips its decode tasks decoded, and the CPU-seconds they spent (the decoding
thread's ``time.thread_time``, summed by the run's ``RunData``). A thread's CPU time per clip is not a
constant: on a machine whose cores the training process keeps busy, the same decoding takes more of it.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from beray.config import load_config


def ucf_manifest(directory: Path, per_format: int = 12, test: bool = False) -> Path:
    """A manifest dataset of ``bench decode``'s UCF101-shaped videos (320x240, 25 fps, 7-10 s; AVI and MP4);
    ``test``: the same videos as a ``test`` subset too (for an evaluation)."""
    from beray.bench.decode import ucf_like_videos

    paths = [p for fmt in ucf_like_videos(per_format).values() for p in fmt]
    rows = "path,label\n" + "".join(f"{p},{i % 2}\n" for i, p in enumerate(paths))
    for subset in ("train", "test") if test else ("train",):
        (directory / f"{subset}.csv").write_text(rows)
    return directory


def run(preset: str = "cpu-tiny", overrides: list[str] = (), epochs: int = 3, members: int = 4,
        videos: str = "synth") -> dict:
    """``videos``: ``synth`` (BackgroundBias-Synth) or ``ucf`` (UCF101-shaped videos, as ``bench decode``'s)."""
    from beray.runtime import init_ray
    from beray.train.launch import fit

    init_ray()
    gammas = [round(0.1 * i, 2) for i in range(members)]
    with tempfile.TemporaryDirectory() as storage:
        data = ([] if videos == "synth" else
                ["data.dataset=manifest", f"data.root={ucf_manifest(Path(storage))}", "data.subset=train"])
        base = [f"optim.epochs={epochs}", f"run.storage={storage}", "run.images_every=0", *data, *overrides]
        # Not counted: Ray's decode worker processes import torch on their first task (seconds of CPU),
        # and are reused after that; both paths get warm ones.
        fit(load_config(None, [*base, "optim.epochs=1"], preset=preset), name="bench-warm-up")
        t0 = time.perf_counter()
        info = fit(load_config(None, base, preset=preset), name="bench-pack",
                   members=[[f"be.gamma={g}"] for g in gammas])
        pack_wall, pack_decode, pack_clips = time.perf_counter() - t0, info.metrics["decode_cpu_s"], info.metrics["decode_clips"]
        solo_wall = solo_decode = solo_clips = 0.0
        for g in gammas:
            t0 = time.perf_counter()
            info = fit(load_config(None, [*base, f"be.gamma={g}"], preset=preset), name=f"bench-solo-{g}")
            solo_wall, solo_decode = solo_wall + time.perf_counter() - t0, solo_decode + info.metrics["decode_cpu_s"]
            solo_clips += info.metrics["decode_clips"]
    return {"preset": preset, "overrides": list(overrides), "epochs": epochs, "members": members, "videos": videos,
            "pack_wall_s": pack_wall, "solo_wall_s": solo_wall, "wall_ratio": pack_wall / solo_wall,
            "pack_decode_cpu_s": pack_decode, "solo_decode_cpu_s": solo_decode,
            "decode_ratio": pack_decode / solo_decode, "pack_clips": pack_clips, "solo_clips": solo_clips,
            "device": f"cpu ({os.cpu_count()} cores)"}


def print_table(res: dict) -> None:
    print(f"train --members {res['members']}: preset {res['preset']} {' '.join(res['overrides'])}, "
          f"{res['epochs']} epochs, {'BackgroundBias-Synth' if res['videos'] == 'synth' else 'UCF101-shaped videos'}, "
          f"members differ in be.gamma, {res['device']}\n")
    print(f"  {'':<30} {'wall s':>8} {'decode CPU-s':>13} {'clips decoded':>14} {'CPU ms/clip':>12}")
    for label, key in ((f"one pack of {res['members']}", "pack"), (f"{res['members']} runs one after another", "solo")):
        cpu, clips = res[f"{key}_decode_cpu_s"], res[f"{key}_clips"]
        print(f"  {label:<30} {res[f'{key}_wall_s']:>8.1f} {cpu:>13.1f} {clips:>14.0f} {1000 * cpu / max(clips, 1):>12.1f}")
    print(f"\n  pack / runs: wall {res['wall_ratio']:.2f}x (target <= 0.75x), "
          f"decode CPU {res['decode_ratio']:.2f}x (target <= 0.3x), clips decoded "
          f"{res['pack_clips'] / max(res['solo_clips'], 1):.2f}x")
