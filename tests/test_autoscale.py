"""A sweep on an autoscaling cluster: Ray's fake node provider (the one ``ray.cluster_utils.AutoscalingCluster``
drives) behind a head with no CPU, whose one worker node type may start 2 nodes of 2 CPUs. The sweep starts
on the head alone; its concurrency must follow what the autoscaler may add, not the nodes alive at its start.

The head is started here with ``ray start --block`` in its own session and its own temp folder, not through
``AutoscalingCluster.start``: that runs ``ray stop --force``, which would end every Ray on the machine, the
suite's own included; and the wheel lacks the base config it reads, so the config is written out whole."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile

import pytest

from conftest import _free_port, foreign_lines, tiny_sweep, wait_for

pytestmark = pytest.mark.ray

def _fake_config(gcs: str) -> dict:
    empty = {k: [] for k in ("cluster_synced_files", "rsync_exclude", "rsync_filter", "initialization_commands",
                             "setup_commands", "head_setup_commands", "worker_setup_commands",
                             "head_start_ray_commands", "worker_start_ray_commands")}
    return {"cluster_name": "fake", "max_workers": 2, "idle_timeout_minutes": 5, "upscaling_speed": 1.0,
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                         "disable_launch_config_check": True, "gcs_address": gcs},  # else it assumes port 6379
            "auth": {"ssh_user": "ubuntu"}, "head_node_type": "ray.head.default",
            "available_node_types": {"ray.head.default": {"resources": {}, "node_config": {}, "max_workers": 0},
                                     "cpu2": {"resources": {"CPU": 2}, "node_config": {}, "min_workers": 0,
                                              "max_workers": 2}},
            "file_mounts": {}, "file_mounts_sync_continuously": False, **empty}


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def autoscaling_head(tmp_path):
    """The head's address; its processes and the nodes its autoscaler starts end with the fixture."""
    from ray.util import get_node_ip_address

    temp = tempfile.mkdtemp(prefix="rayas-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    port = _free_port()
    config = tmp_path / "autoscaler.json"
    config.write_text(json.dumps(_fake_config(f"{get_node_ip_address()}:{port}")))
    env = {**os.environ, "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_FAKE_CLUSTER": "1"}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(["ray", "start", "--head", f"--port={port}", "--num-cpus=0", f"--temp-dir={temp}",
                             f"--autoscaling-config={config}", "--block", "--disable-usage-stats",
                             "--include-dashboard=false"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        assert wait_for(lambda: _listening(port), 60), head.stdout.read()[-3000:] if head.poll() is not None else ""
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
        subprocess.run(["pkill", "-9", "-f", temp])  # the fake nodes' processes, started by its monitor


@pytest.mark.timeout(600)
def test_a_sweep_started_on_the_head_alone_runs_as_many_trials_as_the_autoscaler_can_add_nodes_for(
        autoscaling_head, tiny_synth, tmp_path):
    # Each trial holds 1.01 CPUs and needs room for a 0.5-CPU decode task: one per 2-CPU node, two at once on the two nodes
    # the autoscaler may start. The nodes alive at the start (the head, no CPU) would allow one.
    f = tiny_sweep(tmp_path, tiny_synth, "scale", {"be.gamma": {"grid": [0.0, 0.1, 0.2, 0.3]}}, pack=False,
                   resources={"workers": 1, "cpus_per_worker": 1})
    env = {**os.environ, "RAY_ADDRESS": autoscaling_head}
    refused = subprocess.run([sys.executable, "-m", "beray.sweep", str(f), "--dry-run"], env=env, capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode == 2 and refused.stderr.count("\n") <= 2, refused.stderr[-3000:]  # one line, no traceback
    assert "cannot join the Ray cluster of RAY_ADDRESS" in refused.stderr and "RAY_AUTH_MODE=token" in refused.stderr
    env["RAY_AUTH_MODE"] = "token"  # as README's cluster section says: the head started with `ray start` wants it
    dry = subprocess.run([sys.executable, "-m", "beray.sweep", str(f), "--dry-run"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "at most 2 job(s) at once: what the cluster holds at its largest, from the autoscaler's config" in dry.stdout
    # a driver that is not on the head (another node, a laptop through Ray Client) has a task read it there
    probe = subprocess.run([sys.executable, "-c", "import ray; from beray.sweep.driver import _monitor_config; "
                            "ray.init(logging_level='ERROR'); path, tree = _monitor_config(on_head=False); "
                            "print(path, tree['max_workers'])"], env=env, capture_output=True, text=True, timeout=120)
    assert probe.stdout.split() == [str(tmp_path / "autoscaler.json"), "2"], probe.stdout + probe.stderr[-3000:]
    res = subprocess.run([sys.executable, "-m", "beray.sweep", str(f)], env=env, capture_output=True, text=True,
                         timeout=500)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert not foreign_lines(res.stdout, res.stderr), res.stdout + res.stderr
    assert "4 job(s), at most 2 at once" in res.stdout
    records = [json.loads(p.read_text()) for p in (tmp_path / "sweeps" / "scale" / "trials").glob("*.json")]
    assert len(records) == 4 and all(r["status"] == "finished" for r in records), records
    spans = sorted((r["started"], r["ended"], r["node"]) for r in records)
    overlapping = [(a, b) for i, a in enumerate(spans) for b in spans[i + 1:] if b[0] < a[1]]
    # Two at once, on two nodes. A span ends after its trial's evaluation, which holds no trainer CPU: the next
    # trial may train on that node meanwhile, so only some overlapping pair must be on two nodes.
    assert any(a[2] != b[2] for a, b in overlapping), spans
    assert len({node for *_, node in spans}) == 2  # the two nodes the autoscaler added (the head has no CPU)
