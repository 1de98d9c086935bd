"""One trial of a sweep: a pretraining run (``beray.train``'s Ray Train job, resumed from its own
checkpoints when the trial restarts) that reports every epoch to Tune, then its evaluation, whose
results and the objective are the trial's last report."""

from __future__ import annotations

from typing import Any

from beray.sweep.spec import Sweep

SEED_KEY = "seed"
POINT_KEY = "point"


def point_and_seed(config: dict, sweep: Sweep) -> tuple[dict[str, Any], int]:
    """The trial's point of the space and its seed, from the config Tune gave it: grid and random
    search pass ``point`` and ``seed``; Optuna passes the fields, and its Repeater an index."""
    if POINT_KEY in config:
        return dict(config[POINT_KEY]), int(config[SEED_KEY])
    point = {k: v for k, v in config.items() if k in sweep.space}
    return point, sweep.seed_list[int(config.get("__trial_index__", 0))]


def flatten(tree: dict, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of nested results as ``a/b/c`` keys (Tune's own separator)."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out


def run_trial(config: dict, sweep: dict, runs: str) -> None:
    """Tune function trainable: pretrain, evaluate, report. ``sweep`` is the Sweep as data, ``runs``
    the storage of every trial's run (its name is the trial id: stable across restarts)."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from beray.eval.run import EvalOptions, evaluate
    from beray.sweep.spec import _sets
    from beray.train.launch import fit

    s = Sweep.model_validate(sweep)
    point, seed = point_and_seed(config, s)
    name = tune.get_context().get_trial_id()
    cfg = s.run_config(point, seed, storage=runs, name=name)
    info = fit(cfg, name, callbacks=[TuneReportCallback()])
    e = s.eval
    r = s.resources  # the evaluation holds no more than the training did: concurrent trials cannot starve
    opts = EvalOptions(dataset=e.dataset, root=e.root, split=e.split, overrides=_sets(e.set), k=e.k, clips=e.clips,
                       progress=False, actors=1, actor_cpus=min(1.0, r.workers * r.cpus_per_worker),
                       actor_gpus=min(1.0, r.workers * r.gpus_per_worker))
    results, floors = {}, {}
    for stem, report, directory in evaluate(e.mode, info.checkpoint, opts):
        report.write(directory, stem)
        results = report.data["results"]  # finetune with several splits: the last is their mean
        floors = report.data.get("floors", {})  # background: chance and a background reader, for the report
    metrics = flatten(results, "eval/")
    key = "eval/" + s.objective.metric.replace(".", "/")
    if key not in metrics:
        raise KeyError(f"objective.metric {s.objective.metric!r} is not in the {e.mode} results; they have: "
                       + ", ".join(k[5:].replace("/", ".") for k in metrics))
    last = {k: v for k, v in info.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    tune.report({**last, **metrics, **flatten(floors, "eval/floor/"), "objective": metrics[key], "run_dir": info.dir,
                 "finished": True})
