"""A real pretraining run on a real local Ray: checkpoints, logs, metrics, failures, bad videos."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import foreign_lines, registered_checkpoints, scraped, tiny_overrides, wait_for
from tbevents import read_events

from beray.config import load_config
from beray.train.checkpoint import STATE_FILE
from beray.train.launch import fit

pytestmark = pytest.mark.ray  # real Ray Train runs and CLI processes


def _checkpoints(run_dir: Path) -> list[Path]:
    return sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())


def _exported(scrapes: list[str], metric: str) -> list[float]:
    """The values of ``metric`` (``ray_beray_NAME{``) that the ``cli`` run's workers exported, over every scrape."""
    return [float(line.rsplit(" ", 1)[1]) for text in scrapes for line in text.splitlines()
            if line.startswith(metric) and 'run="cli"' in line]


def test_cli_two_workers_two_epochs_joins_the_cluster(ray_cluster, tiny_synth, tmp_path):
    env = {**os.environ, "RAY_ADDRESS": ray_cluster["address"]}
    metrics = ("ray_beray_clips_per_s{", "ray_beray_data_wait_fraction{")
    with scraped(ray_cluster["metrics_port"], metrics, every_s=0.5) as scrapes:
        res = subprocess.run([sys.executable, "-m", "beray.train", "--preset", "cpu-tiny",
                              *sum((["--set", o] for o in tiny_overrides(tiny_synth, tmp_path, "cli")), [])],
                             capture_output=True, text=True, env=env, timeout=600)
        if res.returncode == 0:  # an export may follow the run's end
            wait_for(lambda: all(_exported(scrapes, m) for m in metrics), 30, 0.5)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    run_dir = tmp_path / "cli"
    # the console holds beray's lines alone (the epoch lines of rank 0 among them); Ray's are in the run's log
    assert not foreign_lines(res.stdout, res.stderr), res.stdout + res.stderr
    assert "epoch 2/2 done: loss" in res.stdout and res.stderr.strip().endswith(f"Ray's log: {run_dir / 'ray.log'} "
                                                                                "(--verbose shows it live)")
    assert "Connecting to existing Ray cluster" in (run_dir / "ray.log").read_text()  # it joined ours
    ckpts = _checkpoints(run_dir)
    assert len(ckpts) == 2
    state = torch.load(ckpts[-1] / STATE_FILE, weights_only=False)
    assert state["epoch"] == 1 and {"queue", "queue_ptr"} <= {k.split(".")[-1] for k in state["model"]}
    assert any(k.startswith("encoder_k.") for k in state["model"]) and "optimizer" in state and "rng" in state
    events = read_events(run_dir / "tensorboard")
    for tag in ("train/loss", "train/lr", "train/clips_per_s", "train/data_wait_fraction", "clips/x_o", "clips/x_d"):
        assert tag in events, tag
    assert all(v > 0 for _, v in events["train/clips_per_s"])
    assert len(events["epoch/loss"]) == 2
    assert f"checkpoint:  {ckpts[-1]}" in res.stdout and "tensorboard --logdir" in res.stdout
    # the workers' Ray metrics reach the Prometheus endpoint
    assert max(_exported(scrapes, metrics[0]), default=0) > 0 and _exported(scrapes, metrics[1])


def _kill_a_worker_once_a_checkpoint_exists(run_dir: Path, killed: list) -> None:
    deadline = time.time() + 300
    while time.time() < deadline and not registered_checkpoints(run_dir):
        time.sleep(0.05)
    for pid in os.listdir("/proc"):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="ignore")
        except OSError:
            continue
        if pid.isdigit() and "RayTrainWorker" in cmd:
            os.kill(int(pid), signal.SIGKILL)
            killed.append(int(pid))
            return


def _manifest_with_bad_videos(synth: Path, out: Path) -> tuple[Path, list[str]]:
    """The tiny set as a manifest, with a truncated video and a missing one added: their paths."""
    rows = (synth / "train.csv").read_text().splitlines()
    out.mkdir()
    first = synth / rows[1].split(",")[0]
    cut = out / "cut.avi"
    cut.write_bytes(first.read_bytes()[: first.stat().st_size // 2])
    manifest = ["path,label"] + [f"{synth / r.split(',')[0]},{r.split(',')[1]}" for r in rows[1:]]
    manifest += [f"{cut},0", f"{out / 'missing.avi'},1"]
    (out / "train.csv").write_text("\n".join(manifest) + "\n")
    return out, [str(cut), str(out / "missing.avi")]


def test_a_run_whose_loss_diverges_stops_at_once_saying_where_without_restarts(ray_cluster, tiny_synth, tmp_path):
    # logits / tau overflow to inf: the loss is NaN at the first step, on both DDP workers, at every attempt
    env = {**os.environ, "RAY_ADDRESS": ray_cluster["address"]}
    res = subprocess.run([sys.executable, "-m", "beray.train", "--preset", "cpu-tiny",
                          *sum((["--set", o] for o in [*tiny_overrides(tiny_synth, tmp_path, "nan"), "method.tau=1e-45"]),
                               [])], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-3000:]
    assert not foreign_lines(res.stdout, res.stderr), res.stdout + res.stderr  # no traceback
    assert "error: loss is nan at epoch 1, step 1; lower optim.lr or turn off optim.amp in a new run" in res.stderr
    assert "restart" not in res.stderr
    run_dir = tmp_path / "nan"
    assert _checkpoints(run_dir) == []  # nothing to resume from: the failed epoch saves nothing
    assert len(list((run_dir / "tensorboard").glob("events.*"))) == 1  # one attempt: Ray Train restarted nothing


def test_a_run_without_a_readable_batch_stops_at_once_as_the_user_s_data_error(ray_cluster, tiny_synth, tmp_path):
    # a decode limit of a microsecond: every video is unreadable, at every attempt
    env = {**os.environ, "RAY_ADDRESS": ray_cluster["address"]}
    res = subprocess.run([sys.executable, "-m", "beray.train", "--preset", "cpu-tiny", *sum(
        (["--set", o] for o in [*tiny_overrides(tiny_synth, tmp_path, "blind"), "data.decode_timeout_s=1e-6"]), [])],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 2, res.stdout[-3000:] + res.stderr[-3000:]
    assert not foreign_lines(res.stdout, res.stderr), res.stdout + res.stderr  # no traceback
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.match(r"error: epoch 1 had no full batch of 2 clips on a worker: the data has "
                                         r"fewer readable videos than optim\.batch_size( \(\d+ unreadable, e\.g\. /.+\))?$",
                                         errors[0]), errors
    assert "restart" not in res.stderr and _checkpoints(tmp_path / "blind") == []
    assert len(list((tmp_path / "blind" / "tensorboard").glob("events.*"))) == 1  # one attempt: nothing restarted


def test_a_run_whose_pipeline_is_starved_stops_in_one_line_naming_what_holds_the_cluster(ray_cluster, tiny_synth,
                                                                                          tmp_path):
    # Another job holds every CPU but the Train worker's: no decode task can start, and Ray Data only warns in its
    # log. The run stops once no batch came for data.stall_timeout_s, at once (no restarts), naming the holder.
    import ray

    @ray.remote
    class Hog:
        def ready(self) -> bool:
            return True

    hog = Hog.options(num_cpus=ray.available_resources()["CPU"] - 0.5, name="another-job").remote()
    ray.get(hog.ready.remote(), timeout=60)
    try:
        env = {**os.environ, "RAY_ADDRESS": ray_cluster["address"]}
        sets = [*tiny_overrides(tiny_synth, tmp_path, "starved"), "run.workers=1", "data.stall_timeout_s=5"]
        res = subprocess.run([sys.executable, "-m", "beray.train", "--preset", "cpu-tiny",
                              *sum((["--set", o] for o in sets), [])], capture_output=True, text=True, env=env,
                             timeout=240)
    finally:
        ray.kill(hog)
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-3000:]
    assert not foreign_lines(res.stdout, res.stderr), res.stdout + res.stderr  # no traceback
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(
        "error: the data pipeline is starved: it delivered no batch for 5 s (data.stall_timeout_s); 0 of 2 CPUs free; "
        "held by: "), errors
    assert "1 x actor Hog (1.5 CPU)" in errors[0] and "restart" not in res.stderr


def test_a_killed_worker_resumes_every_member_and_bad_videos_are_skipped_and_named(ray_cluster, tiny_synth, tmp_path):
    # One run for two kinds of trouble: a Train worker of a 2-member pack killed mid-run, and a truncated and
    # a missing video in the data, which every epoch (before and after the restart) skips; the run names each once.
    root, bad = _manifest_with_bad_videos(tiny_synth, tmp_path / "bad")
    overrides = tiny_overrides(root, tmp_path, "kill", epochs=4) + ["data.dataset=manifest"]
    killed: list[int] = []
    killer = threading.Thread(target=_kill_a_worker_once_a_checkpoint_exists, args=(tmp_path / "kill", killed))
    killer.start()
    info = fit(load_config(None, overrides, preset="cpu-tiny"), "kill", members=[["be.gamma=0.1"], ["be.gamma=0.3"]])
    killer.join()
    assert killed, "no Ray Train worker process was found to kill"
    assert info.metrics["epoch"] == 4  # ran to the configured end
    assert info.metrics["resumed_from_epoch"] >= 1  # restarted from a checkpoint, not from scratch
    assert set(info.metrics["members"]) == {"gamma-0.1", "gamma-0.3"} and not info.metrics["failed"]
    for member in info.metrics["members"]:  # every member resumed and finished
        assert torch.load(Path(info.checkpoint) / member / STATE_FILE, weights_only=False)["epoch"] == 3
    assert info.metrics["skipped_total"] == 2
    assert sorted(info.metrics["skipped_paths"]) == sorted(bad)


def test_bad_config_exits_2_naming_the_field_before_ray_starts(tmp_path, capsys):
    from beray.train.__main__ import main

    for args, field in ((["--set", "be.gamma=1.5"], "be.gamma"), (["--set", "model.backbone=vgg"], "model.backbone"),
                        (["--set", "be.noise=salt"], "be.noise"), (["--set", "optim.epoch=3"], "optim.epoch"),
                        (["--member", "be.noise=none", "--member", "data.num_frames=4"], "data.num_frames"),
                        (["--member", "be.gama=0.5", "--member", "be.noise=none"], "be.gama")):
        assert main(args) == 2  # refused while parsing: main returns before it imports Ray
        err = capsys.readouterr().err
        assert field in err and "Traceback" not in err, err
    # and as a user runs it: a process that exits 2 naming the field, and would fail loudly had it asked Ray
    res = subprocess.run([sys.executable, "-m", "beray.train", "--set", "data.dataset=ucf101"], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "RAY_ADDRESS": "127.0.0.1:1"})
    assert res.returncode == 2, res.stderr
    assert "data.root" in res.stderr and "Traceback" not in res.stderr


def test_gpus_that_a_local_ray_would_not_have_are_refused_before_it_starts(tiny_synth, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # beray would start Ray here
    env["CUDA_VISIBLE_DEVICES"] = ""  # no GPU, on any machine
    res = subprocess.run([sys.executable, "-m", "beray.train", "--gpus-per-worker", "1", "--set",
                          f"data.root={tiny_synth}", "--set", f"run.storage={tmp_path}", "--set", "run.name=gpu"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.strip().splitlines() == [
        "error: run.gpus_per_worker=1 with 1 worker(s) needs 1 GPU(s), but this machine has 0 and beray would "
        "start Ray on it; set run.gpus_per_worker=0, or join a cluster with GPUs (RAY_ADDRESS)"]
    assert "Ray instance" not in res.stdout + res.stderr and not (tmp_path / "gpu").exists()  # no Ray, no files


def test_a_pretrained_file_of_another_backbone_is_refused_before_ray_starts(tiny_synth, tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"model": {"backbone.stem.weight": torch.zeros(4, 3, 1, 1, 1)}, "config": {}}, other)
    res = subprocess.run([sys.executable, "-m", "beray.train", "--set", f"model.pretrained={other}", "--set",
                          f"data.root={tiny_synth}", "--set", f"run.storage={tmp_path}", "--set", "run.name=ft"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "RAY_ADDRESS": "127.0.0.1:1"})
    assert res.returncode == 2 and res.stderr.strip().splitlines()[0].startswith(
        f"error: model.pretrained: {other} does not hold a r3d_18 x0.125 backbone"), res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "ft").exists()  # no Ray, no files


def test_joining_a_cluster_without_the_gpus_says_once_that_it_waits(ray_cluster, tiny_synth, tmp_path):
    out = tmp_path / "out.txt"
    env = {**os.environ, "RAY_ADDRESS": ray_cluster["address"]}  # an autoscaler could add GPU nodes: it waits
    with open(out, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "beray.train", "--gpus-per-worker", "1", "--set",
                                 f"data.root={tiny_synth}", "--set", f"run.storage={tmp_path}", "--set", "run.name=gpu"],
                                stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            said = wait_for(lambda: "waiting for" in out.read_text(), 120)
            time.sleep(3)  # and it says it only once
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    lines = out.read_text().splitlines()
    assert said and [ln for ln in lines if "waiting" in ln] == [
        "waiting for 1 GPU(s) (1 worker(s) x 1): the cluster has 0 now, and starts the run when its autoscaler "
        "adds GPU nodes (Ctrl-C stops)"], lines
