"""The sweep's report: trials aggregated per point over seeds (mean, standard deviation, n), sorted by
the objective, early-stopped and failed trials marked, the best configuration, published numbers
beside them where the sweep names them; ``results.csv``, ``results.md`` and ``results.png``."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from beray.eval.report import markdown_table
from beray.sweep.spec import Sweep


@dataclass
class PointResult:
    point: dict
    values: list[float] = field(default_factory=list)  # the objective of each finished seed
    also: dict[str, list[float]] = field(default_factory=dict)
    stopped: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return sum(self.values) / self.n if self.n else math.nan

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (0 with one seed, NaN with none)."""
        if self.n < 2:
            return 0.0 if self.n else math.nan
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (self.n - 1))

    def of(self, metric: str | None = None) -> "PointResult":
        """The same point with ``metric`` (an ``also:`` metric; None: the objective) as its values."""
        return self if metric is None else PointResult(self.point, self.also.get(metric, []))


def aggregate(records: list[dict], sweep: Sweep) -> list[PointResult]:
    """Trial records -> one PointResult per point, best first (by mean objective; no result last)."""
    points: dict[str, PointResult] = {}
    for r in records:
        key = json.dumps(r["point"], sort_keys=True)
        p = points.setdefault(key, PointResult(dict(r["point"])))
        if r["status"] == "finished":
            p.values.append(float(r["objective"]))
            for name in sweep.objective.also:
                v = r.get("results", {}).get(name.replace(".", "/"))
                if v is not None:
                    p.also.setdefault(name, []).append(float(v))
        elif r["status"] == "stopped":
            p.stopped += 1
        elif r["status"] == "failed":
            p.failed += 1
            p.errors.append((r.get("error") or "?").strip().splitlines()[-1])
    sign = -1 if sweep.objective.mode == "max" else 1
    return sorted(points.values(), key=lambda p: (p.n == 0, sign * p.mean if p.n else 0.0))


def read_records(results: Path) -> list[dict]:
    """The trial records, not the ``.ID.json`` being written (pathlib's glob matches dot files)."""
    return [json.loads(f.read_text()) for f in sorted((Path(results) / "trials").glob("*.json"))
            if not f.name.startswith(".")]


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def table(rows: list[PointResult], sweep: Sweep) -> tuple[list[str], list[list]]:
    keys = list(sweep.space)
    ref = sweep.reference
    headers = [*keys, f"{sweep.objective.metric} (mean)", "std", "n",
               *(h for a in sweep.objective.also for h in (f"{a} (mean)", f"{a} std")), "notes"]
    if ref is not None:
        headers.insert(len(keys) + 3, f"reference: {ref.title}")
    out = []
    for p in rows:
        notes = ", ".join(x for x in (f"{p.stopped} stopped early" if p.stopped else "",
                                      f"{p.failed} failed: {p.errors[0][:80]}" if p.failed else "") if x)
        row = [_fmt(p.point.get(k)) for k in keys] + [p.mean, p.std, p.n]
        if ref is not None:
            row.append(ref.values.get(str(p.point.get(ref.param)), "-"))
        row += [x for a in sweep.objective.also for x in (p.of(a).mean, p.of(a).std)]
        out.append(row + [notes or "-"])
    return headers, out


def write_report(results: Path, sweep: Sweep | None = None) -> str:
    """Aggregate the records under ``results``, write results.csv / .md / .png; returns the markdown."""
    results = Path(results).expanduser()
    if sweep is None:
        sweep = Sweep.model_validate(yaml.safe_load((results / "sweep.yaml").read_text()))
    rows = aggregate(read_records(results), sweep)
    headers, cells = table(rows, sweep)
    with open(results / "results.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(headers)
        w.writerows(cells)
    finished = [p for p in rows if p.n]
    lines = [f"# Sweep {sweep.name}", "",
             f"objective: {sweep.eval.mode} {sweep.objective.metric} ({sweep.objective.mode}), "
             f"mean and sample standard deviation over seeds; {sum(p.n for p in rows)} finished, "
             f"{sum(p.stopped for p in rows)} stopped early, {sum(p.failed for p in rows)} failed trial(s)", "",
             markdown_table(headers, cells), ""]
    if finished:
        best = finished[0]
        lines += ["best: " + " ".join(f"{k}={_fmt(v)}" for k, v in best.point.items())
                  + f" ({sweep.objective.metric} {best.mean:.4f} +- {best.std:.4f}, n={best.n})", ""]
    if sweep.reference is not None:
        lines += [f"reference column: published numbers ({sweep.reference.title}), not measured here", ""]
    png = plot(rows, sweep, results / "results.png")
    lines += [f"![objective per parameter]({png.name})"]
    if (results / "runs").is_dir():  # a copy of the records alone (docs/results/) has no runs
        lines += ["", f"TensorBoard of every trial: tensorboard --logdir {results / 'runs'}"]
    text = "\n".join(lines) + "\n"
    (results / "results.md").write_text(text)
    return text


def plot(rows: list[PointResult], sweep: Sweep, path: Path) -> Path:
    """One panel per swept field: the objective's mean over every finished trial at each value, and
    beside it each ``also:`` metric, with the spread over seeds (and the other fields) as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys, metrics = list(sweep.space), [None, *sweep.objective.also]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 + 1.5 * len(metrics), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        numeric = all(isinstance(p.point.get(key), (int, float)) for p in rows)
        joined = numeric and sweep.space[key].kind not in ("uniform", "loguniform")
        for i, metric in enumerate(metrics):
            by_value: dict = {}
            for p in rows:
                by_value.setdefault(p.point.get(key), []).extend(p.of(metric).values)
            by_value = {v: vals for v, vals in by_value.items() if vals}
            listed = sweep.space[key].values if not numeric and sweep.space[key].kind in ("grid", "choice") else []
            rank = {v: i for i, v in enumerate(listed)}  # categories in the sweep file's order (Table 4's)
            xs = sorted(by_value, key=lambda v: (rank.get(v, len(rank)), isinstance(v, str), v))
            means = [sum(by_value[x]) / len(by_value[x]) for x in xs]
            stds = [PointResult({}, by_value[x]).std for x in xs]
            shift = 0.0 if numeric else 0.8 * (i - (len(metrics) - 1) / 2) / len(metrics)  # side by side
            pos = [x + shift for x in xs] if numeric else [j + shift for j in range(len(xs))]
            ax.errorbar(pos, means, yerr=stds, fmt="o-" if joined else "o", capsize=3,
                        label=metric or sweep.objective.metric, zorder=3 if metric is None else 2)
            if not numeric and metric is None:
                ax.set_xticks(range(len(xs)), [str(x) for x in xs], rotation=30, ha="right", fontsize=7)
        if sweep.space[key].kind == "loguniform":
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.grid(alpha=0.3)
        if len(metrics) > 1:
            ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the panel, not on the points
        else:
            ax.set_ylabel(sweep.objective.metric)
    fig.suptitle(f"sweep {sweep.name}: {sweep.eval.mode}, mean +- std over seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
