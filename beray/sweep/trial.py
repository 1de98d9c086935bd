"""One trial of a sweep: a pretraining run (``beray.train``'s Ray Train job, resumed from its own
checkpoints when the trial restarts) that reports every epoch to Tune, then its evaluation, whose
results and the objective are the trial's last report.

A trial of grid or random search trains a pack: the points that read the same stream (``Sweep.packs``),
given as ``{"pack": [{"point": ..., "seed": ...}, ...]}``. A pack of one is an ordinary run; a larger
pack's members each keep their own folder (``RUN/MEMBER``), evaluation and, in the trial's last report,
their own results under ``members`` (and ``failed``: the members whose loss went non-finite, with why)."""

from __future__ import annotations

from typing import Any

from beray.sweep.spec import Sweep

SEED_KEY = "seed"
POINT_KEY = "point"
PACK_KEY = "pack"


def point_and_seed(config: dict, sweep: Sweep) -> tuple[dict[str, Any], int]:
    """The trial's point of the space and its seed, from the config Tune gave it: grid and random
    search pass ``point`` and ``seed``; Optuna passes the fields, and its Repeater an index."""
    if POINT_KEY in config:
        return dict(config[POINT_KEY]), int(config[SEED_KEY])
    point = {k: v for k, v in config.items() if k in sweep.space}
    return point, sweep.seed_list[int(config.get("__trial_index__", 0))]


def members_of(config: dict, sweep: Sweep) -> list[tuple[str, dict[str, Any], int]]:
    """(member name, point, seed) of every point a trial trains; the name is "" for a trial of one point
    (its run folder is the trial's), else the member's folder inside the trial's run."""
    from beray.sweep.spec import _sets
    from beray.train.pack import member_name

    pack = config.get(PACK_KEY)
    if pack is None or len(pack) == 1:
        return [("", *point_and_seed(pack[0] if pack else config, sweep))]
    return [(member_name(_sets(m[POINT_KEY])), dict(m[POINT_KEY]), int(m[SEED_KEY])) for m in pack]


def numbers(metrics: dict) -> dict[str, float]:
    """The numeric entries of a metrics dict (what Tune and the trial records keep of a run's last epoch)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


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
    """Tune function trainable: pretrain the trial's pack, evaluate each member, report. ``sweep`` is the
    Sweep as data, ``runs`` the storage of every trial's run (its name is the trial id: stable across restarts)."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from beray import storage as st
    from beray.data.datasets import DatasetError
    from beray.eval.extract import decode_spent
    from beray.sweep.spec import _sets
    from beray.train.launch import fit

    s = Sweep.model_validate(sweep)
    members = members_of(config, s)
    name = tune.get_context().get_trial_id()
    _, point, seed = members[0]  # the members share every setting the job reads: the first one's config is the job's
    cfg = s.run_config(point, seed, storage=runs, name=name)
    packed = bool(members[0][0])
    try:
        info = fit(cfg, name, callbacks=[TuneReportCallback()],
                   members=[_sets(p) for _, p, _ in members] if packed else [])
    except (FloatingPointError, DatasetError) as e:  # a loss gone non-finite (a run of one), or no full batch:
        tune.report({"failed": {m: str(e) for m, _, _ in members}, "finished": True})  # failed, and not retried
        return
    failed = info.metrics.get("failed", {})
    live = [m for m, _, _ in members if m not in failed]
    before = decode_spent()
    scored = _scored(s, [st.join(info.checkpoint, m) if m else info.checkpoint for m in live])
    # what this attempt's job spent decoding, training and evaluating: the whole pack's (bench sweep --pack)
    (after_s, after_clips), (before_s, before_clips) = decode_spent(), before
    spent = {"decode_cpu_s": info.metrics["decode_cpu_s"], "decode_clips": info.metrics["decode_clips"],
             "eval_decode_cpu_s": after_s - before_s, "eval_decode_clips": after_clips - before_clips}
    node = info.metrics.get("node")  # where its rank 0 trained (the sweep's records keep it)
    failed = {**failed, **{m: sc["failed"] for m, sc in zip(live, scored) if "failed" in sc}}  # in its evaluation
    if not packed and not failed:
        tune.report({**numbers(info.metrics), **scored[0], **spent, "run_dir": info.dir, "node": node, "finished": True})
        return
    done = {m: {**numbers(info.metrics["members"][m]), **sc, "run_dir": st.join(info.dir, m)}
            for m, sc in zip(live, scored) if "failed" not in sc}
    tune.report({"members": done, "failed": failed, **spent, "node": node, "finished": True})


def _scored(s: Sweep, checkpoints: list[str]) -> list[dict]:
    """Each checkpoint's evaluation: its results (``eval/...``), the evaluation's floors and the objective,
    as a trial record keeps them; a pack's checkpoints evaluated together. A member whose fine-tuning stopped:
    ``{"failed": why}``."""
    from beray.eval.run import EvalOptions, evaluate_together
    from beray.sweep.spec import _sets

    e = s.eval
    r = s.resources  # the evaluation holds no more than the training did: concurrent trials cannot starve
    opts = EvalOptions(dataset=e.dataset, root=e.root, split=e.split, overrides=_sets(e.set), k=e.k, clips=e.clips,
                       progress=False, actors=1, actor_cpus=min(1.0, r.workers * r.cpus_per_worker),
                       actor_gpus=min(1.0, r.workers * r.gpus_per_worker))
    out = []
    for reports in evaluate_together(e.mode, checkpoints, opts):
        results, floors = {}, {}
        for stem, report, directory in reports:
            report.write(directory, stem)
            results = report.data["results"]  # finetune with several splits: the last is their mean
            floors = report.data.get("floors", {})  # background: chance and a background reader, for the report
        if why := next((r.data["failed"] for _, r, _ in reports if r.data.get("failed")), None):
            out.append({"failed": f"evaluation ({e.mode}): {why}"})  # a pack's member's fine-tuning stopped
            continue
        metrics = flatten(results, "eval/")
        key = "eval/" + s.objective.metric.replace(".", "/")
        if key not in metrics:
            raise KeyError(f"objective.metric {s.objective.metric!r} is not in the {e.mode} results; they have: "
                           + ", ".join(k[5:].replace("/", ".") for k in metrics))
        out.append({**metrics, **flatten(floors, "eval/floor/"), "objective": metrics[key]})
    return out
