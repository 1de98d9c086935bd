"""Check a dataset before spending GPU hours on it: index it, open every video, name the bad ones."""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import TextIO

from beray.data.datasets import DatasetIndex
from beray.data.video import VideoReader, VideoReadError


@dataclass
class CheckReport:
    index: DatasetIndex
    unreadable: dict[str, str] = field(default_factory=dict)  # path -> reason

    @property
    def ok(self) -> bool:
        return not self.unreadable


def check_video(path: str, decode_all: bool = False, timeout_s: float | None = 60.0) -> str | None:
    """None if ``path`` reads, else the reason. Decodes the first and last frame
    (a cut tail shows there), or every frame with ``decode_all``."""
    try:
        with VideoReader(path, timeout_s=timeout_s) as reader:
            n = reader.info.num_frames
            reader.frames(range(n) if decode_all else [0, n - 1], size=16)
    except VideoReadError as e:
        return e.reason
    return None


def check_dataset(index: DatasetIndex, workers: int | None = None, decode_all: bool = False,
                  progress: bool = True, timeout_s: float | None = 60.0) -> CheckReport:
    """Open every video of ``index`` in ``workers`` processes, with a progress bar.

    A file that kills its process (a decoder crash, not an exception) breaks the
    pool; the files still open then are re-checked one process each, so the
    culprit is named and the others are still checked.
    """
    from tqdm import tqdm

    paths = sorted({r.path for recs in index.subsets.values() for r in recs})
    report = CheckReport(index)
    pending = set(paths)
    with tqdm(total=len(paths), desc="checking videos", unit="video", disable=not progress) as bar:
        try:
            with ProcessPoolExecutor(workers or os.cpu_count() or 1) as pool:
                futures = {pool.submit(check_video, p, decode_all, timeout_s): p for p in paths}
                for fut in as_completed(futures):
                    _record(report, futures[fut], fut.result(), pending, bar)
        except BrokenProcessPool:
            for path in sorted(pending):
                try:
                    with ProcessPoolExecutor(1) as alone:
                        reason = alone.submit(check_video, path, decode_all, timeout_s).result()
                except BrokenProcessPool:
                    reason = "the decoder crashed the process reading it"
                _record(report, path, reason, pending, bar)
    return report


def _record(report: CheckReport, path: str, reason: str | None, pending: set[str], bar) -> None:
    if reason is not None:
        report.unreadable[path] = reason
    pending.discard(path)
    bar.update()


def print_report(report: CheckReport, out: TextIO) -> None:
    """Counts per subset and per class, then every unreadable file with its reason."""
    index = report.index
    subsets = list(index.subsets)
    bad = report.unreadable
    out.write(f"\n{index.name} at {index.root}\n\n")
    width = max([len(s) for s in subsets] + [6])
    out.write(f"{'subset':<{width}}  {'videos':>7}  {'classes':>7}  {'unreadable':>10}\n")
    for s in subsets:
        recs = index.subsets[s]
        n_bad = sum(r.path in bad for r in recs)
        out.write(f"{s:<{width}}  {len(recs):>7}  {len({r.label for r in recs}):>7}  {n_bad:>10}\n")
    counts = {s: Counter(r.label for r in index.subsets[s]) for s in subsets}
    labels = sorted({lab for c in counts.values() for lab in c})
    names = {r.label: r.class_name for recs in index.subsets.values() for r in recs}
    cw = max([len(names.get(lab, str(lab))) for lab in labels] + [5])
    out.write(f"\n{'label':>5}  {'class':<{cw}}  " + "  ".join(f"{s:>{max(len(s), 5)}}" for s in subsets) + "\n")
    for lab in labels:
        row = "  ".join(f"{counts[s][lab]:>{max(len(s), 5)}}" for s in subsets)
        out.write(f"{lab:>5}  {names.get(lab, str(lab)):<{cw}}  {row}\n")
    if index.missing:
        out.write(f"\n{len(index.missing)} files named by the annotations are missing (skipped, not fatal):\n")
        for p in index.missing[:10]:
            out.write(f"  {p}\n")
        if len(index.missing) > 10:
            out.write(f"  ... and {len(index.missing) - 10} more\n")
    total = len({r.path for recs in index.subsets.values() for r in recs})
    if bad:
        out.write(f"\n{len(bad)} of {total} videos are unreadable:\n")
        for p in sorted(bad):
            out.write(f"  {p}: {bad[p]}\n")
    else:
        out.write(f"\nall {total} videos are readable\n")
