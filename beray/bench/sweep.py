"""``python -m beray.bench sweep``: the same tiny trials (cpu-tiny MoCo + BE on BackgroundBias-Synth,
each scored by kNN) as one ``beray.sweep`` and as back-to-back ``beray.train`` + ``beray.eval``
processes, as a user would script them. Wall-clock seconds of each, start-up included.

``--pack``: the same 4-point grid as one packed sweep and as an unpacked one (``pack: false``), each in
its own process and Ray: wall time, and the CPU-seconds and clips of the decode tasks, training and
evaluation, summed from Tune's trial results (each job reports what it spent)."""

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


def _sweep_file(tmp: str, name: str, epochs: int, **extra) -> Path:
    sweep = {"name": name, "base": {"preset": "cpu-tiny", "set": {"optim.epochs": epochs}},
             "space": {"be.gamma": {"grid": list(GAMMAS)}}, "resources": {"workers": 1, "cpus_per_worker": 0.5},
             "eval": {"mode": "knn"}, "objective": {"metric": "test_swapped.top1", "mode": "max"}, **extra}
    f = Path(tmp) / f"{name}.yaml"
    f.write_text(yaml.safe_dump(sweep))
    return f


def run(epochs: int = 2) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "BERAY_RESULTS": tmp}
        env.pop("RAY_ADDRESS", None)
        f = _sweep_file(tmp, "bench", epochs, pack=False)  # one job per trial, as the scripted runs
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


SPENT = ("decode_cpu_s", "decode_clips", "eval_decode_cpu_s", "eval_decode_clips")


def run_pack(epochs: int = 2, videos: str = "synth") -> dict:
    """``videos``: ``synth`` (BackgroundBias-Synth) or ``ucf`` (UCF101-shaped videos, as ``bench decode``'s)."""
    import json

    from beray.bench.pack import ucf_manifest

    out = {"epochs": epochs, "videos": videos, "points": len(GAMMAS), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "BERAY_RESULTS": tmp}
        env.pop("RAY_ADDRESS", None)
        data = {}
        if videos == "ucf":
            (Path(tmp) / "ucf").mkdir()
            data = {"data.dataset": "manifest", "data.root": str(ucf_manifest(Path(tmp) / "ucf", test=True)),
                    "data.subset": "train"}
        else:
            _run([sys.executable, "-m", "beray.data", "check"], env)  # generated once, outside the clocks
        for packed in (True, False):
            name = "packed" if packed else "unpacked"
            f = _sweep_file(tmp, name, epochs, pack=packed)
            if data:
                tree = yaml.safe_load(f.read_text())
                tree["base"]["set"].update(data)
                tree["objective"]["metric"] = "test.top1"
                f.write_text(yaml.safe_dump(tree))
            t0 = time.perf_counter()
            _run([sys.executable, "-m", "beray.sweep", str(f)], env)
            out[f"{name}_wall_s"] = time.perf_counter() - t0
            jobs = [json.loads(r.read_text().strip().splitlines()[-1])
                    for r in (Path(tmp) / "sweeps" / name).glob("*/result.json")]
            out[f"{name}_jobs"] = len(jobs)
            for key in SPENT:
                out[f"{name}_{key}"] = sum(j[key] for j in jobs)
    out["wall_ratio"] = out["packed_wall_s"] / out["unpacked_wall_s"]
    out["decode_ratio"] = ((out["packed_decode_cpu_s"] + out["packed_eval_decode_cpu_s"])
                           / (out["unpacked_decode_cpu_s"] + out["unpacked_eval_decode_cpu_s"]))
    return out


def print_pack_table(res: dict) -> None:
    what = "BackgroundBias-Synth" if res["videos"] == "synth" else "UCF101-shaped videos (320x240)"
    print(f"sweep --pack: {res['points']} cpu-tiny points (be.gamma) of {res['epochs']} epochs + kNN, {what}, "
          f"{res['cpus']} CPU cores\n")
    print(f"  {'':<24} {'jobs':>5} {'wall s':>8} {'train decode CPU-s':>19} {'eval decode CPU-s':>18} {'clips decoded':>14}")
    for name in ("packed", "unpacked"):
        print(f"  {name + ' sweep':<24} {res[f'{name}_jobs']:>5} {res[f'{name}_wall_s']:>8.1f} "
              f"{res[f'{name}_decode_cpu_s']:>19.1f} {res[f'{name}_eval_decode_cpu_s']:>18.1f} "
              f"{res[f'{name}_decode_clips'] + res[f'{name}_eval_decode_clips']:>14.0f}")
    wall = 0.75 if res["videos"] == "synth" else 0.6
    print(f"\n  packed / unpacked: wall {res['wall_ratio']:.2f}x (target <= {wall}x), "
          f"decode CPU {res['decode_ratio']:.2f}x (target <= 0.3x)")
