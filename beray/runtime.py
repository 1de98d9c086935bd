"""The Ray instance beray runs on: join ``RAY_ADDRESS``'s cluster or start a local one, with the
process settings that keep long runs lean. One place for train, bench, tests and sweeps."""

from __future__ import annotations

import ctypes
import os

import ray

from beray import console

# Ray kills worker processes idle for 1 s by default; a decode task's process then pays the
# imports of torch, torchvision and PyAV again at every epoch (seconds on a small machine).
# Keep them for 10 minutes. On a cluster: `ray start --system-config=...` (README).
SYSTEM_CONFIG = {"idle_worker_killing_time_threshold_ms": 600_000}

# glibc gives each thread its own malloc arena (up to 8 per core) and each arena keeps its
# high-water mark, so under Ray's and Ray Data's threads resident memory ratchets up for tens of
# thousands of clips. Two arenas bound that (`python -m beray.bench soak` measures the growth).
# On a cluster, export it before `ray start` (README).
MALLOC_ARENA_MAX = 2
_M_ARENA_MAX = -8  # mallopt's parameter number, from glibc's malloc.h


def cap_malloc_arenas(n: int = MALLOC_ARENA_MAX) -> None:
    """Cap glibc's malloc arenas at ``n`` in this process (now) and in the processes it starts
    (through MALLOC_ARENA_MAX); a value the user set wins. A no-op without glibc."""
    value = os.environ.setdefault("MALLOC_ARENA_MAX", str(n))
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, int(value))
    except (OSError, AttributeError, ValueError):
        pass  # not glibc, or the user's own value is not a number: glibc ignores it too


def init_ray(**kwargs) -> dict:
    """Join ``RAY_ADDRESS``'s cluster if set, else start a local instance (no-op when connected)."""
    kwargs.setdefault("log_to_driver", True)
    session = console.current()
    if session is not None:
        session.begin()  # from here on Ray's output goes to the command's log, beray's lines to the terminal
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS") or None
        if address is None:
            kwargs.setdefault("_system_config", SYSTEM_CONFIG)
            os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")  # the dashboard's Train page
            cap_malloc_arenas()  # before the raylet starts: its workers inherit the setting
        info = ray.init(address=address, **kwargs).address_info
        if session is not None:
            session.started_ray = True
        pin_data_coordinator()
        return info
    return {}


def missing_local_gpus(per_worker: float, workers: int) -> str | None:
    """Why a Ray instance that beray would start on this machine cannot give ``workers`` workers
    ``per_worker`` GPUs each; None when it can, or when beray joins a running Ray (``RAY_ADDRESS``),
    whose autoscaler may yet add GPU nodes. Ray Train would otherwise wait for them without end."""
    if per_worker <= 0 or ray.is_initialized() or os.environ.get("RAY_ADDRESS"):
        return None
    import torch

    have, need = torch.cuda.device_count(), per_worker * workers
    if need <= have:
        return None
    return (f"run.gpus_per_worker={per_worker:g} with {workers} worker(s) needs {need:g} GPU(s), but this machine "
            f"has {have} and beray would start Ray on it; set run.gpus_per_worker=0, or join a cluster with GPUs "
            "(RAY_ADDRESS)")


def waiting_for_gpus(per_worker: float, workers: int) -> str | None:
    """What a run on a joined cluster waits for while the cluster has fewer GPUs than it asks (its autoscaler
    may add GPU nodes); None when they are there."""
    have, need = ray.cluster_resources().get("GPU", 0), per_worker * workers
    if per_worker <= 0 or have >= need:
        return None
    return (f"waiting for {need:g} GPU(s) ({workers} worker(s) x {per_worker:g}): the cluster has {have:g} now, "
            "and starts the run when its autoscaler adds GPU nodes (Ctrl-C stops)")


def pin_data_coordinator() -> None:
    """Create Ray Data's autoscaling coordinator on the head node before any dataset runs.

    Ray 2.60 creates this detached actor, which every Ray Data execution and Train run of the cluster
    asks for its resource budget, hard-pinned to the node of whichever process first needs it: often a
    worker node. When that node is lost the actor can never restart, and every dataset of the cluster
    stalls ("Cluster resources are not enough to run any task"); the multi-node test caught it. Later
    requests find ours by name. The upstream fix pins it to the head (ray-project/ray#62260)."""
    try:
        from ray.data._internal.cluster_autoscaler import default_autoscaling_coordinator as coordinator
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    except ImportError:  # another Ray: nothing to pin
        return
    head = next((n["NodeID"] for n in ray.nodes()
                 if n["Alive"] and coordinator.HEAD_NODE_RESOURCE_LABEL in n["Resources"]), None)
    if head is not None:
        ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(coordinator._AutoscalingCoordinatorActor).options(
            name="AutoscalingCoordinator", namespace="AutoscalingCoordinator", get_if_exists=True, lifetime="detached",
            scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False)).remote()


def holders() -> list[tuple[str, str, dict[str, float]]]:
    """What holds the cluster's CPUs and GPUs, from Ray's state API: (kind, name, resources) of each running task
    (kind ``task FUNCTION``) and live actor (``actor CLASS``) that asks for any, and of each placement group that is
    not removed and runs none of them (``placement group``: CPUs reserved for what has not started)."""
    from ray.util.state import list_actors, list_placement_groups, list_tasks

    def kept(res: dict) -> dict[str, float]:  # inside a placement group an actor asks for CPU_group_<id>
        out: dict[str, float] = {}
        for k, v in (res or {}).items():
            if (base := k.split("_group_")[0]) in ("CPU", "GPU") and v:
                out[base] = max(out.get(base, 0), v)
        return out

    every = dict(filters=None, detail=True, limit=10_000, raise_on_missing_output=False)
    actors = list_actors(**{**every, "filters": [("state", "!=", "DEAD")]})
    tasks = list_tasks(**{**every, "filters": [("state", "=", "RUNNING")]})
    out = [(f"actor {a.class_name.rsplit('.', 1)[-1]}", a.name or a.actor_id[:8], kept(a.required_resources))
           for a in actors]
    out += [(f"task {t.func_or_class_name}", t.task_id[:8], kept(t.required_resources)) for t in tasks]
    busy = {x.placement_group_id for x in [*actors, *tasks] if kept(x.required_resources)}
    for p in list_placement_groups(**{**every, "filters": [("state", "!=", "REMOVED")]}):
        if p.placement_group_id not in busy:
            total: dict[str, float] = {}
            for b in p.bundles:
                for k, v in kept(b.get("unit_resources", {})).items():
                    total[k] = total.get(k, 0) + v
            out.append(("placement group", p.name or p.placement_group_id, total))
    return [(kind, name, res) for kind, name, res in out if res]


def describe_holders(most: int = 6) -> str:
    """One line: the cluster's free CPUs (and GPUs), and what holds the rest, by kind (``holders``)."""
    from collections import Counter

    free, total = ray.available_resources(), ray.cluster_resources()
    line = ", ".join(f"{free.get(k, 0):g} of {total[k]:g} {k}s free" for k in ("CPU", "GPU") if total.get(k))
    kinds = Counter((kind, tuple(sorted(res.items()))) for kind, _, res in holders())
    held = [f"{n} x {kind} ({', '.join(f'{v:g} {k}' for k, v in res)})" for (kind, res), n in kinds.most_common(most)]
    return f"{line}; held by: {'; '.join(held) or 'nothing that Ray lists'}"
