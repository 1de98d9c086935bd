"""Run a sweep with Ray Tune: grid or random points (each with every seed) or Optuna TPE, FIFO or ASHA,
trials that are Ray Train runs sharing the cluster, resume, and the report at the end.

A trial's driver is a Tune function trainable holding a token 0.01 CPU; its Train workers and
decode tasks hold the resources. Concurrent trials are capped at what the cluster holds (each needs
its workers' CPUs and GPUs plus room for ``resources.decode_tasks`` decode tasks of its own), so a
trial that cannot be placed waits for one to finish, and the trials' workers cannot take every CPU
that their pipelines need.
"""

from __future__ import annotations

import math
import os
import time

import yaml

from beray import storage as st
from beray.config import ConfigError
from beray.sweep.spec import Sweep

DRIVER_CPU = 0.01  # a trial's own process: it waits on its Train run
UNLIMITED = 64  # nodes counted for an autoscaler's node group that has no max_workers


def results_dir(sweep: Sweep) -> str:
    """``STORAGE/NAME``: a local folder, or a URI (``s3://...``) that every node of a cluster reaches."""
    return st.join(st.resolve(sweep.storage), sweep.name)


def trial_resources(sweep: Sweep) -> tuple[float, float, float]:
    """(CPUs a trial holds while it runs, CPUs of one decode task, GPUs): it holds its driver and its Train
    workers, or while it evaluates a model actor of at most their share."""
    cfg = sweep.run_config({}, 0, check_paths=False)
    r = sweep.resources
    return DRIVER_CPU + r.workers * r.cpus_per_worker, cfg.data.decode_cpus, r.workers * r.gpus_per_worker


def _slots(sweep: Sweep, node: dict) -> int:
    """Train workers of the sweep that ``node`` holds, each whole (with a trial driver's token beside it)."""
    r = sweep.resources
    n = math.floor(node.get("CPU", 0) / (r.cpus_per_worker + DRIVER_CPU) + 1e-9)
    if r.gpus_per_worker:
        n = min(n, math.floor(node.get("GPU", 0) / r.gpus_per_worker + 1e-9))
    return max(n, 0)


def _decode_slots(sweep: Sweep, nodes: list[dict], trials: int) -> int | None:
    """Decode tasks that ``nodes`` hold, each whole on one node, beside the Train workers of ``trials`` trials
    placed on the nodes that hold the most; None where those workers do not fit."""
    r = sweep.resources
    _, decode, _ = trial_resources(sweep)
    need, free = trials * r.workers, 0
    for node in sorted(nodes, key=lambda n: _slots(sweep, n), reverse=True):
        placed = min(_slots(sweep, node), need)
        need -= placed
        free += math.floor((node.get("CPU", 0) - placed * (r.cpus_per_worker + DRIVER_CPU)) / decode + 1e-9)
    return free if need == 0 else None


def max_concurrent(sweep: Sweep, nodes: list[dict]) -> int:
    """``resources.max_concurrent`` or, unset, as many trials as the ``nodes`` (each one's resources) hold now,
    each with its Train workers (each whole on one node: two nodes with 0.49 CPUs free each cannot run a 0.5-CPU
    task) and room left for ``resources.decode_tasks`` decode tasks of its own (each whole on one node): then the
    trials' workers cannot take every CPU that their pipelines need. At least 1 (it waits for room)."""
    r = sweep.resources
    if r.max_concurrent:
        return r.max_concurrent
    most = sum(_slots(sweep, n) for n in nodes) // r.workers
    fits = [t for t in range(1, most + 1) if (_decode_slots(sweep, nodes, t) or 0) >= t * r.decode_tasks]
    return max(fits, default=1)


def alive_nodes() -> list[dict]:
    import ray

    return [n["Resources"] for n in ray.nodes() if n["Alive"]]


def _monitor_config(on_head: bool | None = None) -> tuple[str, dict] | None:
    """(path, contents) of the file the autoscaler (v1, as ``ray up`` starts it) reads its node types from: the
    ``--autoscaling-config`` of this cluster's monitor process. The monitor runs on the head: where the driver
    runs elsewhere (another node, a laptop through Ray Client) it is read there, by a task (``on_head``: the
    driver's node is the head; None: ask Ray)."""
    import ray
    import ray.util.client

    head = _head_node()
    if on_head is None:  # a Ray Client driver's runtime context is its server's, on the head: it runs elsewhere
        on_head = not ray.util.client.ray.is_connected() and ray.get_runtime_context().get_node_id() == (
            head or {}).get("NodeID")
    if on_head or head is None:
        return _read_monitor_config()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    read = ray.remote(num_cpus=0, max_retries=0)(_read_monitor_config)
    return ray.get(read.options(scheduling_strategy=NodeAffinitySchedulingStrategy(head["NodeID"], soft=False)).remote())


def _head_node() -> dict | None:
    """The head node's entry in ``ray.nodes()`` (None while it is not alive)."""
    import ray

    return next((n for n in ray.nodes() if n["Alive"] and "node:__internal_head__" in n["Resources"]), None)


def _read_monitor_config() -> tuple[str, dict] | None:
    """``_monitor_config`` on the head node."""
    import psutil
    import ray

    gcs = f"--gcs-address={ray.get_runtime_context().gcs_address}"
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if gcs in cmd and any(c.endswith("autoscaler/_private/monitor.py") for c in cmd):
            for c in cmd:
                if c.startswith("--autoscaling-config="):
                    path = os.path.expanduser(c.split("=", 1)[1])
                    with open(path) as f:
                        return path, yaml.safe_load(f)
    return None


def sweep_changes(results: str, sweep: Sweep) -> str:
    """What ``sweep`` changes in the sweep stored in ``results`` (``field: stored -> given``, comma-separated;
    empty: nothing). Where its file came from may differ."""
    from beray.config import changed_fields

    stored = st.join(results, "sweep.yaml")
    if st.kind(stored) != "file":
        return ""
    changed = changed_fields(yaml.safe_load(st.read_text(stored)) or {}, sweep.dump(), ("source",))
    return ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())


def autoscaled_nodes(sweep: Sweep) -> tuple[list[dict], str] | None:
    """Each node's resources once the autoscaler has started every node its config allows (the head as it
    is now), and where that came from; None on a cluster without an autoscaler."""
    import ray
    import ray._private.state

    head = [h["Resources"]] if (h := _head_node()) else []
    config = ray._private.state.state.get_cluster_config()  # autoscaler v2 (KubeRay, ...)
    if config is not None and config.node_group_configs:
        groups, budget = [(dict(g.resources), g.max_count) for g in config.node_group_configs], -1
        source = "the autoscaler's node groups"
    elif found := _monitor_config():
        path, tree = found
        types, budget = tree.get("available_node_types") or {}, tree.get("max_workers", -1)
        groups = [(t.get("resources") or {}, t.get("max_workers", budget)) for name, t in types.items()
                  if name != tree.get("head_node_type")]
        source = f"the autoscaler's config ({path}: max_workers per node type, {budget} in all)"
    else:
        return None
    return head + scaled_workers(sweep, groups, budget), source


def scaled_workers(sweep: Sweep, groups: list[tuple[dict, int]], budget: int = -1) -> list[dict]:
    """The worker nodes of node ``groups`` (resources, most nodes; a negative most: no limit, counted as
    ``UNLIMITED``), at most ``budget`` in all when it is not negative (``ray up``'s ``max_workers`` bounds
    every type together): then those that hold the most of the sweep's trials."""
    workers = [res for res, most in groups for _ in range(most if most >= 0 else UNLIMITED)]
    if budget < 0 or len(workers) <= budget:
        return workers
    return sorted(workers, key=lambda res: (max_concurrent(sweep, [res]), res.get("GPU", 0), res.get("CPU", 0)),
                  reverse=True)[:budget]


def concurrency(sweep: Sweep, trials: int) -> tuple[int, str]:
    """How many trials run at once, and why: ``resources.max_concurrent``; else what the cluster holds at
    the autoscaler's maximum (Tune queues the rest, and the autoscaler sees their demand and adds nodes);
    else, on a fixed cluster, what its nodes hold now."""
    if sweep.resources.max_concurrent:
        return sweep.resources.max_concurrent, "resources.max_concurrent"
    if (scaled := autoscaled_nodes(sweep)) is not None:
        nodes, source = scaled
        return min(trials, max_concurrent(sweep, nodes)), f"what the cluster holds at its largest, from {source}"
    nodes = alive_nodes()
    return max_concurrent(sweep, nodes), f"what the {len(nodes)} node(s) alive hold (no autoscaler)"


def param_space(sweep: Sweep) -> dict:
    from ray import tune

    from beray.sweep.trial import PACK_KEY, POINT_KEY, SEED_KEY

    if sweep.search.algorithm != "optuna":  # every trial known up front: points x seeds, in packs
        packs = sweep.packs(sweep.validate_trials(check_paths=False))
        return {PACK_KEY: tune.grid_search([[{POINT_KEY: p, SEED_KEY: s} for p, s, _ in pack] for pack in packs])}
    space = {}
    for key, d in sweep.space.items():
        if d.kind in ("grid", "choice"):
            space[key] = tune.choice(list(d.values))  # OptunaSearch refuses grid_search
        else:
            space[key] = {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[d.kind](*d.values)
    return space


def searcher(sweep: Sweep, study: str | None):
    if sweep.search.algorithm != "optuna":
        return None
    import optuna
    from ray.tune.search import Repeater

    from beray.sweep.optuna_search import FinalObjectiveOptuna

    storage = optuna.storages.RDBStorage(f"sqlite:///{study}")  # a local file (optuna_search's docstring says why)
    search = FinalObjectiveOptuna(metric="objective", mode=sweep.objective.mode, study_name=sweep.name, storage=storage,
                          seed=sweep.search.seed)
    seeds = len(sweep.seed_list)
    return Repeater(search, repeat=seeds) if seeds > 1 else search  # each point with every seed, averaged


def scheduler(sweep: Sweep):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    s = sweep.scheduler
    if s.name == "fifo":
        return FIFOScheduler()
    epochs = sweep.run_config({}, 0, check_paths=False).optim.epochs
    return ASHAScheduler(time_attr="training_iteration", metric=s.metric, mode=s.mode, max_t=epochs + 1,
                         grace_period=s.grace_period, reduction_factor=s.reduction_factor)


def run_sweep(sweep: Sweep, resume: bool = False) -> str:
    """Run (or with ``resume`` continue) ``sweep``; returns the report's markdown."""
    import os

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's legacy reporter honours verbose=0: no tables
    # The epochs' reports carry the loss (ASHA's metric), only the last one the objective (the searcher's)
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    import logging

    from ray import tune

    logging.getLogger("ray.tune").setLevel(logging.WARNING)
    from beray.runtime import init_ray
    from beray.sweep.optuna_search import StudyCopy, local_study
    from beray.sweep.progress import SweepProgress, ended, total_points
    from beray.sweep.report import write_report
    from beray.console import say
    from beray.sweep.trial import PACK_KEY, run_trial

    results = results_dir(sweep)
    try:
        state = st.kind(st.join(results, "tuner.pkl")) == "file"
        if resume and not state:
            raise ConfigError(f"--resume: {results} holds no sweep to continue (no tuner.pkl); run it without --resume")
        if not resume and state:
            raise ConfigError(f"{results} already holds sweep {sweep.name!r}: continue it with --resume, or give the "
                              "sweep another name (--set name=...)")
        if resume and (changed := sweep_changes(results, sweep)):
            raise ConfigError(f"--resume: {results} was started with other settings ({changed}); Tune continues a "
                              "sweep with its space, search and trials as they were: resume it unchanged, or start "
                              "a new one (--set name=...)")
        st.write_text(st.join(results, "sweep.yaml"), yaml.safe_dump(sweep.dump(), sort_keys=False))
    except st.FAILURES as e:
        raise ConfigError(f"storage: cannot write the sweep's files to {results}: {e}") from None
    init_ray(log_to_driver=False)  # the trial lines below say what happens; workers' logs stay in Ray's log files
    import ray

    trainable = tune.with_resources(tune.with_parameters(run_trial, sweep=sweep.dump(), runs=st.join(results, "runs")),
                                    {"CPU": DRIVER_CPU})
    callbacks, study = [SweepProgress(sweep, results)], None
    if sweep.search.algorithm == "optuna":
        study = local_study(results, resume)
        callbacks.append(StudyCopy(study, results))
    if resume:
        tuner = tune.Tuner.restore(results, trainable, resume_unfinished=True, resume_errored=False)
    else:
        seeds = len(sweep.seed_list)
        num = sweep.search.samples * seeds if sweep.search.algorithm == "optuna" else 1
        jobs = num if sweep.search.algorithm == "optuna" else len(param_space(sweep)[PACK_KEY]["grid_search"])
        bound, why = concurrency(sweep, jobs)
        say(f"[{time.strftime('%H:%M:%S')}] sweep {sweep.name}: {jobs} job(s), at most {bound} at once: {why}")
        tuner = tune.Tuner(
            trainable, param_space=param_space(sweep),
            tune_config=tune.TuneConfig(search_alg=searcher(sweep, study), scheduler=scheduler(sweep),
                                        num_samples=num, max_concurrent_trials=bound, reuse_actors=False),
            run_config=tune.RunConfig(name=sweep.name, storage_path=st.split(results)[0], verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=sweep.retries),
                                      callbacks=callbacks))
    tuner.fit()
    if len(ended(results)) < total_points(sweep):
        # a Ctrl-C: Tune stops its trials and saves its state, then returns
        raise KeyboardInterrupt
    return write_report(results, sweep)
