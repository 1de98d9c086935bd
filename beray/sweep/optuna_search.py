"""Optuna TPE for sweeps whose trials report the loss every epoch and the objective once, at the end.

The study's SQLite file lives on the driver's own disk, its only writer: SQLite's locking is unreliable
over NFS (where ``cluster.yaml`` puts the results) and an object store has none. ``StudyCopy`` copies it
to ``RESULTS/optuna.db`` after every trial (what optuna-dashboard opens), and a resumed sweep reads that
copy back when the driver's disk lost it (another head node, a cleaned /tmp)."""

from __future__ import annotations

import hashlib
import os
import tempfile

from ray.tune import Callback
from ray.tune.search.optuna import OptunaSearch

from beray import storage as st

STUDY = "optuna.db"


def local_study(results: str, resume: bool) -> str:
    """The study's file on the driver's disk for the sweep at ``results``: a fresh sweep starts from none
    (an old file of the same name would hand Optuna a finished study), a resumed one from its copy."""
    key = hashlib.sha1(results.encode()).hexdigest()[:12]
    path = os.path.join(tempfile.gettempdir(), "beray-optuna", f"{st.split(results)[1]}-{key}.db")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not resume and os.path.exists(path):
        os.remove(path)
    if resume and not os.path.exists(path) and st.kind(st.join(results, STUDY)) == "file":
        st.write_bytes(path, st.read_bytes(st.join(results, STUDY)))
    return path


class StudyCopy(Callback):
    """Copies the study's local file to ``RESULTS/optuna.db`` whenever a trial ends."""

    def __init__(self, local: str, results: str):
        self.local, self.results = local, results

    def copy(self) -> None:
        if os.path.exists(self.local):
            st.write_bytes(st.join(self.results, STUDY), st.read_bytes(self.local))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.copy()

    def on_trial_error(self, iteration, trials, trial, **info):
        self.copy()


class FinalObjectiveOptuna(OptunaSearch):
    """``OptunaSearch`` that passes Optuna only the reports holding the objective: an epoch's report
    (for ASHA) has none, and OptunaSearch would fail on it. An ASHA-stopped trial ends PRUNED."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self.metric in result:
            super().on_trial_result(trial_id, result)
