"""``python -m beray.bench sweep``: the same tiny trials (cpu-tiny MoCo + BE on BackgroundBias-Synth,
each scored by kNN) as one ``beray.sweep`` and as back-to-back ``beray.train`` + ``beray.eval``
processes, as a user would script them. Wall-clock seconds of each, start-up included."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

GAMMAS = (0.0, 0.1, 0.2, 0.3)


def _run(cmd: list[str], env: dict) -> None:
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"error: {' '.join(cmd)} failed:\n{res.stderr[-2000:]}")


def run(epochs: int = 2) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "BERAY_RESULTS": tmp}
        env.pop("RAY_ADDRESS", None)
        sweep = {"name": "bench", "base": {"preset": "cpu-tiny", "set": {"optim.epochs": epochs}},
                 "space": {"be.gamma": {"grid": list(GAMMAS)}}, "resources": {"workers": 1, "cpus_per_worker": 0.5},
                 "eval": {"mode": "knn"}, "objective": {"metric": "test_swapped.top1", "mode": "max"},
                 "pack": False}  # one job per trial, as the scripted runs
        f = Path(tmp) / "bench.yaml"
        f.write_text(yaml.safe_dump(sweep))
        _run([sys.executable, "-m", "beray.data", "check"], env)  # the dataset generated once, outside the clocks
        t0 = time.perf_counter()
        _run([sys.executable, "-m", "beray.sweep", str(f)], env)
        sweep_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for g in GAMMAS:
            name = f"seq-{g}"
            _run([sys.executable, "-m", "beray.train", "--set", f"be.gamma={g}", "--set", f"optim.epochs={epochs}",
                  "--set", f"run.name={name}"], env)
            _run([sys.executable, "-m", "beray.eval", "knn", "--checkpoint", str(Path(tmp) / name), "--quiet"], env)
        sequential_s = time.perf_counter() - t0
    return {"sweep_s": sweep_s, "sequential_s": sequential_s, "sweep_over_sequential": sweep_s / sequential_s,
            "trials": len(GAMMAS), "epochs": epochs, "cpus": os.cpu_count()}


def print_table(res: dict) -> None:
    print(f"sweep: {res['trials']} cpu-tiny trials of {res['epochs']} epochs + kNN, {res['cpus']} CPU cores\n")
    print(f"  {'one beray.sweep (Ray Tune)':<40} {res['sweep_s']:>7.1f} s")
    print(f"  {'beray.train + beray.eval, one by one':<40} {res['sequential_s']:>7.1f} s")
    print(f"\n  sweep / sequential: {res['sweep_over_sequential']:.2f}x   (target <= 1.1x)")
