"""What a running sweep shows and keeps: one line per trial event and a running count, instead of
Tune's status table, one JSON record per trial in ``RESULTS/trials/`` that the report reads, and the
count of trials in each state as the Ray metric ``beray_sweep_trials`` (the Grafana dashboard's)."""

from __future__ import annotations

import json
import time

from ray.tune import Callback
from ray.util.metrics import Gauge

from beray import storage as st
from beray.console import say
from beray.sweep.report import read_records
from beray.sweep.spec import Sweep
from beray.sweep.trial import members_of


REFRESH_S = 5.0  # seconds between refreshes of the trial-count gauge while nothing happens
STATES = ("pending", "running", "finished", "stopped", "failed")
_TUNE_STATE = {"PENDING": "pending", "PAUSED": "pending", "RUNNING": "running", "TERMINATED": "finished",
               "ERROR": "failed"}


def describe(point: dict, seed: int) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in point.items()) + f" seed={seed}"


class SweepProgress(Callback):
    """Prints ``started``, each epoch's intermediate metric, ``stopped early``, ``finished`` and ``failed``
    lines with a done / running / pending count, and writes each point's record. A trial that trains a
    pack has one line and one record per member, keyed ``TRIAL/MEMBER`` (its run folder under ``runs/``)."""

    def __init__(self, sweep: Sweep, results: str):
        self.sweep = sweep  # no open streams held: Tune pickles its callbacks with the experiment state
        self.results, self.records = results, st.join(results, "trials")
        self.metric = sweep.scheduler.metric
        self.ended: dict[str, str] = ended(results)  # point key -> finished | stopped | failed
        self.resumed: dict[str, int] = {}  # trial id -> the epoch its run last resumed from
        self.started: dict[str, float] = {}  # point key -> when its trial last started (Unix time)
        self.total = total_points(sweep)
        self._gauge, self._published = None, 0.0

    def setup(self, **info):
        # --resume: Tune restores this callback as it was pickled when the sweep started; the records say what
        # has ended since
        self.ended = ended(self.results)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_gauge": None}  # a metric handle is made again where it is needed

    def _points(self, trial) -> list[tuple[str, str, dict, int]]:
        """(record key, member name, point, seed) of each point ``trial`` trains."""
        return [(f"{trial.trial_id}/{m}" if m else trial.trial_id, m, point, seed)
                for m, point, seed in members_of(trial.config, self.sweep)]

    def counts(self, trials, starting=None) -> dict[str, int]:
        """Points per state of ``STATES``; a point Tune still calls running may already have ended here, and
        the ``starting`` trial is running although Tune calls it pending until its start has been told."""
        counts = dict.fromkeys(STATES, 0)
        for t in trials:
            state = "running" if t is starting else _TUNE_STATE.get(t.status, "pending")
            for key, *_ in self._points(t):
                counts[self.ended.get(key) or state] += 1
        counts["pending"] += max(0, self.total - sum(counts.values()))  # points Tune has not made trials of yet
        return counts

    def _publish(self, trials, starting=None) -> dict[str, int]:
        """Set the ``beray_sweep_trials`` gauge from ``counts``; returns them."""
        counts = self.counts(trials, starting)
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

    def _say(self, trials, text: str, starting=None) -> None:
        """``text`` with the counts, also set on the ``beray_sweep_trials`` gauge."""
        counts = self._publish(trials, starting)
        done = counts["finished"] + counts["stopped"] + counts["failed"]
        say(f"[{time.strftime('%H:%M:%S')}] {text}   ({done} done, {counts['running']} running, "
            f"{counts['pending']} pending)")

    def _write(self, key: str, point: dict, seed: int, status: str, **extra) -> None:
        record = {"trial_id": key, "point": point, "seed": seed, "status": status, **extra}
        st.write_text(st.join(self.records, key.replace("/", "+") + ".json"), json.dumps(record, indent=2, default=str) + "\n")

    def on_trial_start(self, iteration, trials, trial, **info):
        for key, _, point, seed in self._points(trial):
            if key not in self.ended:  # a restarted pack trains its members that ended no further
                self.started[key] = time.time()
                self._say(trials, f"started   {key} {describe(point, seed)}", starting=trial)
                self._write(key, point, seed, "running", started=self.started[key])

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("finished") or result.get("no_data"):  # no_data: the trial's end reports it failed
            return
        resumed = result.get("resumed_from_epoch") or 0
        if resumed and self.resumed.get(trial.trial_id) != resumed:  # a new attempt of its run
            self.resumed[trial.trial_id] = resumed
            self._say(trials, f"resumed   {trial.trial_id} from its checkpoint of epoch {resumed}")
        failed = result.get("failed") or {}
        per_member = result.get("members") or {}
        for key, m, point, seed in self._points(trial):
            if key in self.ended:
                continue
            if m in failed:  # a pack's member whose loss went non-finite: the others go on
                self._fail(trials, trial, key, point, seed, failed[m])
                continue
            value = (per_member.get(m, {}) if m else result).get(self.metric)
            shown = f"{self.metric} {value:.4f}" if isinstance(value, (int, float)) else ""
            self._say(trials, f"epoch {result.get('epoch', '?'):>3}  {key} {describe(point, seed)}  {shown}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        if not last.get("finished"):  # ended without its evaluation: the scheduler stopped it (never a pack)
            for key, _, point, seed in self._points(trial):
                self._end(trial, key, point, seed, "stopped", epochs=last.get("epoch"),
                          metric={self.metric: last.get(self.metric)})
                self._say(trials, f"stopped early (ASHA) {key} {describe(point, seed)} at epoch {last.get('epoch')}, "
                                  f"{self.metric} {last.get(self.metric)}")
            return
        per_member, failed = last.get("members") or {"": last}, last.get("failed") or {}
        for key, m, point, seed in self._points(trial):
            if key in self.ended:
                continue
            if m in failed:
                self._fail(trials, trial, key, point, seed, failed[m])
                continue
            done = per_member[m]
            self._end(trial, key, point, seed, "finished", objective=done["objective"], epochs=done.get("epoch"),
                      loss=done.get("loss"), results={k[5:]: v for k, v in done.items() if k.startswith("eval/")},
                      run_dir=done.get("run_dir"))
            self._say(trials, f"finished  {key} {describe(point, seed)}  objective {done['objective']:.4f}")

    def _end(self, trial, key: str, point: dict, seed: int, status: str, **extra) -> None:
        self.ended[key] = status
        self._write(key, point, seed, status, resumed_from_epoch=self.resumed.get(trial.trial_id),
                    started=self.started.get(key), ended=time.time(), node=(trial.last_result or {}).get("node"),
                    **extra)

    def _fail(self, trials, trial, key: str, point: dict, seed: int, error: str) -> None:
        self._end(trial, key, point, seed, "failed", error=error)
        self._say(trials, f"failed    {key} {describe(point, seed)}: {error.splitlines()[-1] if error else '?'}")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._say(trials, f"retrying  {trial.trial_id} ({', '.join(describe(p, s) for *_, p, s in self._points(trial))})"
                          " after a failure (from its last checkpoint)")

    def on_trial_error(self, iteration, trials, trial, **info):
        error = _error(trial)
        for key, _, point, seed in self._points(trial):
            if key not in self.ended:
                self._fail(trials, trial, key, point, seed, error)


def ended(results: str) -> dict[str, str]:
    """Point key -> finished | stopped | failed, as the sweep's records say."""
    return {r["trial_id"]: r["status"] for r in read_records(results) if r.get("status") in STATES[2:]}


def total_points(sweep: Sweep) -> int:
    """Every point with every seed (Tune makes trials only as max_concurrent_trials lets it)."""
    points = sweep.search.samples if sweep.search.algorithm == "optuna" else len(sweep.points())
    return points * len(sweep.seed_list)


def _error(trial) -> str:
    """The trial's error as Tune stored it (its last lines name the exception): the driver's staging copy,
    else the one in the sweep's storage (``Trial.get_error`` reads it through its file system)."""
    local = getattr(trial, "error_file", None)
    try:
        text = st.read_text(local) if local else trial.get_error()
    except (FileNotFoundError, OSError):
        text = trial.get_error()
    return str(text or getattr(trial, "error_msg", "") or "").strip()[-2000:]
