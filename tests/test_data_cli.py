"""``python -m beray.data check`` and ``synth`` as a user runs them: real processes, real files."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import make_hmdb51, make_ucf101

pytestmark = pytest.mark.ray  # each test runs the CLI in a process of its own


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "beray.data", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def _row(out: str, name: str) -> list[str]:
    return next(line.split() for line in out.splitlines() if line.split()[:1] == [name])


def test_check_ucf101_counts(tmp_path, tiny_video_bytes):
    make_ucf101(tmp_path, tiny_video_bytes)
    res = run("check", "--dataset", "ucf101", "--root", str(tmp_path), "--split", "1", "--workers", "2")
    assert res.returncode == 0, res.stderr
    assert _row(res.stdout, "train") == ["train", "12", "3", "0"]  # videos, classes, unreadable
    assert _row(res.stdout, "test") == ["test", "12", "3", "0"]
    assert re.search(r"^\s+2\s+YoYo\s+4\s+4$", res.stdout, re.M)  # per class: train, test
    assert "all 24 videos are readable" in res.stdout


def test_check_hmdb51_names_truncated_and_empty_files(tmp_path, tiny_video_bytes):
    make_hmdb51(tmp_path, tiny_video_bytes)
    res = run("check", "--dataset", "hmdb51", "--root", str(tmp_path))
    assert res.returncode == 0, res.stdout + res.stderr
    assert _row(res.stdout, "train")[:3] == ["train", "6", "2"] and _row(res.stdout, "test")[:3] == ["test", "2", "2"]

    cut = tmp_path / "cartwheel" / "cartwheel_clip_0_u_nm_np1_fr_goo_0.avi"
    cut.write_bytes(cut.read_bytes()[: len(tiny_video_bytes["avi"]) * 4 // 5])
    empty = tmp_path / "brush_hair" / "brush_hair_clip_2_u_nm_np1_fr_goo_2.avi"
    empty.write_bytes(b"")
    res = run("check", "--dataset", "hmdb51", "--root", str(tmp_path))
    assert res.returncode == 1
    assert "2 of 8 videos are unreadable" in res.stdout
    assert f"{cut}: truncated" in res.stdout
    assert f"{empty}: empty file (0 bytes)" in res.stdout
    assert _row(res.stdout, "train")[3] == "1" and _row(res.stdout, "test")[3] == "1"


def test_check_bad_root_exits_2_with_a_message(tmp_path):
    res = run("check", "--dataset", "ucf101", "--root", str(tmp_path / "nope"))
    assert res.returncode == 2
    assert "does not exist" in res.stderr and "Traceback" not in res.stderr


def test_check_defaults_to_synth_generated_once(tmp_path):
    env = {"BERAY_CACHE": str(tmp_path)}
    res = run("check", env=env)
    assert res.returncode == 0, res.stderr
    assert _row(res.stdout, "train")[:3] == ["train", "240", "6"]
    assert _row(res.stdout, "test_swapped")[:3] == ["test_swapped", "60", "6"]
    assert len(list(tmp_path.glob("synth-*"))) == 1
    again = run("check", env=env)
    assert "BackgroundBias-Synth" not in again.stderr  # cached: no second generation


def test_synth_cli(tmp_path):
    out = tmp_path / "s"
    res = run("synth", str(out), "--size", "32", "--frames", "8", "--train-per-class", "2",
              "--test-per-class", "1", "--unbiased-per-class", "1", "--background-pool", "2", "--format", "mp4",
              "--seed", "5")
    assert res.returncode == 0, res.stderr
    assert len(list(out.rglob("*.mp4"))) == 6 * 5
    assert "train 12" in res.stdout and "train_unbiased 6" in res.stdout
    assert {r.split(",")[-1] for r in (out / "train.csv").read_text().splitlines()[1:]} <= {"0", "1"}  # pooled
    bad = run("synth", str(tmp_path / "t"), "--rho", "2")
    assert bad.returncode == 2 and "rho" in bad.stderr and "Traceback" not in bad.stderr
