"""Background Erasing speed: vectorised Eq. (1) against a per-video, per-frame loop and a copy.

BE reads a clip and writes one of the same size: it is memory-bound, so the
bound is a plain copy of a tensor of that size on the same device (``x.clone()``).
The loop is how the paper's published code applies it (one video, one frame at
a time). The uint8 row is the path used inside the data pipeline (clips stay
uint8, layout (B, T, C, H, W)).
"""

from __future__ import annotations

import time

import torch

from beray.augment.be import distract


def be_loop(x_v: torch.Tensor, gamma: float, generator: torch.Generator) -> torch.Tensor:
    """Eq. (1) one video and one frame at a time, (B, C, T, H, W)."""
    x_d = torch.empty_like(x_v)
    for b in range(x_v.shape[0]):
        lam = gamma * float(torch.rand(1, generator=generator))
        k = int(torch.randint(x_v.shape[2], (1,), generator=generator))
        static = x_v[b, :, k]
        for j in range(x_v.shape[2]):
            x_d[b, :, j] = (1 - lam) * x_v[b, :, j] + lam * static
    return x_d


def _ms(fn, device: torch.device, repeats: int) -> float:
    """Median milliseconds of ``fn()`` after two warm-up calls."""
    times = []
    for i in range(repeats + 2):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 2:
            times.append((time.perf_counter() - t0) * 1000)
    return sorted(times)[len(times) // 2]


def run(device: str | None = None, shape: tuple[int, ...] = (16, 3, 16, 112, 112), gamma: float = 0.3,
        repeats: int = 10) -> dict:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=g).to(dev)
    x_u8 = (x * 255).to(torch.uint8).transpose(1, 2).contiguous()  # (B, T, C, H, W), as the pipeline carries it
    res = {
        "vectorised_ms": _ms(lambda: distract(x, "intra_frame", gamma, g), dev, repeats),
        "loop_ms": _ms(lambda: be_loop(x, gamma, g), dev, repeats),
        "copy_ms": _ms(lambda: x.clone(), dev, repeats),
        "uint8_ms": _ms(lambda: distract(x_u8, "intra_frame", gamma, g, layout="BTCHW"), dev, repeats),
        "uint8_copy_ms": _ms(lambda: x_u8.clone(), dev, repeats),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "shape": list(shape),
    }
    res["vectorised_over_copy"] = res["vectorised_ms"] / res["copy_ms"]
    res["loop_over_vectorised"] = res["loop_ms"] / res["vectorised_ms"]
    return res


def print_table(res: dict) -> None:
    print(f"BE on a float32 batch {' x '.join(map(str, res['shape']))} on {res['device']} (median ms)\n")
    rows = [("vectorised (Eq. 1)", res["vectorised_ms"]), ("per-video, per-frame loop", res["loop_ms"]),
            ("copy, x.clone() (the bound)", res["copy_ms"]), ("uint8 pipeline path", res["uint8_ms"]),
            ("uint8 copy", res["uint8_copy_ms"])]
    for name, ms in rows:
        print(f"  {name:<30} {ms:>9.2f} ms")
    print(f"\n  vectorised / copy: {res['vectorised_over_copy']:.2f}x   (target <= 1.5x)")
    print(f"  loop / vectorised: {res['loop_over_vectorised']:.1f}x   (target on a CUDA GPU >= 20x)")
