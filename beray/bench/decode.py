"""Clip decoding: the beray reader against a naive reader and the decode bound.

Videos have UCF101's shape: 320x240, 25 fps, 7-10 s, in MPEG-4 part 2 / AVI
(GOP 12, FFmpeg's default, as in UCF101's DivX files) and H.264 / MP4 (GOP 2 s,
YouTube's recommendation, as in Kinetics). Every reader gets the same clips
(T frames at stride s from seeded random starts) and the same output size.

- beray: :func:`beray.data.video.read_clip` (index, seek, decode to the last
  needed frame, convert and resize only the T sampled frames in swscale).
- naive: decode the whole video and convert every frame, then pick the clip.
- bound: seek and decode just the frames one clip spans (from the keyframe
  before it) without any conversion: what no reader that returns RGB can beat.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from beray.data import sampling
from beray.data.encode import write_video
from beray.data.synth import background, cache_dir, foreground_masks
from beray.data.video import probe, read_clip

FORMATS = {"mpeg4/avi": (".avi", {"gop": 12, "bit_rate": 700_000}), "h264/mp4": (".mp4", {"gop": 50, "options": {"crf": "23"}})}


@dataclass(frozen=True)
class DecodeBench:
    videos_per_format: int = 3
    clips_per_video: int = 6
    num_frames: int = 16
    stride: int = 4
    size: int = 128  # short side of the output
    seed: int = 0


def ucf_like_videos(n: int, seed: int = 0) -> dict[str, list[Path]]:
    """``n`` videos per format of UCF101's shape, generated once into the cache."""
    root = cache_dir() / "bench-decode-v1"
    rng = np.random.default_rng(seed)
    out: dict[str, list[Path]] = {}
    for fmt, (ext, enc) in FORMATS.items():
        out[fmt] = []
        for i in range(n):
            path = root / f"{fmt.replace('/', '_')}_{i:02d}{ext}"
            seconds = rng.uniform(7, 10)
            if not path.exists():
                root.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{os.getpid()}{ext}")
                write_video(tmp, _scene(int(seconds * 25), np.random.default_rng([seed, i])), fps=25, **enc)
                os.replace(tmp, path)
            out[fmt].append(path)
    return out


def _scene(frames: int, rng: np.random.Generator):
    """A panning textured background, a moving object and sensor noise, frame by frame."""
    bg = background(int(rng.integers(0, 6)), 400, rng)
    mask = foreground_masks(int(rng.integers(0, 6)), 240, 32, rng)
    colour = rng.uniform(0, 255, 3).astype(np.uint8)
    for t in range(frames):
        x0 = int(40 + 30 * np.sin(t / 40))
        frame = bg[80:320, x0:x0 + 320].copy()
        frame[:, 40:280][mask[t % 32]] = colour
        noise = rng.normal(0, 3, frame.shape)
        yield np.clip(frame + noise, 0, 255).astype(np.uint8)


def naive_clip(path: str, indices: np.ndarray, size: int) -> np.ndarray:
    """What a first attempt does: decode and convert every frame, then index."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "NONE"
        h, w = stream.codec_context.height, stream.codec_context.width
        out_w, out_h = round(w * size / min(h, w)), round(h * size / min(h, w))
        frames = [f.to_ndarray(width=out_w, height=out_h, format="rgb24", interpolation="BILINEAR")
                  for f in container.decode(stream)]
    return np.stack(frames)[indices]


def bound_clip(path: str, first_pts: int, last_pts: int) -> int:
    """Seek and decode the frames one clip spans, without converting any. Returns the count."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "NONE"
        container.seek(first_pts, stream=stream, backward=True, any_frame=False)
        n = 0
        for frame in container.decode(stream):
            n += 1
            if frame.pts is not None and frame.pts >= last_pts:
                break
    return n


def _rate(fn, jobs, repeats: int = 2) -> float:
    """Clips per second, the best of ``repeats`` passes over ``jobs``."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for job in jobs:
            fn(*job)
        best = min(best, time.perf_counter() - t0)
    return len(jobs) / best


def run(cfg: DecodeBench = DecodeBench()) -> dict:
    """Run the benchmark on one core; returns clips/s per reader and format."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    videos = ucf_like_videos(cfg.videos_per_format, cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    results: dict[str, dict[str, float]] = {}
    totals = {"beray": 0.0, "naive": 0.0, "bound": 0.0}
    n_total = 0
    for fmt, paths in videos.items():
        beray_jobs, naive_jobs, bound_jobs = [], [], []
        for path in paths:
            info = probe(path)
            for _ in range(cfg.clips_per_video):
                start = sampling.random_start(info.num_frames, cfg.num_frames, cfg.stride, rng)
                idx = sampling.clip_indices(info.num_frames, cfg.num_frames, cfg.stride, start)
                beray_jobs.append((str(path), cfg.num_frames, cfg.stride, start, cfg.size))
                naive_jobs.append((str(path), idx, cfg.size))
                bound_jobs.append((str(path), int(info.pts[idx[0]]), int(info.pts[idx[-1]])))
        # the two readers that return RGB must agree exactly
        if not np.array_equal(read_clip(*beray_jobs[0]), naive_clip(*naive_jobs[0])):
            raise AssertionError(f"beray and naive readers disagree on {beray_jobs[0][0]}")
        rates = {"beray": _rate(read_clip, beray_jobs), "naive": _rate(naive_clip, naive_jobs),
                 "bound": _rate(bound_clip, bound_jobs)}
        results[fmt] = rates
        for k, r in rates.items():  # accumulate seconds, to rate all clips together
            totals[k] += len(beray_jobs) / r
        n_total += len(beray_jobs)
    overall = {k: n_total / s for k, s in totals.items()}
    return {
        "beray_clips_per_s": overall["beray"],
        "naive_clips_per_s": overall["naive"],
        "bound_clips_per_s": overall["bound"],
        "beray_over_naive": overall["beray"] / overall["naive"],
        "beray_over_bound": overall["beray"] / overall["bound"],
        "per_format": results,
        "clips": n_total,
        "config": cfg.__dict__,
    }


def print_table(res: dict) -> None:
    c = res["config"]
    print(f"decode: {c['num_frames']} frames at stride {c['stride']}, short side {c['size']}, one core, "
          f"{res['clips']} clips from {2 * c['videos_per_format']} videos (320x240, 25 fps, 7-10 s)\n")
    print(f"{'format':<11} {'beray':>9} {'naive':>9} {'bound':>9} {'beray/naive':>12} {'beray/bound':>12}")
    rows = dict(res["per_format"])
    rows["all"] = {"beray": res["beray_clips_per_s"], "naive": res["naive_clips_per_s"], "bound": res["bound_clips_per_s"]}
    for fmt, r in rows.items():
        print(f"{fmt:<11} {r['beray']:>9.1f} {r['naive']:>9.1f} {r['bound']:>9.1f} "
              f"{r['beray'] / r['naive']:>11.2f}x {r['beray'] / r['bound']:>11.2f}x")
    print("\nclips/s; targets: beray >= 3x naive, beray >= 0.5x bound")
