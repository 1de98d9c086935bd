"""What a running sweep shows and keeps: one line per trial event and a running count, instead of
Tune's status table, one JSON record per trial in ``RESULTS/trials/`` that the report reads, and the
count of trials in each state as the Ray metric ``beray_sweep_trials`` (the Grafana dashboard's)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ray.tune import Callback
from ray.util.metrics import Gauge

from beray.console import say
from beray.sweep.report import read_records
from beray.sweep.spec import Sweep
from beray.sweep.trial import point_and_seed


REFRESH_S = 5.0  # seconds between refreshes of the trial-count gauge while nothing happens
STATES = ("pending", "running", "finished", "stopped", "failed")
_TUNE_STATE = {"PENDING": "pending", "PAUSED": "pending", "RUNNING": "running", "TERMINATED": "finished",
               "ERROR": "failed"}


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
        # trial id -> finished | stopped | failed: as this callback saw it end, or as a resumed sweep's records say
        self.ended: dict[str, str] = {r["trial_id"]: r["status"] for r in read_records(results)
                                      if r.get("status") in STATES[2:]}
        self.resumed: dict[str, int] = {}  # trial id -> the epoch its run last resumed from
        self._gauge, self._published = None, 0.0

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_gauge": None}  # a metric handle is made again where it is needed

    def counts(self, trials) -> dict[str, int]:
        """Trials per state of ``STATES``; a trial Tune still calls running may already have ended here."""
        counts = dict.fromkeys(STATES, 0)
        for t in trials:
            counts[self.ended.get(t.trial_id) or _TUNE_STATE.get(t.status, "pending")] += 1
        return counts

    def _publish(self, trials) -> dict[str, int]:
        """Set the ``beray_sweep_trials`` gauge from ``counts``; returns them."""
        counts = self.counts(trials)
        if self._gauge is None:
            self._gauge = Gauge("beray_sweep_trials", "Trials of a sweep in each state", tag_keys=("sweep", "state"))
        for state, n in counts.items():
            self._gauge.set(n, tags={"sweep": self.sweep.name, "state": state})
        self._published = time.monotonic()
        return counts

    def on_step_end(self, iteration, trials, **info):
        # Ray stops exporting a gauge about 20 s after its last set: keep the count alive between events.
        if time.monotonic() - self._published > REFRESH_S:
            self._publish(trials)

    def _say(self, trials, text: str) -> None:
        """``text`` with the counts, also set on the ``beray_sweep_trials`` gauge."""
        counts = self._publish(trials)
        done = counts["finished"] + counts["stopped"] + counts["failed"]
        say(f"[{time.strftime('%H:%M:%S')}] {text}   ({done} done, {counts['running']} running, "
            f"{counts['pending']} pending)")

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
        resumed = result.get("resumed_from_epoch") or 0
        if resumed and self.resumed.get(trial.trial_id) != resumed:  # a new attempt of its run
            self.resumed[trial.trial_id] = resumed
            self._say(trials, f"resumed   {self._label(trial)} from its checkpoint of epoch {resumed}")
        value = result.get(self.metric)
        shown = f"{self.metric} {value:.4f}" if isinstance(value, (int, float)) else ""
        self._say(trials, f"epoch {result.get('epoch', '?'):>3}  {self._label(trial)}  {shown}")

    def _end(self, trial, status: str, **extra) -> None:
        self.ended[trial.trial_id] = status
        self._write(trial, status, resumed_from_epoch=self.resumed.get(trial.trial_id), **extra)

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        if last.get("finished"):
            self._end(trial, "finished", objective=last["objective"], epochs=last.get("epoch"),
                      results={k[5:]: v for k, v in last.items() if k.startswith("eval/")},
                      run_dir=last.get("run_dir"))
            self._say(trials, f"finished  {self._label(trial)}  objective {last['objective']:.4f}")
        else:  # ended without its evaluation: the scheduler stopped it
            self._end(trial, "stopped", epochs=last.get("epoch"), metric={self.metric: last.get(self.metric)})
            self._say(trials, f"stopped early (ASHA) {self._label(trial)} at epoch {last.get('epoch')}, "
                              f"{self.metric} {last.get(self.metric)}")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._say(trials, f"retrying  {self._label(trial)} after a failure (from its last checkpoint)")

    def on_trial_error(self, iteration, trials, trial, **info):
        error = _error(trial)
        self._end(trial, "failed", error=error)
        self._say(trials, f"failed    {self._label(trial)}: {error.splitlines()[-1] if error else '?'}")


def _error(trial) -> str:
    """The trial's error as Tune stored it (its last lines name the exception)."""
    for attr in ("error_file", "path"):
        path = getattr(trial, attr, None)
        if attr == "path" and path:
            path = str(Path(path) / "error.txt")
        if path and Path(path).is_file():
            return Path(path).read_text().strip()[-2000:]
    return str(getattr(trial, "error_msg", "") or "")
