"""What a running sweep shows and keeps: one line per trial event and a running count, instead of
Tune's status table, and one JSON record per trial in ``RESULTS/trials/`` that the report reads."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ray.tune import Callback

from beray.sweep.spec import Sweep
from beray.sweep.trial import point_and_seed


def describe(point: dict, seed: int) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in point.items()) + f" seed={seed}"


class SweepProgress(Callback):
    """Prints ``started``, each epoch's intermediate metric, ``stopped early``, ``finished`` and ``failed``
    lines with a done / running / pending count, and writes each trial's record."""

    def __init__(self, sweep: Sweep, results: Path):
        self.sweep = sweep  # no open streams held: Tune pickles its callbacks with the experiment state
        self.records = Path(results) / "trials"
        self.records.mkdir(parents=True, exist_ok=True)
        self.metric = sweep.scheduler.metric

    def _say(self, trials, text: str, ending=None) -> None:
        """``text`` with the counts; ``ending``: the trial this event ends (Tune updates its status after)."""
        done = sum(t.status in ("TERMINATED", "ERROR") or t is ending for t in trials)
        running = sum(t.status == "RUNNING" and t is not ending for t in trials)
        pending = sum(t.status == "PENDING" for t in trials)
        sys.stdout.write(f"[{time.strftime('%H:%M:%S')}] {text}   ({done} done, {running} running, {pending} pending)\n")
        sys.stdout.flush()

    def _label(self, trial) -> str:
        point, seed = point_and_seed(trial.config, self.sweep)
        return f"{trial.trial_id} {describe(point, seed)}"

    def _write(self, trial, status: str, **extra) -> None:
        point, seed = point_and_seed(trial.config, self.sweep)
        record = {"trial_id": trial.trial_id, "point": point, "seed": seed, "status": status, **extra}
        tmp = self.records / f".{trial.trial_id}.json"
        tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
        tmp.replace(self.records / f"{trial.trial_id}.json")

    def on_trial_start(self, iteration, trials, trial, **info):
        self._say(trials, f"started   {self._label(trial)}")
        self._write(trial, "running")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("finished"):
            return
        value = result.get(self.metric)
        shown = f"{self.metric} {value:.4f}" if isinstance(value, (int, float)) else ""
        self._say(trials, f"epoch {result.get('epoch', '?'):>3}  {self._label(trial)}  {shown}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        if last.get("finished"):
            self._write(trial, "finished", objective=last["objective"], epochs=last.get("epoch"),
                        results={k[5:]: v for k, v in last.items() if k.startswith("eval/")},
                        run_dir=last.get("run_dir"))
            self._say(trials, f"finished  {self._label(trial)}  objective {last['objective']:.4f}", trial)
        else:  # ended without its evaluation: the scheduler stopped it
            self._write(trial, "stopped", epochs=last.get("epoch"), metric={self.metric: last.get(self.metric)})
            self._say(trials, f"stopped early (ASHA) {self._label(trial)} at epoch {last.get('epoch')}, "
                              f"{self.metric} {last.get(self.metric)}", trial)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._say(trials, f"retrying  {self._label(trial)} after a failure (from its last checkpoint)")

    def on_trial_error(self, iteration, trials, trial, **info):
        error = _error(trial)
        self._write(trial, "failed", error=error)
        self._say(trials, f"failed    {self._label(trial)}: {error.splitlines()[-1] if error else '?'}", trial)


def _error(trial) -> str:
    """The trial's error as Tune stored it (its last lines name the exception)."""
    for attr in ("error_file", "path"):
        path = getattr(trial, attr, None)
        if attr == "path" and path:
            path = str(Path(path) / "error.txt")
        if path and Path(path).is_file():
            return Path(path).read_text().strip()[-2000:]
    return str(getattr(trial, "error_msg", "") or "")
