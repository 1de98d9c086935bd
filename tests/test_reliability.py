"""Hang protection and checkpoint integrity under kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import ray
import torch

from beray.batch import Views
from beray.config import AugmentConfig
from beray.data.encode import write_video
from beray.data.pipeline import decode_batch, record_table, run_data
from beray.data.video import VideoReadError, read_clip
from beray.data.views import ViewSpec
from beray.train.checkpoint import STATE_FILE, load_state


@pytest.fixture(scope="module")
def slow_video(tmp_path_factory):
    """A 240p H.264 video with one keyframe: its last clip needs every frame decoded."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("slow") / "slow.mp4"
    write_video(path, (rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(120)), gop=300)
    return path


def test_a_video_slower_than_the_limit_is_abandoned(slow_video):
    assert read_clip(slow_video, 8, 4, start=80, timeout_s=60).shape == (8, 240, 320, 3)
    with pytest.raises(VideoReadError) as e:
        read_clip(slow_video, 8, 4, start=80, timeout_s=1e-4)
    assert e.value.path == str(slow_video) and "abandoned: reading took longer than" in e.value.reason


def test_the_pipeline_counts_and_names_an_abandoned_video(ray_cluster, slow_video):
    state = run_data("hang-test")
    spec = ViewSpec(Views(hard_negative=True), 4, 2, 32, AugmentConfig(size=16), timeout_s=1e-4)
    records = record_table([{"path": str(slow_video), "label": 0, "video_id": "slow", "start_frame": -1,
                             "end_frame": -1}])
    out = decode_batch({"id": np.array([0])}, records, spec, state, "hang-test", seed=0, clips_per_task=1)
    assert out == {}  # dropped from the batch, the run goes on
    skipped = ray.get(state.drain.remote())
    assert list(skipped) == [str(slow_video)] and "abandoned" in skipped[str(slow_video)]
    ray.kill(state)


SAVER = """
import sys, torch
from torch import nn
from beray.train.checkpoint import save_state
model = nn.Sequential(*[nn.Linear(1024, 1024) for _ in range(12)])  # ~50 MB: saving takes a while
opt = torch.optim.SGD(model.parameters(), lr=0.1)
sched = torch.optim.lr_scheduler.StepLR(opt, 10)
scaler = torch.amp.GradScaler("cuda", enabled=False)
epoch = 0
while True:
    save_state(sys.argv[1], model, opt, sched, scaler, epoch, {})
    print(epoch, flush=True)
    epoch += 1
"""


@pytest.mark.ray
def test_kill_during_saving_never_leaves_a_half_checkpoint(tmp_path):
    from torch import nn

    model = nn.Sequential(*[nn.Linear(1024, 1024) for _ in range(12)])
    rng = np.random.default_rng(0)
    kills_mid_save = 0
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()  # one complete checkpoint exists
        time.sleep(float(rng.uniform(0.05, 0.6)))
        kills_mid_save += (tmp_path / "state.tmp").exists()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        state = load_state(tmp_path, model)  # whatever the moment of the kill, this is a whole checkpoint
        assert state["epoch"] >= 0
    assert kills_mid_save >= 1, "no kill landed during a save; the test did not test anything"
    assert (tmp_path / STATE_FILE).exists()
    torch.load(tmp_path / STATE_FILE, weights_only=False)  # and it loads as a whole


def test_starvation_is_logged_and_warned_with_a_remedy(ray_cluster, tmp_path, capfd):
    from tbevents import read_events
    from beray.train.monitor import Monitor

    monitor = Monitor(str(tmp_path), "starved-test", rank=0, epochs=3, log_every=1)
    values = {"loss": 1.0, "lr": 0.1, "clips_per_s": 5.0, "data_wait_fraction": 0.45}
    monitor.epoch(0, 10, values, {})
    monitor.epoch(1, 20, {**values, "data_wait_fraction": 0.05}, {"/v/bad.mp4": "empty file (0 bytes)"})
    monitor.epoch(2, 30, {**values, "data_wait_after_first": 0.02}, {})  # only the pipeline's start-up waited
    monitor.close()
    out = capfd.readouterr().out.splitlines()
    warnings = [line for line in out if line.startswith("warning: ")]
    assert len(warnings) == 1 and "45%" in warnings[0]  # only the starved epoch
    assert "data.decode_concurrency" in warnings[0] and "data.decode_size" in warnings[0]
    assert any("skipped 1 unreadable video(s): /v/bad.mp4 (empty file (0 bytes))" in line for line in out)
    events = read_events(tmp_path)
    assert [v for _, v in events["epoch/data_wait_fraction"]] == pytest.approx([0.45, 0.05, 0.45])
    assert [v for _, v in events["data/skipped_videos"]] == [0.0, 1.0, 0.0]


def test_ray_processes_started_by_beray_cap_malloc_arenas(ray_cluster):
    """Decode tasks run with glibc's arenas capped (MALLOC_ARENA_MAX), inherited from init_ray."""
    @ray.remote(num_cpus=0.1)
    def arena_max():
        return os.environ.get("MALLOC_ARENA_MAX")

    expected = os.environ.get("MALLOC_ARENA_MAX")  # 2 by default; a value set before the tests wins
    assert expected is not None and int(expected) >= 1
    assert ray.get(arena_max.remote()) == expected
