"""``cam``: Sec. 4.7's activation maps. The last feature map averaged over its channels, resized
onto the clip and overlaid: where the frozen backbone responds (the moving object, or the scene?)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from beray import storage
from beray.eval.clips import eval_clips
from beray.eval.context import EvalContext
from beray.eval.report import Report
from beray.eval.source import backbone_of
from beray.methods.build import prepare_clips

MIN_SIDE = 96  # small clips are enlarged (nearest neighbour) so the picture can be read


def activation_maps(backbone: torch.nn.Module, x: Tensor) -> Tensor:
    """(B, T, H, W) in [0, 1]: f's channel mean, trilinearly resized to x (B, 3, T, H, W), min-max per video."""
    with torch.inference_mode():
        m = backbone.features(x).float().mean(dim=1, keepdim=True)
        m = F.interpolate(m, size=x.shape[2:], mode="trilinear", align_corners=False)[:, 0]
    lo = m.flatten(1).min(1).values.view(-1, 1, 1, 1)
    hi = m.flatten(1).max(1).values.view(-1, 1, 1, 1)
    return (m - lo) / (hi - lo).clamp_min(1e-8)


def overlay(clip: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """uint8 (T, H, W, 3): the clip (T, 3, H, W) blended with the jet colouring of ``cam`` (T, H, W)."""
    from matplotlib import colormaps

    frames = clip.transpose(0, 2, 3, 1).astype(np.float32)
    heat = colormaps["jet"](cam)[..., :3] * 255
    return ((1 - alpha) * frames + alpha * heat).round().clip(0, 255).astype(np.uint8)


def _enlarge(frames: np.ndarray) -> np.ndarray:
    k = max(1, -(-MIN_SIDE // frames.shape[1]))
    return frames.repeat(k, axis=1).repeat(k, axis=2)


def cam(ctx: EvalContext, videos: int = 4) -> Report:
    backbone, _ = backbone_of(ctx.source)
    backbone.eval()
    subset = ctx.test_subsets()[-1]  # BackgroundBias-Synth: test_swapped, where the background misleads
    records = ctx.records(subset)
    picks = np.linspace(0, len(records) - 1, min(videos, len(records))).round().astype(int)
    spec = ctx.spec("centre")
    clips = np.stack([eval_clips(records[i], spec, int(i))[0] for i in picks])  # (N, T, 3, H, W)
    maps = activation_maps(backbone, prepare_clips(torch.from_numpy(clips), torch.device("cpu"))).cpu().numpy()
    names = ctx.index.classes
    shown, titles, rows = [], [], []
    for n, (i, clip, m) in enumerate(zip(picks, clips, maps)):
        r = records[i]
        cls = names[r["label"]] if 0 <= r["label"] < len(names) else str(r["label"])
        shown += [_enlarge(clip.transpose(0, 2, 3, 1)), _enlarge(overlay(clip, m))]
        titles += [f"{n + 1}: {cls}", "activation"]
        rows.append([n + 1, r["video_id"], cls, float(m.mean())])
    from PIL import Image

    from beray.viz import contact_sheet

    stem = ctx.stem("cam")
    png, gif = (storage.join(ctx.source.eval_dir, f"{stem}.{ext}") for ext in ("png", "gif"))
    with storage.writing(png) as local:
        contact_sheet(shown, titles, local, frames=min(8, clips.shape[1]))
    # GIF: every video's clip above its map, side by side, frame by frame
    columns = [np.concatenate(shown[j:j + 2], axis=1) for j in range(0, len(shown), 2)]
    frames = [Image.fromarray(np.concatenate([c[t] for c in columns], axis=1)) for t in range(clips.shape[1])]
    with storage.writing(gif) as local:
        frames[0].save(local, save_all=True, append_images=frames[1:], duration=200, loop=0)
    data = {"dataset": ctx.cfg.data.dataset, "split": ctx.cfg.data.split, "subset": subset,
            "checkpoint": str(ctx.source.path), "model": ctx.source.describe(),
            "videos": [{"video_id": r[1], "class": r[2], "mean_activation": r[3]} for r in rows]}
    rep = Report("cam", f"activation maps (Sec. 4.7), {ctx.cfg.data.dataset} {subset}",
                 ["#", "video", "class", "mean activation"], rows, data,
                 ["the channel mean of the last feature map, resized onto the clip (jet: red is high)"])
    rep.files += [str(png), str(gif)]
    return rep
