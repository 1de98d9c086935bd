"""Frozen-model inference over a dataset subset as Ray Data batch inference, cached per checkpoint.

    records -> decode tasks (test clips, uint8) -> model actors (one per GPU, or per two CPUs)
            -> features streamed back to the driver, sorted by (video, clip)

Decoding runs in Ray tasks and the model in ``map_batches`` actors, so a Kinetics-size subset
streams and a GPU is used where the cluster has one. The weights travel through the object
store (no shared file system needed). An unreadable video is skipped and named. Results are
cached in ``EVAL_DIR/cache/`` under a key of the checkpoint, data and clip settings, so knn,
linear and background decode each subset once.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
import torch.nn.functional as F
from torch import Tensor

from beray import storage
from beray.config import Config
from beray.data.video import VideoReadError
from beray.eval.clips import ClipSpec, eval_clips
from beray.methods.build import build_method, prepare_clips
from beray.models import build_backbone

HEADS = ("pooled", "map", "logits")
RETRIEVAL_POOL = (2, 7, 7)  # Sec. 4.3: adaptive max pooling to C x 2 x 7 x 7


@dataclass
class Features:
    """One row per clip: its feature (or logits), label, video number and clip number."""

    x: Tensor
    labels: Tensor
    video: Tensor
    clip: Tensor
    skipped: dict[str, str] = field(default_factory=dict)  # path -> reason

    def per_video(self) -> tuple[Tensor, Tensor]:
        """(videos, clips, D) and (videos,) labels; every video must have the same number of clips."""
        n_videos = int(self.video.unique().numel())
        return self.x.view(n_videos, -1, self.x.shape[1]), self.labels.view(n_videos, -1)[:, 0]


def head_output(model: torch.nn.Module, head: str, x: Tensor, pool: tuple[int, int, int] = RETRIEVAL_POOL) -> Tensor:
    """``pooled``: v, the spatio-temporal max of f; ``map``: f adaptively max-pooled to ``pool``
    and flattened (Sec. 4.3); ``logits``: a fine-tuned classifier's class scores."""
    if head == "logits":
        return model.logits(x)
    f, v = model(x)
    return v if head == "pooled" else F.adaptive_max_pool3d(f, pool).flatten(1)


class FeatureModel:
    """Ray Data actor: frozen models applied to batches of uint8 clips, model i's outputs in column
    ``feature_i`` (the checkpoints of a pack share each decoded clip)."""

    def __init__(self, models: list[tuple[dict, Any]], head: str, pool: tuple[int, int, int], threads: int,
                 device: str | None = None):
        torch.set_num_threads(threads)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.nets = []
        for config, weights in models:
            cfg = Config.model_validate(config)
            weights = ray.get(weights) if isinstance(weights, ray.ObjectRef) else weights
            net = build_method(cfg) if head == "logits" else build_backbone(cfg.model.backbone, cfg.model.width)
            net.load_state_dict(weights)
            self.nets.append(net.eval().to(self.device))
        self.head, self.pool = head, tuple(pool)
        self.amp = self.device.type == "cuda"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with warnings.catch_warnings():  # Ray hands out read-only arrays; the clips are only read
            warnings.simplefilter("ignore", UserWarning)
            x = prepare_clips(torch.from_numpy(batch.pop("x")), self.device)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            out = [head_output(net, self.head, x, self.pool).float().cpu().numpy() for net in self.nets]
        return {**batch, **{f"feature_{i}": f for i, f in enumerate(out)}}


def decode_clips(batch: dict[str, np.ndarray], specs: list[ClipSpec], timeout_s: float | None, state
                 ) -> dict[str, np.ndarray]:
    """Ray Data ``map_batches`` on records: their test clips (record ``job`` j sampled as ``specs[j]``),
    one row per clip. An unreadable video is named to ``state`` and left out."""
    cpu = time.thread_time()
    rows: dict[str, list] = {"x": [], "job": [], "video": [], "clip": [], "label": []}
    for i in range(len(batch["path"])):
        record = {k: col[i].item() if isinstance(col[i], np.generic) else col[i] for k, col in batch.items()}
        try:
            clips = eval_clips(record, specs[record["job"]], record["index"], timeout_s)
        except VideoReadError as e:
            state.add.remote(e.path, e.reason)
            continue
        n = len(clips)
        rows["x"].extend(clips)
        for k, v in (("job", record["job"]), ("video", record["index"]), ("label", record["label"])):
            rows[k].extend([v] * n)
        rows["clip"].extend(range(n))
    state.add_decode.remote(time.thread_time() - cpu, len(rows["x"]))
    return {k: np.stack(v) if k == "x" else np.asarray(v, dtype=np.int64) for k, v in rows.items()} if rows["x"] else {}


def model_placement(actors: int | None = None, cpus: float = 1.0, gpus: float | None = None) -> dict:
    """``map_batches`` options for the model actors. ``gpus`` None: one actor per GPU of the cluster, or
    without GPUs one per two CPUs (the other CPUs decode); a sweep's trial passes its own share
    (``cpus``, ``gpus``, one actor), so its evaluation never holds more than its training did."""
    res = ray.cluster_resources()
    cluster_gpus = int(res.get("GPU", 0))
    threads = max(1, int(cpus))
    if gpus is None and cluster_gpus:
        return {"num_gpus": 1, "num_cpus": min(cpus, 1.0),
                "compute": ray.data.ActorPoolStrategy(size=actors or cluster_gpus), "threads": threads}
    if gpus:
        return {"num_gpus": gpus, "num_cpus": min(cpus, 1.0), "compute": ray.data.ActorPoolStrategy(size=actors or 1),
                "threads": threads}
    size = actors or (1 if gpus is not None else max(1, int(res.get("CPU", 1)) // 2))
    return {"num_cpus": cpus, "compute": ray.data.ActorPoolStrategy(size=size), "threads": threads}


def extract(models: list[tuple[Config, Any]], head: str, jobs: list[tuple[list[dict], ClipSpec]], *,
            batch_size: int = 32, actors: int | None = None, pool: tuple[int, int, int] = RETRIEVAL_POOL,
            desc: str = "clips", progress: bool = True, actor_cpus: float = 1.0,
            actor_gpus: float | None = None) -> list[list[Features]]:
    """``head`` outputs of every clip of each job's records (rows with path, label, start/end frames),
    clips sampled as the job's spec, for each of the ``models`` (config, weights): one Ray Data pass for
    all jobs and models, each clip decoded once (the first model's data settings decode). One list of
    ``Features`` per model, one per job."""
    from tqdm import tqdm

    from beray import console

    from beray.data.pipeline import RunData
    from beray.runtime import init_ray

    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; allowed: {', '.join(HEADS)}")
    init_ray()
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # ours counts clips, below
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # no per-dataset "execution finished" lines
    state = RunData.remote()  # collects unreadable videos
    place = model_placement(actors, actor_cpus, actor_gpus)
    threads = place.pop("threads")
    rows = [{**r, "index": i, "job": j} for j, (records, _) in enumerate(jobs) for i, r in enumerate(records)]
    specs = [spec for _, spec in jobs]
    per_task = 4
    cfg = models[0][0]
    ds = ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // per_task)))
    ds = ds.map_batches(decode_clips, batch_size=per_task, num_cpus=cfg.data.decode_cpus,
                        fn_kwargs={"specs": specs, "timeout_s": cfg.data.decode_timeout_s, "state": state})
    ds = ds.map_batches(FeatureModel, batch_size=batch_size, **place,
                        fn_constructor_kwargs={"models": [(c.model_dump(mode="json"), w) for c, w in models],
                                               "head": head, "pool": pool, "threads": threads})
    cut = any(spec.sampling == "cut" for spec in specs)  # clips per video known only once decoded
    total = None if cut else sum(len(r) * (s.clips if s.sampling == "uniform" else 1) for r, s in jobs)
    features = [f"feature_{i}" for i in range(len(models))]
    out: dict[str, list[np.ndarray]] = {k: [] for k in [*features, "job", "label", "video", "clip"]}
    with tqdm(total=total, desc=desc, unit="clip", disable=not progress, mininterval=1.0, dynamic_ncols=True,
              file=console.err()) as bar:
        for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for k in out:
                out[k].append(b[k])
            bar.update(len(b["label"]))
    skipped, (seconds, clips) = ray.get([state.all.remote(), state.decoded.remote()])
    _SPENT[0], _SPENT[1] = _SPENT[0] + seconds, _SPENT[1] + clips
    ray.kill(state)
    if not out["label"]:
        raise VideoReadError(rows[0]["path"] if rows else "?", f"no readable video among {len(rows)}")
    cat = {k: torch.from_numpy(np.concatenate(v)) for k, v in out.items()}
    results: list[list[Features]] = [[] for _ in models]
    for j, (records, _) in enumerate(jobs):
        mine = (cat["job"] == j).nonzero().flatten()
        if not mine.numel():
            raise VideoReadError(records[0]["path"], f"no readable video among the {len(records)} of this subset")
        order = mine[torch.from_numpy(np.lexsort((cat["clip"][mine].numpy(), cat["video"][mine].numpy())))]
        paths = {r["path"] for r in records}
        for feature, per_model in zip(features, results):
            per_model.append(Features(cat[feature][order], cat["label"][order], cat["video"][order],
                                      cat["clip"][order], {p: why for p, why in skipped.items() if p in paths}))
    return results


def decode_spent() -> tuple[float, int]:
    """The decode tasks' CPU-seconds and clips of every ``extract`` this process ran (``bench sweep --pack``)."""
    return _SPENT[0], _SPENT[1]


_SPENT = [0.0, 0]


def cache_key(tag: str, cfg: Config, subset: str, head: str, spec: ClipSpec, pool: tuple[int, int, int]) -> str:
    d = cfg.data
    what = {"checkpoint": tag, "dataset": d.dataset, "root": d.root, "split": d.split, "subset": subset,
            "head": head, "spec": asdict(spec), "pool": list(pool) if head == "map" else None}
    digest = hashlib.sha1(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]
    return f"{d.dataset}-split{d.split}-{subset}-{head}-{spec.sampling}-{digest}"


def load_cached(cache_dir: str | Path, key: str) -> Features | None:
    """The Features kept under ``key`` (read back with ``weights_only``), or None."""
    try:
        return Features(**torch.load(io.BytesIO(storage.read_bytes(storage.join(str(cache_dir), f"{key}.pt"))),
                                     weights_only=True))
    except Exception:  # none yet (FileNotFoundError), or a file cut short by a crash: compute again
        return None


def store_cached(cache_dir: str | Path, key: str, feats: Features) -> None:
    buffer = io.BytesIO()
    torch.save(asdict(feats), buffer)
    storage.write_bytes(storage.join(str(cache_dir), f"{key}.pt"), buffer.getvalue())  # never half a file
