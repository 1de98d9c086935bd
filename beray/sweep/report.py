"""The sweep's report: trials aggregated per point over seeds (mean, standard deviation, n), and each
point's difference from the baseline point taken seed by seed: trials that share a seed share their
data, noise and initial weights, so their differences are paired. From 3 pairs on, a paired 95%
interval (Student t) is given and marked where it excludes 0; with 2 both differences, with 1 the one.
Early-stopped and failed trials are marked, published numbers shown beside them where the sweep names
them; ``results.csv``, ``results.md`` and ``results.png`` (a panel per metric)."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import dataclass, field

import yaml

from beray import storage as st
from beray.eval.report import markdown_table
from beray.sweep.spec import Sweep

LEVEL = 0.95  # of the paired intervals
MIN_PAIRS = 3  # pairs before an interval: scores move in steps of one test video, two equal ones give width 0
SAME = 1e-9  # differences whose standard deviation is below this differ alike (up to float rounding)


@dataclass
class PointResult:
    point: dict
    values: list[float] = field(default_factory=list)  # the objective of each finished seed
    also: dict[str, list[float]] = field(default_factory=dict)
    stopped: int = 0
    failed: int = 0
    repeated: int = 0  # finished trials of a seed already counted (a random search can draw a point twice)
    errors: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)  # of ``values``, in order
    also_seeds: dict[str, list[int]] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return sum(self.values) / self.n if self.n else math.nan

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (NaN below two: one seed has no spread)."""
        return statistics.stdev(self.values) if self.n > 1 else math.nan

    def spread(self) -> str:
        """`` +- std`` for the report's sentences; nothing for one seed."""
        return f" +- {self.std:.4f}" if self.n > 1 else ""

    def of(self, metric: str | None = None) -> "PointResult":
        """The same point with ``metric`` (an ``also:`` metric; None: the objective) as its values."""
        if metric is None:
            return self
        return PointResult(self.point, self.also.get(metric, []), seeds=self.also_seeds.get(metric, []))

    def by_seed(self) -> dict[int, float]:
        return dict(zip(self.seeds, self.values))


@dataclass
class Paired:
    """A point's differences from its baseline, one per seed both finished (Sec. 4's ablations, as pairs)."""

    diffs: list[float]

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.diffs) if self.diffs else math.nan

    def interval(self) -> tuple[float, float] | None:
        """The paired ``LEVEL`` interval of the mean difference (Student t, n - 1 degrees of freedom); None
        below ``MIN_PAIRS`` pairs, or where every pair differs alike (an interval of width 0 tests nothing)."""
        if self.n < MIN_PAIRS or (sd := statistics.stdev(self.diffs)) < SAME:
            return None
        from scipy.stats import t

        half = float(t.ppf(0.5 + LEVEL / 2, self.n - 1)) * sd / math.sqrt(self.n)
        return self.mean - half, self.mean + half

    @property
    def marked(self) -> bool:
        ci = self.interval()
        return ci is not None and (ci[0] > 0 or ci[1] < 0)

    def cell(self) -> str:
        if not self.diffs:
            return "-"
        if self.interval() is None:
            return ", ".join(f"{d:+.3f}" for d in self.diffs)
        lo, hi = self.interval()
        return f"{self.mean:+.3f} [{lo:+.3f}, {hi:+.3f}]" + (" *" if self.marked else "")


def paired(p: PointResult, base: PointResult) -> Paired:
    theirs = base.by_seed()
    return Paired([v - theirs[s] for s, v in p.by_seed().items() if s in theirs])


def aggregate(records: list[dict], sweep: Sweep) -> list[PointResult]:
    """Trial records -> one PointResult per point, best mean first (no result last)."""
    points: dict[str, PointResult] = {}
    for r in records:
        key = json.dumps(r["point"], sort_keys=True)
        p = points.setdefault(key, PointResult(dict(r["point"])))
        if r["status"] == "finished":
            seed = int(r.get("seed", len(p.seeds)))
            if seed in p.seeds:  # the same point and seed: the same run again, not another sample
                p.repeated += 1
                continue
            p.values.append(float(r["objective"]))
            p.seeds.append(seed)
            for name in sweep.objective.also:
                v = r.get("results", {}).get(name.replace(".", "/"))
                if v is not None:
                    p.also.setdefault(name, []).append(float(v))
                    p.also_seeds.setdefault(name, []).append(p.seeds[-1])
        elif r["status"] == "stopped":
            p.stopped += 1
        elif r["status"] == "failed":
            p.failed += 1
            p.errors.append((r.get("error") or "?").strip().splitlines()[-1])
    sign = -1 if sweep.objective.mode == "max" else 1  # ties in the sweep file's order, however the trials ran
    return sorted(points.values(), key=lambda p: (p.n == 0, sign * p.mean if p.n else 0.0, _rank(p, sweep)))


def baselines(rows: list[PointResult], sweep: Sweep) -> dict[int, PointResult | None]:
    """Row index -> the row it is compared with (None: none, or it is its own baseline)."""
    out = {}
    for i, p in enumerate(rows):
        target = sweep.baseline_of(p.point)
        base = next((q for q in rows if q.point == target), None) if target is not None else None
        out[i] = None if base is p else base
    return out


def comparisons(rows: list[PointResult], sweep: Sweep) -> list[list[tuple[PointResult, Paired | None]]]:
    """Per row, per metric (the objective, then each ``also:``): the row's values of it and their paired
    difference from the row's baseline (None: no baseline, or the row is its own)."""
    bases = baselines(rows, sweep)
    return [[(p.of(m), paired(p.of(m), bases[i].of(m)) if bases[i] is not None else None)
             for m in [None, *sweep.objective.also]] for i, p in enumerate(rows)]


def floors_of(records: list[dict]) -> dict[str, float]:
    """``background``'s floors as its trials recorded them (``floor/...``): chance and a background reader."""
    for r in records:
        found = {k[len("floor/"):]: v for k, v in (r.get("results") or {}).items() if k.startswith("floor/")}
        if found:
            return found
    return {}


def floor_lines(rows: list[PointResult], sweep: Sweep, floors: dict[str, float]) -> list[str]:
    """The floors, and where each gap metric's point means lie between a motion reader and a background
    reader: the shortcut, a within-run contrast that one seed already shows."""
    if not floors:
        return []
    b, s, g = (floors.get(f"background_reader/{k}") for k in ("test_biased", "test_swapped", "gap"))
    lines = [f"floors, from the test manifests: chance {floors.get('chance', math.nan):.3f}; a reader of the "
             f"background alone scores test_biased {b:.3f}, test_swapped {s:.3f}, gap {g:.3f}; a reader of motion "
             "alone has gap 0"]
    for metric in [sweep.objective.metric, *sweep.objective.also]:
        means = [p.of(None if metric == sweep.objective.metric else metric).mean for p in rows if p.n]
        means = [m for m in means if not math.isnan(m)]
        if metric.endswith(".gap") and means and g > 0:
            lo, hi = min(means), max(means)
            lines.append(f"shortcut: {metric} of every point lies between {lo:.3f} and {hi:.3f}, "
                         f"{lo / g:.0%}-{hi / g:.0%} of the way from a motion reader's 0 to a background reader's "
                         f"{g:.3f}")
    return lines


def read_records(results: str) -> list[dict]:
    """The trial records in ``RESULTS/trials`` (local folder or URI), not a file being written."""
    folder = st.join(str(results), "trials")
    return [json.loads(st.read_text(st.join(folder, f))) for f in st.listdir(folder)
            if f.endswith(".json") and not f.startswith(".")]


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _describe(point: dict) -> str:
    return " ".join(f"{k}={_fmt(v)}" for k, v in point.items())


def _notes(p: PointResult) -> str:
    return ", ".join(x for x in (f"{p.stopped} stopped early" if p.stopped else "",
                                 f"{p.failed} failed: {p.errors[0][:80]}" if p.failed else "",
                                 f"{p.repeated} repeat(s) of a seed counted once" if p.repeated else "") if x) or "-"


def table(rows: list[PointResult], sweep: Sweep) -> tuple[list[str], list[list]]:
    """The markdown table: per metric its mean, std and paired difference from the baseline."""
    keys, ref, bases = list(sweep.space), sweep.reference, baselines(rows, sweep)
    compared = any(b is not None for b in bases.values())
    headers = list(keys)
    for i, m in enumerate([sweep.objective.metric, *sweep.objective.also]):
        headers += [f"{m} (mean)", "std" if i == 0 else f"{m} std", *(["n"] if i == 0 else []),
                    *([f"{m} - baseline"] if compared else [])]
        if i == 0 and ref is not None:
            headers.append(f"reference: {ref.title}")
    headers.append("notes")
    out = []
    for p, cells in zip(rows, comparisons(rows, sweep)):
        row = [_fmt(p.point.get(k)) for k in keys]
        for j, (q, d) in enumerate(cells):
            row += [q.mean, q.std if q.n > 1 else "-", *([p.n] if j == 0 else [])]
            if compared:
                row.append(d.cell() if d is not None else
                           "baseline" if sweep.baseline_of(p.point) == p.point else "-")
            if j == 0 and ref is not None:
                row.append(ref.values.get(str(p.point.get(ref.param)), "-"))
        out.append(row + [_notes(p)])
    return headers, out


def csv_table(rows: list[PointResult], sweep: Sweep) -> tuple[list[str], list[list]]:
    """``results.csv``: per metric mean, std, n, and the paired difference's mean, interval, pairs and each
    pair's difference (space-separated, in seed order)."""
    keys = list(sweep.space)
    metrics = [sweep.objective.metric, *sweep.objective.also]
    headers = [*keys, *(f"{m} {c}" for m in metrics for c in ("mean", "std", "n", "diff", "diff_lo", "diff_hi",
                                                              "pairs", "diffs", "marked"))]
    if sweep.reference is not None:
        headers.append(f"reference: {sweep.reference.title}")
    headers.append("notes")
    out = []
    for p, cells in zip(rows, comparisons(rows, sweep)):
        row = [_fmt(p.point.get(k)) for k in keys]
        for q, d in cells:
            d = d or Paired([])
            lo, hi = d.interval() or ("", "")
            row += [q.mean, q.std if q.n > 1 else "", q.n, d.mean if d.n else "", lo, hi, d.n,
                    " ".join(f"{x:+.4f}" for x in d.diffs), int(d.marked) if d.n else ""]
        if sweep.reference is not None:
            row.append(sweep.reference.values.get(str(p.point.get(sweep.reference.param)), ""))
        out.append(row + [_notes(p)])
    return headers, out


def reading(rows: list[PointResult], sweep: Sweep) -> list[str]:
    """What the table lets one say: how the comparisons were made and what, if anything, they show."""
    bases = baselines(rows, sweep)
    pairs = [d for cells in comparisons(rows, sweep) for _, d in cells if d is not None and d.n]
    finished = [p for p in rows if p.n]
    objective, better = sweep.objective.metric, (1 if sweep.objective.mode == "max" else -1)
    lines = []
    if not finished:
        return ["no trial finished"]
    most = max((p.n for p in finished), default=0)
    if len(finished) == 1:
        only = finished[0]
        return [f"one point: {objective} {only.mean:.4f}{only.spread()} (n={only.n}), nothing to compare it with"]
    if pairs:
        base = next(b for b in bases.values() if b is not None)
        named = ", ".join(f"{k}={_fmt(v)}" for k, v in (sweep.baseline or base.point).items())
        made = [d for d in pairs if d.interval() is not None]
        lines.append(f"paired differences: each point minus the baseline ({named}) over the seeds both finished; "
                     + (f"{int(LEVEL * 100)}% Student t interval from {MIN_PAIRS} pairs on, * where it excludes 0: "
                        f"{len(made)} comparison(s), {sum(d.marked for d in made)} marked (about "
                        f"{(1 - LEVEL) * len(made):.1f} would be by chance alone)" if made else
                        f"no interval below {MIN_PAIRS} pairs"
                        + (" or where every pair differs alike" if any(d.n >= MIN_PAIRS for d in pairs) else "")
                        + ": the differences themselves are shown"))
        if stopped := sum(p.stopped for p in rows):  # ASHA: a pair exists only where both trials survived its rungs
            lines.append(f"{stopped} trial(s) stopped early have no pair: each difference is over the seeds where "
                         "both points ran to the end, the survivors of the scheduler's rungs, not every seed drawn")
    if most < 2:
        lines.append("one seed cannot rank the points: a difference between them carries no spread, and a "
                     "two-epoch run's can follow the processor's rounding (run seeds: 3 or more)")
        return lines
    if pairs and any(d.interval() is not None for d in pairs):
        tested = {id(p): paired(p, bases[i]) for i, p in enumerate(rows) if bases[i] is not None and p.n}
        ahead = [p for p in finished if id(p) in tested and tested[id(p)].marked and better * tested[id(p)].mean > 0]
        behind = [p for p in finished if id(p) in tested and tested[id(p)].marked and better * tested[id(p)].mean < 0]
        if len(ahead) == 1:
            top = ahead[0]
            lines.append(f"best: {_describe(top.point)} ({objective} {top.mean:.4f}{top.spread()}, n={top.n}): "
                         "its paired difference from the baseline excludes 0")
        elif ahead:  # each was compared with the baseline, not with the others
            lines.append(f"ahead of the baseline in {objective} (paired differences that exclude 0), not compared "
                         "with each other: " + "; ".join(f"{_describe(p.point)} ({p.mean:.4f}{p.spread()}, n={p.n})"
                                                         for p in ahead))
        elif tested and len(behind) == len(tested):
            top = next(b for b in bases.values() if b is not None)
            lines.append(f"best: {_describe(top.point)}, the baseline: every other point's paired difference in "
                         f"{objective} excludes 0 on the worse side")
        else:
            lines.append(f"no point is ahead of the baseline in {objective} beyond its seeds' spread"
                         + (f"; behind it: {', '.join(_describe(p.point) for p in behind)}" if behind else ""))
    else:
        top = finished[0]
        if not pairs:
            why = ("no baseline point finished, or the search has none (a random search without baseline:, Optuna), "
                   "so no difference is tested")
        elif all(d.n < MIN_PAIRS for d in pairs):
            why = f"with fewer than {MIN_PAIRS} paired seeds no difference is tested"
        else:
            why = f"no difference is tested (fewer than {MIN_PAIRS} paired seeds, or pairs that all differ alike)"
        lines.append(f"{'highest' if better > 0 else 'lowest'} mean {objective}: {_describe(top.point)} "
                     f"({top.mean:.4f}{top.spread()}, n={top.n}); {why}")
    return lines


def write_report(results: str, sweep: Sweep | None = None) -> str:
    """Aggregate the records under ``results`` (a folder or URI), write results.csv / .md / .png; returns
    the markdown."""
    results = st.resolve(str(results))
    if sweep is None:
        sweep = Sweep.model_validate(yaml.safe_load(st.read_text(st.join(results, "sweep.yaml"))))
    records = read_records(results)
    rows, floors = aggregate(records, sweep), floors_of(records)
    headers, cells = csv_table(rows, sweep)
    out = io.StringIO(newline="")
    w = csv.writer(out)
    w.writerow(headers)
    w.writerows(cells)
    st.write_text(st.join(results, "results.csv"), out.getvalue())
    headers, cells = table(rows, sweep)
    lines = [f"# Sweep {sweep.name}", "",
             f"objective: {sweep.eval.mode} {sweep.objective.metric} ({sweep.objective.mode}), "
             f"mean and sample standard deviation over seeds; {sum(p.n for p in rows)} finished, "
             f"{sum(p.stopped for p in rows)} stopped early, {sum(p.failed for p in rows)} failed trial(s)", "",
             markdown_table(headers, cells), "",
             *(line for x in [*floor_lines(rows, sweep, floors), *reading(rows, sweep)] for line in (x, ""))]
    if sweep.reference is not None:
        lines += [f"reference column: published numbers ({sweep.reference.title}), not measured here", ""]
    with st.writing(st.join(results, "results.png")) as png:
        plot(rows, sweep, png, floors)
    lines += ["![objective per parameter](results.png)"]
    runs = st.join(results, "runs")
    if st.kind(runs) == "dir":  # a copy of the records alone (docs/results/) has no runs
        lines += ["", f"TensorBoard of every trial: tensorboard --logdir {runs}"]
    text = "\n".join(lines) + "\n"
    st.write_text(st.join(results, "results.md"), text)
    return text


def _rank(p: PointResult, sweep: Sweep) -> tuple:
    """A point's place in the sweep file's order: each field's listed values as listed, numbers ascending."""
    key = []
    for k, dim in sweep.space.items():
        v = p.point.get(k)
        listed = dim.values if dim.kind in ("grid", "choice") else []
        key.append((listed.index(v) if v in listed else len(listed), str(v) if isinstance(v, str) else "",
                    v if isinstance(v, (int, float)) else 0))
    return tuple(key)


def _order(rows: list[PointResult], sweep: Sweep) -> list[PointResult]:
    """The points with results, in the sweep file's order."""
    return sorted((p for p in rows if p.n), key=lambda p: _rank(p, sweep))


def plot(rows: list[PointResult], sweep: Sweep, path: str, floors: dict[str, float] | None = None) -> str:
    """One small panel per metric: each point's seeds as dots, its mean as a bar across them, and the
    baseline's mean as a dashed line (Tufte's small multiples: one scale per metric); with ``floors``,
    what chance and a background reader score, dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [None, *sweep.objective.also]
    points = _order(rows, sweep)
    bases = baselines(rows, sweep)
    base_of = {id(p): bases[i] for i, p in enumerate(rows)}
    # one baseline for every point: a line across the panel; several (a baseline that names some fields of
    # a grid): each point's own, as a dash across it
    shared = {id(b): b for b in bases.values() if b is not None and b.n}
    base = next(iter(shared.values())) if len(shared) == 1 else None
    cols = min(len(metrics), 4)
    nrows = math.ceil(len(metrics) / cols)
    width = max(2.6, 0.45 * len(points) + 1.2)
    fig, axes = plt.subplots(nrows, cols, figsize=(width * cols, 2.8 * nrows + 0.4), squeeze=False)
    labels = [" ".join(_fmt(v) for v in p.point.values()) for p in points]
    for ax, metric in zip(axes.flat, metrics):
        for x, p in enumerate(points):
            q = p.of(metric)
            if not q.n:
                continue
            jitter = [0.0] if q.n == 1 else [0.24 * (j / (q.n - 1) - 0.5) for j in range(q.n)]
            ax.scatter([x + d for d in jitter], q.values, s=14, color="tab:blue", alpha=0.7, zorder=3)
            ax.hlines(q.mean, x - 0.3, x + 0.3, color="black", linewidth=1.5, zorder=4)
        if base is not None and base.of(metric).n:
            ax.axhline(base.of(metric).mean, color="tab:red", linestyle="--", linewidth=1, label="baseline", zorder=2)
        for x, p in enumerate(points if len(shared) > 1 else []):
            if (b := base_of[id(p)]) is not None and b.of(metric).n:
                ax.hlines(b.of(metric).mean, x - 0.4, x + 0.4, color="tab:red", linestyle="--", linewidth=1, zorder=2)
        name = (metric or sweep.objective.metric).rsplit(".", 1)[-1]
        for label, value, colour in (("background reader", (floors or {}).get(f"background_reader/{name}"), "tab:brown"),
                                     ("chance", (floors or {}).get("chance") if name != "gap" else None, "grey")):
            if value is not None:
                ax.axhline(value, color=colour, linestyle=":", linewidth=1)
                ax.annotate(label, (1.0, value), xycoords=("axes fraction", "data"), ha="right", va="bottom",
                            fontsize=6, color=colour)
        ax.set_title(metric or f"{sweep.objective.metric} (objective)", fontsize=8)
        ax.set_xticks(range(len(points)), labels, rotation=35, ha="right", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.suptitle(f"sweep {sweep.name} ({', '.join(sweep.space)}): {sweep.eval.mode}; dots: seeds, bar: mean, "
                 "dashed: the baseline", fontsize=9, wrap=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
