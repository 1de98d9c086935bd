"""Whether the nodes that decode can read the training data. On a cluster the data must be at the same
path on every node (shared storage); a node that cannot see it would otherwise skip video after video as
unreadable until the run has no full batch. ``check_nodes`` names such a node before the run starts;
``blind_here`` lets a decode task on a node that joined later stop the run at its first batch."""

from __future__ import annotations

import os
import re

import ray

from beray.data.datasets import DatasetError

WHAT_TO_DO = ("every node that decodes must see the data at the same path: put it on storage every node mounts "
              "(cluster.yaml's /mnt/efs; BERAY_CACHE there for generated data) and point data.root at it")


class DataNotVisible(DatasetError):
    """A node cannot see the training data; the message names the node, the path and what to do."""

    def __reduce__(self):  # the message across processes (Ray tasks)
        return (type(self), self.args)


def data_root(paths: list[str]) -> str:
    """The deepest folder that holds every one of ``paths`` (the videos' root, whatever the dataset's layout)."""
    return os.path.commonpath([os.path.dirname(p) for p in paths])


def _node() -> str:
    ctx = ray.get_runtime_context()
    return f"node {ray.util.get_node_ip_address()} (id {ctx.get_node_id()[:12]})"


def message(node: str, path: str, root: str) -> str:
    return f"{node} cannot see the training data: {path} is not there (data root {root}); {WHAT_TO_DO}"


def found_in(error: BaseException) -> DataNotVisible | None:
    """The DataNotVisible a decode task raised, read from a failed run's error: Ray wraps it in the task's,
    the dataset's and the Train worker's errors, whose text keeps its message."""
    m = re.search(r"node \S+ \(id \w+\) cannot see the training data: [^\n]*?" + re.escape(WHAT_TO_DO), str(error))
    return DataNotVisible(m.group(0)) if m else None


def blind_here(root: str) -> str | None:
    """This node's ``message`` when it cannot see ``root`` at all (no such folder, or an empty one: a shared
    file system not mounted), None when it can: one missing file under a visible root is a bad video."""
    try:
        with os.scandir(root) as entries:
            if next(entries, None) is not None:
                return None
    except OSError:
        pass
    return message(_node(), root, root)


@ray.remote(num_cpus=0)
def _sees(path: str) -> tuple[str, bool]:
    return _node(), os.path.isfile(path)


def check_nodes(paths: list[str]) -> None:
    """Raise DataNotVisible naming each alive node with CPUs (where decode tasks run) that
    cannot read the first of ``paths``, checked by a task on every such node."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]
    seen = ray.get([_sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote(paths[0])
                    for n in nodes if n != here])  # this node is checked here: a single machine starts no task
    if here in nodes:
        seen.append((_node(), os.path.isfile(paths[0])))
    blind = [node for node, ok in seen if not ok]
    if blind:
        raise DataNotVisible(message(", ".join(blind), paths[0], data_root(paths)))
