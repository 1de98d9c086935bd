"""``static-bias``: Sec. 4.5 / Fig. 4. Which classes does a method (e.g. MoCo+BE) improve over a
baseline (MoCo), and are they the ones that a single static frame cannot tell apart?

Per class: the baseline's top-1 on static videos (one frame repeated T times), and the
method's relative top-1 improvement over the baseline on the test videos (10-clip average).
Their Pearson rho and p-value; the paper finds rho = -0.48 (p = 0.0004) on HMDB51.
The paper measures static accuracy with a model trained on static videos; here the baseline's
fine-tuned classifier is the probe, so no third model needs training.
"""

from __future__ import annotations

import math
import time

import torch

from beray import storage
from beray.eval.context import EvalContext
from beray.eval.metrics import clip_average, pearson, per_class_accuracy
from beray.eval.report import Report


def _accuracy(ctx: EvalContext, feats) -> torch.Tensor:
    logits, labels = feats.per_video()
    return per_class_accuracy(clip_average(logits), labels, ctx.num_classes)


def relative_improvement(acc: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
    """Per class, 100 * (acc - baseline) / baseline; NaN where the baseline scores 0 (undefined)."""
    return torch.where(baseline > 0, 100 * (acc - baseline) / baseline, torch.full_like(acc, float("nan")))


def static_bias(ctx: EvalContext, baseline: EvalContext, clips: int = 10) -> Report:
    t0 = time.perf_counter()
    subset = ctx.test_subsets()[0]
    acc = _accuracy(ctx, ctx.features(subset, "logits", "uniform", clips))
    base, base_static = baseline.features_of([(subset, "uniform", clips), (subset, "static", 1)], "logits")
    acc_base, static = _accuracy(baseline, base), _accuracy(baseline, base_static)
    rel = relative_improvement(acc, acc_base)
    ok = ~(rel.isnan() | static.isnan())
    rho, p = pearson(static[ok], rel[ok]) if int(ok.sum()) >= 3 else (float("nan"), float("nan"))
    names = ctx.index.classes or [str(c) for c in range(ctx.num_classes)]
    png = storage.join(ctx.source.eval_dir, f"{ctx.stem('static-bias')}.png")
    with storage.writing(png) as local:
        scatter(static[ok], rel[ok], [n for n, k in zip(names, ok.tolist()) if k], rho, p, local)
    rows = [[n, static[c].item(), acc_base[c].item(), acc[c].item(), rel[c].item()] for c, n in enumerate(names)]
    per_class = {n: {"static": r[1], "baseline": r[2], "method": r[3], "relative_improvement_pct": r[4]}
                 for n, r in zip(names, rows)}
    data = {"dataset": ctx.cfg.data.dataset, "split": ctx.cfg.data.split, "subset": subset,
            "checkpoint": str(ctx.source.path), "against": str(baseline.source.path), "clips_per_video": clips,
            "rho": rho, "p_value": p, "classes_used": int(ok.sum()), "per_class": per_class,
            "elapsed_s": round(time.perf_counter() - t0, 2)}
    rep = Report("static-bias", f"static bias (Sec. 4.5), {ctx.cfg.data.dataset} {subset}: "
                 f"rho = {rho:.3f}, p = {p:.3g}, {int(ok.sum())} classes",
                 ["class", "static top-1 (baseline)", "baseline top-1", "method top-1", "relative improvement %"],
                 rows, data, [f"method: {ctx.source.path}", f"baseline: {baseline.source.path}",
                              "classes where the baseline scores 0 have no relative improvement and are left out",
                              "the paper: rho = -0.48, p = 0.0004 on HMDB51 (MoCo+BE against MoCo)"])
    rep.files.append(str(png))
    return rep


def scatter(static: torch.Tensor, rel: torch.Tensor, names: list[str], rho: float, p: float, path) -> None:
    """Fig. 4: one dot per class, static-video top-1 against relative improvement, with the fitted line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    x, y = (100 * static).tolist(), rel.tolist()
    ax.scatter(x, y, s=18)
    for xi, yi, n in zip(x, y, names):
        ax.annotate(n, (xi, yi), fontsize=6, xytext=(2, 2), textcoords="offset points")
    if len(x) >= 2 and max(x) > min(x):
        slope, icpt = torch.linalg.lstsq(torch.tensor([[xi, 1.0] for xi in x]), torch.tensor(y).view(-1, 1)).solution
        xs = torch.linspace(min(x), max(x), 2)
        ax.plot(xs, slope * xs + icpt, "r--", lw=1)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("static video top-1 (%)")
    ax.set_ylabel("relative top-1 improvement (%)")
    ax.set_title(f"Pearson rho = {rho:.3f}, p = {p:.3g}" if not math.isnan(rho) else "rho undefined: fewer than 3 classes, or a constant sample")
    fig.tight_layout()
    fig.savefig(path, dpi=100)  # its folder made by storage.writing
    plt.close(fig)
