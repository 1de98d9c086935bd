"""BackgroundBias-Synth: real videos in which the background predicts the class, on purpose.

Each class is a motion of a foreground "T" over a static textured background:
moving left, right, up, down, rotating clockwise or counter-clockwise. Each
class has its own background family (stripes, checks, rings, dots, waves,
blobs). In ``train`` and ``test_biased`` a video's background comes from its
class's own family with probability ``rho`` and from another family otherwise;
in ``test_swapped`` the family is drawn independently of the class, and so it is
in ``train_unbiased``, a labelled training split for probes that must not profit
from the background. A model that learned motion
scores the same on both test splits; one that learned the background drops
towards chance on ``test_swapped``. That gap is what Background Erasing is meant
to close, measurable in minutes on a CPU.

Knobs for the *instance* shortcut (a self-supervised model tells videos apart by
whatever identifies one; with a background of its own per video, that is the
background): ``background_pool`` draws each video's background from N textures
per family shared by every video and split, ``object_pool`` draws the T's size
and colour from N appearances, and ``camera_jitter`` lets the background drift up
to that many pixels from its place, one pixel a frame at most (a hand-held
camera), so that no frame of a video is its exact background. 0 turns each off.

The same config and seed give the same bytes, whatever the number of workers.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from beray.data.encode import write_video

CLASSES = ("left", "right", "up", "down", "clockwise", "counterclockwise")
FAMILIES = ("stripes", "checks", "rings", "dots", "waves", "blobs")  # family i is class i's own
SPLITS = ("train", "test_biased", "test_swapped", "train_unbiased")  # a split's seeds are its index
UNBIASED = ("test_swapped", "train_unbiased")  # background family independent of the class
VERSION = 2  # bump when the rendering changes, so cached copies are regenerated


@dataclass(frozen=True)
class SynthConfig:
    size: int = 64  # frame height and width
    frames: int = 32  # frames per video
    fps: int = 25
    train_per_class: int = 40
    test_per_class: int = 10  # per class, in each of test_biased and test_swapped
    unbiased_per_class: int = 40  # per class in train_unbiased
    rho: float = 0.9  # P(background from the class's own family) in train and test_biased
    seed: int = 0
    format: str = "avi"  # avi (MPEG-4 part 2) or mp4 (H.264)
    background_pool: int = 0  # textures per family shared by all videos (0: one of its own per video)
    object_pool: int = 0  # T appearances (size, colour) shared by all videos (0: one of its own per video)
    camera_jitter: int = 0  # the background drifts up to this many pixels, 1 a frame (0: a static camera)

    def __post_init__(self):
        if not 0.0 <= self.rho <= 1.0:
            raise ValueError(f"rho must lie in [0, 1], got {self.rho}")
        if self.size < 32 or self.size % 2:
            raise ValueError(f"size must be an even number >= 32, got {self.size}")
        if self.frames < 2 or self.fps < 1 or min(self.train_per_class, self.test_per_class,
                                                   self.unbiased_per_class) < 1:
            raise ValueError("frames must be >= 2; fps and the videos per class >= 1")
        if min(self.background_pool, self.object_pool) < 0:
            raise ValueError("background_pool and object_pool must be >= 0 (0: one per video)")
        if not 0 <= self.camera_jitter <= self.size // 8:
            raise ValueError(f"camera_jitter must lie in [0, size / 8 = {self.size // 8}] pixels, got {self.camera_jitter}")
        if self.format not in ("avi", "mp4"):
            raise ValueError(f"format must be avi or mp4, got {self.format!r}")

    def per_class(self, split: str) -> int:
        return {"train": self.train_per_class, "train_unbiased": self.unbiased_per_class}.get(split, self.test_per_class)

    def digest(self) -> str:
        blob = json.dumps({"version": VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class VideoSpec:
    split: str
    index: int
    label: int
    family: int
    background_id: int = -1  # index in the family's pool; -1: a texture of its own
    object_id: int = -1  # index in the appearance pool; -1: an appearance of its own

    @property
    def name(self) -> str:
        return f"{self.split}_{CLASSES[self.label]}_{self.index:04d}"


def assign_families(labels: np.ndarray, rho: float, rng: np.random.Generator, biased: bool) -> np.ndarray:
    """Background family per video: the class's own with probability ``rho`` (else
    uniform over the others) when ``biased``; uniform and independent of the class otherwise."""
    c = len(FAMILIES)
    if not biased:
        return rng.integers(0, c, len(labels))
    own = rng.random(len(labels)) < rho
    other = (labels + rng.integers(1, c, len(labels))) % c
    return np.where(own, labels, other)


def plan(config: SynthConfig) -> list[VideoSpec]:
    """Every video of the dataset, in a fixed order."""
    specs = []
    for s, split in enumerate(SPLITS):
        labels = np.repeat(np.arange(len(CLASSES)), config.per_class(split))
        rng = np.random.default_rng([config.seed, s])
        families = assign_families(labels, config.rho, rng, biased=split not in UNBIASED)
        pools = np.random.default_rng([config.seed, s, 1])  # its own stream: the pools leave the families' draws as they are
        bg_ids = pools.integers(0, config.background_pool, len(labels)) if config.background_pool else -np.ones_like(labels)
        obj_ids = pools.integers(0, config.object_pool, len(labels)) if config.object_pool else -np.ones_like(labels)
        specs += [VideoSpec(split, i, int(lab), int(f), int(b), int(o))
                  for i, (lab, f, b, o) in enumerate(zip(labels, families, bg_ids, obj_ids))]
    return specs


# -- rendering -------------------------------------------------------------------


def background(family: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A static (size, size, 3) uint8 texture of ``family``; colours are independent of it."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    name = FAMILIES[family]
    if name == "stripes":
        theta, freq = rng.uniform(0, np.pi), rng.uniform(3, 6)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (x * np.cos(theta) + y * np.sin(theta)) + rng.uniform(0, 6.3))
    elif name == "checks":
        cells = rng.integers(3, 7)
        ox, oy = rng.uniform(0, 1, 2)
        t = ((np.floor(x * cells + ox) + np.floor(y * cells + oy)) % 2).astype(np.float32)
    elif name == "rings":
        cx, cy = rng.uniform(0.2, 0.8, 2)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(4, 8) * np.hypot(x - cx, y - cy))
    elif name == "dots":
        cells = rng.integers(4, 7)
        fx, fy = (x * cells + rng.uniform()) % 1 - 0.5, (y * cells + rng.uniform()) % 1 - 0.5
        t = (np.hypot(fx, fy) < rng.uniform(0.2, 0.35)).astype(np.float32)
    elif name == "waves":
        f1, f2 = rng.uniform(1, 2.5, 2)
        t = 0.5 + 0.25 * (np.sin(2 * np.pi * f1 * x + rng.uniform(0, 6.3)) + np.sin(2 * np.pi * f2 * y + rng.uniform(0, 6.3)))
    else:  # blobs: smooth random noise, upsampled from a coarse grid
        coarse = rng.uniform(0, 1, (5, 5)).astype(np.float32)
        t = np.kron(coarse, np.ones((size // 4 + 1, size // 4 + 1), np.float32))[:size, :size]
        t = (t + np.roll(t, size // 8, 0) + np.roll(t, size // 8, 1) + np.roll(t, size // 8, (0, 1))) / 4
    c1, c2 = rng.uniform(30, 225, (2, 3)).astype(np.float32)
    return (c1 + t[..., None] * (c2 - c1)).astype(np.uint8)


def foreground_masks(label: int, size: int, frames: int, rng: np.random.Generator,
                     arm_frac: float | None = None) -> np.ndarray:
    """(frames, size, size) bool masks of a "T" moving as class ``label`` says; ``arm_frac`` (the T's
    half-length over ``size``) is drawn from ``rng`` unless given."""
    arm = size * (rng.uniform(0.12, 0.18) if arm_frac is None else arm_frac)  # half-length of the T's bar and stem
    width = arm * 0.35
    t = np.arange(frames, dtype=np.float32)[:, None, None]
    name = CLASSES[label]
    if name in ("left", "right", "up", "down"):
        travel = size * rng.uniform(0.35, 0.55)  # distance covered over the clip
        step = travel / (frames - 1) * (1 if name in ("right", "down") else -1)
        lo, hi = arm + 1 + (travel if step < 0 else 0), size - arm - 1 - (travel if step > 0 else 0)
        along, across = rng.uniform(lo, hi), rng.uniform(arm + 1, size - arm - 1)
        pos = along + step * t
        cx, cy = (pos, across) if name in ("left", "right") else (across, pos)
        angle = np.full_like(t, rng.uniform(0, 2 * np.pi))
    else:
        cx, cy = rng.uniform(size * 0.35, size * 0.65, 2)
        omega = np.deg2rad(rng.uniform(8, 14)) * (1 if name == "clockwise" else -1)  # image y points down
        angle = rng.uniform(0, 2 * np.pi) + omega * t
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    dx, dy = x[None] - cx, y[None] - cy
    u = dx * np.cos(angle) + dy * np.sin(angle)  # the T's own axes
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    bar = (np.abs(u) <= arm) & (v >= -arm) & (v <= -arm + 2 * width)
    stem = (np.abs(u) <= width) & (v >= -arm) & (v <= arm)
    return bar | stem


def camera_path(frames: int, jitter: int, rng: np.random.Generator) -> np.ndarray:
    """(frames, 2) integer (dy, dx) background offsets in [0, 2 * jitter]: a random walk of unit steps
    around the centre, reflected at the edges, so the camera drifts and shakes but never jumps."""
    pos, out = np.array([jitter, jitter]), np.empty((frames, 2), np.int64)
    for t in range(frames):
        out[t] = pos
        pos = pos + rng.integers(-1, 2, 2)
        pos = np.where(pos < 0, -pos, np.where(pos > 2 * jitter, 4 * jitter - pos, pos))
    return out


def render(spec: VideoSpec, config: SynthConfig) -> np.ndarray:
    """The (frames, size, size, 3) uint8 video of ``spec``."""
    rng = np.random.default_rng([config.seed, SPLITS.index(spec.split), spec.index, 7])
    size, j = config.size, config.camera_jitter
    # A pooled texture is drawn from (seed, family, id) alone: every video with that id shares it, in every split.
    bg_rng = rng if spec.background_id < 0 else np.random.default_rng([config.seed, 101, spec.family, spec.background_id])
    bg = background(spec.family, size + 2 * j, bg_rng)
    obj_rng = None if spec.object_id < 0 else np.random.default_rng([config.seed, 202, spec.object_id])
    masks = foreground_masks(spec.label, size, config.frames, rng, None if obj_rng is None else obj_rng.uniform(0.12, 0.18))
    colour = (rng if obj_rng is None else obj_rng).uniform(0, 255, 3)
    colour = np.where(bg.mean((0, 1)) > 127, colour * 0.3, 255 - (255 - colour) * 0.3).astype(np.uint8)  # contrast
    if j:
        offsets = camera_path(config.frames, j, np.random.default_rng([config.seed, SPLITS.index(spec.split), spec.index, 303]))
        video = np.stack([bg[dy:dy + size, dx:dx + size] for dy, dx in offsets])
    else:
        video = np.repeat(bg[None], config.frames, axis=0)
    video[masks] = colour
    return video


def _write_one(args: tuple[VideoSpec, SynthConfig, str]) -> None:
    spec, config, path = args
    write_video(path, render(spec, config), fps=config.fps, gop=12, bit_rate=4_000_000)


# -- the dataset on disk -----------------------------------------------------------


def generate(out_dir: str | Path, config: SynthConfig = SynthConfig(), workers: int | None = None,
             progress: bool = True) -> Path:
    """Write BackgroundBias-Synth to ``out_dir``: videos, one manifest CSV per split,
    ``classes.txt``, ``synth.json`` (the config) and ``preview.png``. Returns ``out_dir``."""
    from tqdm import tqdm

    from beray import console

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not (out / "synth.json").exists():
        raise FileExistsError(f"{out} is not empty and holds no BackgroundBias-Synth; choose a new folder")
    specs = plan(config)
    jobs = []
    for spec in specs:
        rel = Path(spec.split) / CLASSES[spec.label] / f"{spec.name}.{config.format}"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        jobs.append((spec, config, str(out / rel)))
    workers = workers or min(os.cpu_count() or 1, 8)
    bar = tqdm(total=len(jobs), desc="BackgroundBias-Synth", unit="video", disable=not progress,
               file=console.err())
    if workers == 1:
        for job in jobs:
            _write_one(job)
            bar.update()
    else:
        with ProcessPoolExecutor(workers) as pool:
            for _ in pool.map(_write_one, jobs, chunksize=8):
                bar.update()
    bar.close()
    for split in SPLITS:
        with open(out / f"{split}.csv", "w", newline="") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(["path", "label", "class_name", "background", "background_id"])
            for spec, _, path in jobs:
                if spec.split == split:
                    w.writerow([os.path.relpath(path, out), spec.label, CLASSES[spec.label], FAMILIES[spec.family],
                                spec.background_id])
    (out / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    (out / "synth.json").write_text(json.dumps({"version": VERSION, **asdict(config)}, indent=2) + "\n")
    write_preview(out, config)
    return out


def own_family_fraction(root: str | Path) -> dict[str, float]:
    """Per split, the fraction of videos whose background is their class's own family."""
    out = {}
    for split in SPLITS:
        with open(Path(root) / f"{split}.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        out[split] = sum(FAMILIES.index(r["background"]) == int(r["label"]) for r in rows) / max(len(rows), 1)
    return out


def write_preview(root: str | Path, config: SynthConfig) -> Path:
    """``preview.png``: one training video per class, class and background family named."""
    from beray.viz import contact_sheet

    specs = [next(s for s in plan(config) if s.split == "train" and s.label == c) for c in range(len(CLASSES))]
    titles = [f"{CLASSES[s.label]}\n({FAMILIES[s.family]})" for s in specs]
    return contact_sheet([render(s, config) for s in specs], titles, Path(root) / "preview.png")


def synth_config(options: dict | None = None) -> SynthConfig:
    """A SynthConfig from a mapping of its fields (a run config's ``data.synth``); ValueError naming
    an unknown option or a bad value."""
    options = dict(options or {})
    known = [f.name for f in fields(SynthConfig)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"unknown BackgroundBias-Synth option {unknown[0]!r}; allowed: {', '.join(known)}")
    defaults = SynthConfig()
    for k, v in options.items():  # YAML and --set give ints for floats and the like; nothing else converts
        want = type(getattr(defaults, k))
        if want is float and isinstance(v, int) and not isinstance(v, bool):
            options[k] = float(v)
        elif not isinstance(v, want) or isinstance(v, bool):
            raise ValueError(f"BackgroundBias-Synth option {k} must be {want.__name__}, got {v!r}")
    return SynthConfig(**options)


def cache_dir() -> Path:
    """Where beray keeps generated data: ``$BERAY_CACHE`` or ``~/.cache/beray``."""
    return Path(os.environ.get("BERAY_CACHE", Path.home() / ".cache" / "beray")).expanduser()


def ensure_synth(config: SynthConfig = SynthConfig(), progress: bool = True) -> Path:
    """The cached copy of BackgroundBias-Synth for ``config``, generated on first use.

    Generation goes to a temporary folder renamed into place, so concurrent
    callers (several Ray workers) never see half a dataset.
    """
    root = cache_dir() / f"synth-{config.digest()}"
    if (root / "synth.json").exists():
        return root
    tmp = root.parent / f".{root.name}.{uuid.uuid4().hex[:8]}"
    generate(tmp, config, progress=progress)
    try:
        os.rename(tmp, root)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return root
