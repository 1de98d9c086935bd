"""Multi-node on one machine: a head and a second node (``ray.cluster_utils.Cluster``, each with its own
custom resource), a real sweep whose two trials train on different nodes, and the second node killed
(SIGKILL, as a lost machine) mid-trial. The lost trial must resume from its last checkpoint on the surviving node and the sweep must
finish with both trials' results. Results are on a path both nodes see, as on a cluster's shared storage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import _free_port, registered_checkpoints, tiny_sweep

pytestmark = pytest.mark.ray

# The GCS declares a node dead after this many failed health checks this far apart (Ray's defaults,
# 5 x 3 s, are for real networks): a lost node's actors are reported dead, and its trial restarted, sooner.
FAST_HEALTH_CHECKS = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}

EPOCHS = 3


def _raylet_pid(node) -> int:
    return node.all_processes["raylet"][0].process.pid


def _train_workers() -> dict[int, tuple[int, str | None]]:
    """RayTrainWorker pid -> (its raylet's pid, the run dir whose TensorBoard file it holds open, if rank 0)."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if b"RayTrainWorker" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except (OSError, ValueError, IndexError):
            continue  # the process ended while we looked
        run = next((str(Path(link).parent.parent) for link in links if "/tensorboard/events.out" in link), None)
        found[int(pid)] = (ppid, run)
    return found


@pytest.mark.timeout(600)  # two trials, a lost node, a resume: 200 s on the slower of our 2-core machines
def test_a_lost_node_s_trial_resumes_from_its_checkpoint_on_the_surviving_node(tiny_synth, tmp_path, monkeypatch):
    from ray.cluster_utils import Cluster

    # As on a cluster: the dashboard runs (Train's placement-group cleaner asks its state API whether a
    # lost trial's controller is gone), and a worker group waits for resources, not 60 s then anew.
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "600")
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 2, "resources": {"head_node": 1}, "include_dashboard": True,
                                      "dashboard_port": _free_port(), "_system_config": FAST_HEALTH_CHECKS})
    second = cluster.add_node(num_cpus=2, resources={"second_node": 1})
    head_raylet, second_raylet = _raylet_pid(cluster.head_node), _raylet_pid(second)
    try:
        # A trial's worker holds 1.25 CPUs: two cannot share a 2-CPU node, so the trials train on both nodes,
        # and each node keeps room for a 0.5-CPU decode task. The sweep sizes its concurrency itself (2).
        # After the loss the lost trial waits for the head's trial to end, then resumes there.
        f = tiny_sweep(tmp_path, tiny_synth, "nodes", {"be.gamma": {"grid": [0.0, 0.3]}}, retries=2, pack=False,
                       resources={"workers": 1, "cpus_per_worker": 1.25})  # two jobs, one per point
        tree = yaml.safe_load(f.read_text())
        tree["base"]["set"].update({"optim.epochs": EPOCHS, "run.max_failures": 2})
        f.write_text(yaml.safe_dump(tree))
        runs = tmp_path / "sweeps" / "nodes" / "runs"
        proc = subprocess.Popen([sys.executable, "-m", "beray.sweep", str(f)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env={**os.environ, "RAY_ADDRESS": cluster.address})

        victim, on_both, deadline = None, False, time.time() + 200
        while victim is None and time.time() < deadline and proc.poll() is None:
            workers = _train_workers()
            on_both = on_both or {head_raylet, second_raylet} <= {ppid for ppid, _ in workers.values()}
            for ppid, run in workers.values():
                if ppid == second_raylet and run and 1 <= registered_checkpoints(Path(run)) <= 2:
                    victim = Path(run)  # the second node's trial, mid-run, with a checkpoint to resume from
            time.sleep(0.1)
        if victim is None:
            proc.kill()
            raise AssertionError("no trial reached a checkpoint on the second node:\n" + proc.communicate()[0][-4000:])
        assert on_both  # both nodes trained at once
        cluster.remove_node(second, allow_graceful=False)  # the node dies: raylet and its workers, SIGKILL

        out, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, out[-4000:]
        records = {r["trial_id"]: r for r in
                   (json.loads(p.read_text()) for p in (tmp_path / "sweeps" / "nodes" / "trials").glob("*.json"))}
        assert len(records) == 2 and all(r["status"] == "finished" for r in records.values()), records
        lost = records[victim.name]
        assert lost["resumed_from_epoch"] >= 1 and lost["epochs"] == EPOCHS  # continued, not restarted from scratch
        assert f"resumed   {victim.name}" in out
        assert (runs / victim.name / "eval" / "knn-synth-split1.json").is_file()
    finally:
        if "proc" in locals() and proc.poll() is None:
            proc.kill()
        cluster.shutdown()
