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

# A tiny epoch takes half a second here: the victim is picked at its first or second checkpoint, and it must
# still be training when the node dies (which takes Ray a moment), not resume from its last checkpoint with
# nothing left to run, so several epochs stay ahead of it.
EPOCHS = 8


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
        while not (victim and on_both) and time.time() < deadline and proc.poll() is None:
            workers = _train_workers()
            on_both = on_both or {head_raylet, second_raylet} <= {ppid for ppid, _ in workers.values()}
            # the second node's trial, mid-run, with a checkpoint to resume from (picked anew until both trained)
            victim = next((Path(run) for ppid, run in workers.values()
                           if ppid == second_raylet and run and 1 <= registered_checkpoints(Path(run)) <= 2), None)
            time.sleep(0.1)
        if not (victim and on_both):  # both nodes must have trained at once, one trial mid-run on the second
            proc.kill()
            raise AssertionError(f"no trial mid-run on the second node (victim {victim}) while both trained "
                                 f"(on both: {on_both}):\n" + proc.communicate()[0][-4000:])
        cluster.remove_node(second, allow_graceful=False)  # the node dies: raylet and its workers, SIGKILL

        out, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, out[-4000:]
        records = {r["trial_id"]: r for r in
                   (json.loads(p.read_text()) for p in (tmp_path / "sweeps" / "nodes" / "trials").glob("*.json"))}
        assert len(records) == 2 and all(r["status"] == "finished" for r in records.values()), records
        lost = records[victim.name]
        # continued, not restarted from scratch
        assert 1 <= (lost["resumed_from_epoch"] or 0) < EPOCHS and lost["epochs"] == EPOCHS, (lost, out[-6000:])
        assert f"resumed   {victim.name}" in out, out[-6000:]
        assert (runs / victim.name / "eval" / "knn-synth-split1.json").is_file()
    finally:
        if "proc" in locals() and proc.poll() is None:
            proc.kill()
        cluster.shutdown()


@pytest.mark.timeout(300)
def test_a_node_that_cannot_see_the_data_stops_the_run_in_one_line_naming_it(tiny_synth, tmp_path):
    # The second node joins from a mount namespace (unshare -m) with an empty tmpfs over the data root: it sees
    # the folder, empty, as a node would whose shared file system is not mounted.
    from ray.cluster_utils import Cluster

    from conftest import foreign_lines, tiny_overrides, wait_for

    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 2})
    head = set(cluster.global_state._live_node_ids())
    blind = subprocess.Popen(["unshare", "-m", "sh", "-c", f"mount -t tmpfs tmpfs {tiny_synth} && exec ray start "
                              f"--address={cluster.address} --num-cpus=1 --block --disable-usage-stats"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        assert wait_for(lambda: len(cluster.global_state._live_node_ids()) == 2, 60), blind.stdout.read()[-3000:]
        blind_id = (set(cluster.global_state._live_node_ids()) - head).pop()
        sets = [a for o in tiny_overrides(tiny_synth, tmp_path / "runs", "blind", epochs=1) + ["run.workers=1"]
                for a in ("--set", o)]
        env = {**os.environ, "RAY_ADDRESS": cluster.address}
        res = subprocess.run([sys.executable, "-m", "beray.train", "--preset", "cpu-tiny", *sets], env=env,
                             capture_output=True, text=True, timeout=200)
        assert res.returncode == 2, res.stdout[-3000:] + res.stderr[-3000:]
        errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and f"(id {blind_id[:12]}) cannot see the training data" in errors[0], res.stderr
        assert str(tiny_synth) in errors[0] and "storage every node mounts" in errors[0] and "data.root" in errors[0]
        assert not foreign_lines(res.stdout, res.stderr), res.stdout + res.stderr
        assert not list((tmp_path / "runs").glob("blind/checkpoint_*"))  # stopped before any training
    finally:
        os.killpg(blind.pid, 9)
        blind.wait()
        cluster.shutdown()
