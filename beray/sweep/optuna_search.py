"""Optuna TPE for sweeps whose trials report the loss every epoch and the objective once, at the end."""

from __future__ import annotations

from ray.tune.search.optuna import OptunaSearch


class FinalObjectiveOptuna(OptunaSearch):
    """``OptunaSearch`` that passes Optuna only the reports holding the objective: an epoch's report
    (for ASHA) has none, and OptunaSearch would fail on it. An ASHA-stopped trial ends PRUNED."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self.metric in result:
            super().on_trial_result(trial_id, result)
