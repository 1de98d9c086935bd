"""Distracting videos: Background Erasing (Eq. 1) and the other noise types of Table 4.

Every noise type has one signature, ``noise(x_v, gamma, generator=None, layout="BCTHW")
-> x_d``, and works on a batch of clips, vectorised over videos and frames, on
any device, for float or uint8 clips (uint8 is computed in float32 and rounded
back, within half a grey level). ``layout`` names the clip dimensions: "BCTHW"
(what models take) or "BTCHW" (what the data pipeline carries). Random draws
are made on the CPU ``generator`` (tiny tensors) and moved to the clips' device,
so a seed gives the same draws on CPU and GPU.

A new noise type is one function and one line in ``NOISES``.

A training batch gets its x_d on the Train worker, after it is on the worker's device
(``add_noise``): every model that reads the same decoded batch applies its own noise to
the same x_v, with draws that depend only on (seed, epoch, the batch's videos, noise type).
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from beray.config import BEConfig

LAYOUTS = ("BCTHW", "BTCHW")


def _btchw(x: Tensor, layout: str) -> Tensor:
    """A (B, T, C, H, W) view of ``x``."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return x.transpose(1, 2) if layout == "BCTHW" else x


def _back(x: Tensor, layout: str) -> Tensor:
    """Undo ``_btchw``."""
    return x.transpose(1, 2) if layout == "BCTHW" else x


def _rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    return torch.rand(shape, generator=generator).to(device, non_blocking=True)


def _randint(high: int, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    return torch.randint(high, shape, generator=generator).to(device, non_blocking=True)


def _lerp(x: Tensor, y: Tensor, lam: Tensor) -> Tensor:
    """(1 - lam) * x + lam * y (``y`` broadcastable: a static frame is never expanded to the
    clip's size), with uint8 clips computed in float32 and rounded back."""
    if x.dtype == torch.uint8:
        return x.float().lerp_(y.float(), lam).round_().to(torch.uint8)
    return torch.lerp(x, y.to(x.dtype), lam.to(x.dtype))


def _check(gamma: float) -> None:
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must lie in [0, 1], got {gamma}")


def _other(b: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """For each video, the index of another video of the batch (itself only when B = 1)."""
    shift = int(torch.randint(1, b, (1,), generator=generator)) if b > 1 else 0
    return (torch.arange(b) + shift).remainder(b).to(device)


def sample_lam(b: int, gamma: float, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """lam ~ U[0, gamma] per video, shaped (B, 1, 1, 1, 1) to broadcast over (B, T, C, H, W)."""
    _check(gamma)
    return (gamma * _rand((b,), generator, device)).view(b, 1, 1, 1, 1)


def add_static_frame(x_v: Tensor, static: Tensor, lam: Tensor) -> Tensor:
    """Eq. (1): x_d[j] = (1 - lam) * x_v[j] + lam * static, for every frame j.

    ``x_v`` is (B, T, C, H, W), ``static`` (B, 1, C, H, W), ``lam`` (B, 1, 1, 1, 1).
    Since ``static`` is constant in time, d x_d / dt = (1 - lam) d x_v / dt (Eq. 2).
    """
    return _lerp(x_v, static, lam)


# -- the noise types (paper Table 4, plus FAME) ------------------------------------------


def _add_a_frame(x_v: Tensor, gamma: float, generator: torch.Generator | None, layout: str,
                 from_other: bool) -> Tensor:
    """Eq. (1) with frame k ~ U{0..T-1} of the video itself, or of another video of the batch."""
    x = _btchw(x_v, layout)
    b, t = x.shape[:2]
    lam = sample_lam(b, gamma, generator, x.device)
    k = _randint(t, (b,), generator, x.device)
    source = _other(b, generator, x.device) if from_other else torch.arange(b, device=x.device)
    return _back(add_static_frame(x, x[source, k].unsqueeze(1), lam), layout)


def intra_frame(x_v: Tensor, gamma: float = 0.3, generator: torch.Generator | None = None,
                layout: str = "BCTHW") -> Tensor:
    """Background Erasing, Eq. (1): add one of the clip's own frames, k ~ U{0..T-1}, lam ~ U[0, gamma]."""
    return _add_a_frame(x_v, gamma, generator, layout, from_other=False)


def inter_frame(x_v: Tensor, gamma: float = 0.3, generator: torch.Generator | None = None,
                layout: str = "BCTHW") -> Tensor:
    """Table 4 (d): Eq. (1) with the static frame taken from another video of the batch."""
    return _add_a_frame(x_v, gamma, generator, layout, from_other=True)


def gaussian(x_v: Tensor, gamma: float = 0.3, generator: torch.Generator | None = None,
             layout: str = "BCTHW") -> Tensor:
    """Table 4 (a): Eq. (1) with one white-noise image, identical for every frame, as the static frame.

    The noise image has the clip's own mean and standard deviation, so lam means
    the same as for BE.
    """
    x = _btchw(x_v, layout)
    b, _, c, h, w = x.shape
    lam = sample_lam(b, gamma, generator, x.device)
    xf = x.float()
    mean, std = xf.mean(dim=(1, 2, 3, 4), keepdim=True), xf.std(dim=(1, 2, 3, 4), keepdim=True)
    noise = torch.randn((b, 1, c, h, w), generator=generator).to(x.device) * std + mean
    if x.dtype == torch.uint8:
        noise = noise.clamp_(0, 255)
    return _back(add_static_frame(x, noise, lam), layout)


def mixup(x_v: Tensor, gamma: float = 0.3, generator: torch.Generator | None = None,
          layout: str = "BCTHW") -> Tensor:
    """Table 4 (b): video mixup, frame-by-frame interpolation with another video of the batch."""
    x = _btchw(x_v, layout)
    b = x.shape[0]
    lam = sample_lam(b, gamma, generator, x.device)
    return _back(_lerp(x, x[_other(b, generator, x.device)], lam), layout)


def cutmix(x_v: Tensor, gamma: float = 0.3, generator: torch.Generator | None = None,
           layout: str = "BCTHW") -> Tensor:
    """Table 4 (c): video CutMix, one box of every frame replaced by the same box of
    another video's frames. The box covers a fraction lam ~ U[0, gamma] of the frame."""
    x = _btchw(x_v, layout)
    b, _, _, h, w = x.shape
    lam = sample_lam(b, gamma, generator, x.device).view(b)
    side = lam.sqrt()
    bh, bw = (side * h).round().long(), (side * w).round().long()
    y0 = (_rand((b,), generator, x.device) * (h - bh + 1)).long()
    x0 = (_rand((b,), generator, x.device) * (w - bw + 1)).long()
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    box = ((rows >= y0.view(b, 1, 1)) & (rows < (y0 + bh).view(b, 1, 1))
           & (cols >= x0.view(b, 1, 1)) & (cols < (x0 + bw).view(b, 1, 1)))
    return _back(torch.where(box.view(b, 1, 1, h, w), x[_other(b, generator, x.device)], x), layout)


def none(x_v: Tensor, gamma: float = 0.3, generator: torch.Generator | None = None,
         layout: str = "BCTHW") -> Tensor:
    """Table 4 baseline: no noise, x_d = x_v."""
    _check(gamma)
    return x_v


def fame(x_v: Tensor, gamma: float = 0.3, generator: torch.Generator | None = None, layout: str = "BCTHW",
         fg_ratio: float = 0.3) -> Tensor:
    """Foreground-background merging (FAME, Ding et al., CVPR 2022), beyond the paper.

    The foreground mask of each clip is its ``fg_ratio`` most moving pixels
    (largest per-pixel temporal standard deviation, averaged over channels); the
    foreground is pasted onto the background of another video of the batch, its
    temporal median. ``gamma`` is not used (the mask is hard).
    """
    _check(gamma)
    if not 0.0 < fg_ratio <= 1.0:
        raise ValueError(f"fg_ratio must lie in (0, 1], got {fg_ratio}")
    x = _btchw(x_v, layout)
    b, _, _, h, w = x.shape
    motion = x.float().std(dim=1).mean(dim=1).view(b, h * w)  # (B, H*W)
    keep = max(1, round(fg_ratio * h * w))
    threshold = motion.kthvalue(h * w - keep + 1, dim=1, keepdim=True).values
    mask = ((motion >= threshold) & (motion > 0)).view(b, 1, 1, h, w)  # a pixel that never moves is background
    background = x.median(dim=1, keepdim=True).values[_other(b, generator, x.device)]
    return _back(torch.where(mask, x, background.expand_as(x)), layout)


NoiseFn = Callable[..., Tensor]
NOISES: dict[str, NoiseFn] = {
    "none": none,
    "gaussian": gaussian,
    "mixup": mixup,
    "cutmix": cutmix,
    "inter_frame": inter_frame,
    "intra_frame": intra_frame,  # Background Erasing, the default
    "fame": fame,
}


def get_noise(name: str) -> NoiseFn:
    """The noise function called ``name`` (ValueError naming the choices otherwise)."""
    try:
        return NOISES[name]
    except KeyError:
        raise ValueError(f"unknown noise type {name!r}; choose one of: {', '.join(NOISES)}") from None


def distract(x_v: Tensor, noise: str = "intra_frame", gamma: float = 0.3, generator: torch.Generator | None = None,
             layout: str = "BCTHW", **options) -> Tensor:
    """x_d: the distracting version of the batch ``x_v`` under noise type ``noise``."""
    return get_noise(noise)(x_v, gamma, generator, layout, **options)


def noise_generator(seed: int, epoch: int, noise: str, indices: Tensor) -> torch.Generator:
    """The CPU generator of one batch's noise draws, seeded from (run seed, epoch, noise type, the
    batch's video indices) and from nothing global: the same batch gets the same draws whatever else
    runs in the process (another model trained on the same stream, a resumed run)."""
    key = [int(seed), int(epoch), 1, zlib.crc32(noise.encode()), *indices.cpu().tolist()]
    return torch.Generator().manual_seed(int(np.random.default_rng(key).integers(2**62)))


def add_noise(batch: dict[str, Tensor], be: BEConfig, seed: int, epoch: int) -> dict[str, Tensor]:
    """A new batch with x_d = noise(x_v) under ``be`` (Eq. 1 for intra_frame) in place of x_v, on x_v's device, for
    uint8 clips (B, T, C, H, W) or (B, clips, T, C, H, W); ``batch['index']`` names its videos. A batch
    without x_v (a method that asked for no distracting view) comes back unchanged."""
    if "x_v" not in batch:
        return batch
    out = dict(batch)
    x_v = out.pop("x_v")
    shape = x_v.shape
    flat = x_v.reshape(-1, *shape[-4:])
    options = {"fg_ratio": be.fg_ratio} if be.noise == "fame" else {}
    g = noise_generator(seed, epoch, be.noise, torch.as_tensor(batch["index"]))
    out["x_d"] = distract(flat, be.noise, be.gamma, g, layout="BTCHW", **options).reshape(shape)
    return out
