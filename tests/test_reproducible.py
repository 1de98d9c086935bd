"""The same seed gives the same run; a resumed run continues as the uninterrupted one; resume
refuses what it cannot honour; storage may be a URI; only the user's errors exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_overrides
from tbevents import read_events

from beray.config import load_config
from beray.train.launch import fit


def _cfg(tiny_synth, storage, name, epochs, seed=0, extra=()):
    overrides = tiny_overrides(tiny_synth, storage, name, epochs) + [
        "run.workers=1", "run.cpus_per_worker=1", f"run.seed={seed}", "run.images_every=0", *extra]
    return load_config(None, overrides, preset="cpu-tiny")


def _losses(info) -> list[float]:
    return [m["loss"] for m in info.metrics["history"]]


def test_same_seed_same_losses_and_resume_continues_the_stream(ray_cluster, tiny_synth, tmp_path):
    whole = _losses(fit(_cfg(tiny_synth, tmp_path, "whole", 2)))
    first = _losses(fit(_cfg(tiny_synth, tmp_path, "split", 1)))
    assert first == whole[:1]  # same seed: identical per-epoch losses
    env = {**os.environ, "RAY_ADDRESS": ray_cluster["address"]}
    res = subprocess.run([sys.executable, "-m", "beray.train", "--resume", str(tmp_path / "split"),
                          "--set", "optim.epochs=2"], capture_output=True, text=True, env=env, timeout=240)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "resume: optim.epochs 1 -> 2" in res.stdout
    assert f"loss {whole[1]:.4f}" in res.stdout.split("\ndone:")[1]  # epoch 2 as the uninterrupted run's
    other = _losses(fit(_cfg(tiny_synth, tmp_path, "other", 1, seed=1)))
    assert other[0] != whole[0]


@pytest.mark.ray
def test_resume_refuses_what_the_checkpoint_fixes(tmp_path, tiny_synth):
    run = tmp_path / "r"
    run.mkdir()
    from beray.config import to_yaml

    (run / "config.yaml").write_text(to_yaml(_cfg(tiny_synth, tmp_path, "r", 2)))
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:1"}  # nothing may start
    res = subprocess.run([sys.executable, "-m", "beray.train", "--resume", str(run), "--set", "optim.lr=0.5",
                          "--set", "be.gamma=0.1", "--set", "optim.epochs=4"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "optim.lr: 0.05 -> 0.5" in res.stderr and "be.gamma: 0.3 -> 0.1" in res.stderr
    assert "optim.epochs" not in res.stderr.split("allowed on resume")[0]  # that one may change
    res = subprocess.run([sys.executable, "-m", "beray.train", "--resume", str(tmp_path / "nothing")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2 and "is not a beray run" in res.stderr
    (run / "members.yaml").write_text("- [be.gamma=0.1]\n")  # r, a pack: its member's folder has a config too
    (run / "gamma-0.1").mkdir()
    (run / "gamma-0.1" / "config.yaml").write_text((run / "config.yaml").read_text())
    res = subprocess.run([sys.executable, "-m", "beray.train", "--resume", str(run / "gamma-0.1")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2 and f"gamma-0.1 is a member of the pack {run}; resume the pack: " in res.stderr, \
        res.stderr
    res = subprocess.run([sys.executable, "-m", "beray.train", "--resume", "nosuch://bucket/r"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2 and res.stderr.startswith("error: --resume nosuch://bucket/r: cannot read it: "), \
        res.stderr


def test_storage_uri_holds_the_run_and_videos_too_short_for_a_hard_negative_are_counted(ray_cluster, tiny_synth,
                                                                                          tmp_path):
    # 12-frame videos, clips of 4 frames at stride 4 (13-frame span, looped): no clip distinct from x_o
    uri = f"file://{tmp_path}/remote"
    info = fit(_cfg(tiny_synth, uri, "uri", 1, extra=["data.stride=4"]))
    assert info.metrics["hard_negatives_masked"] == info.metrics["clips"] == 12
    assert info.metrics["loss"] > 0
    run = tmp_path / "remote" / "uri"
    assert info.dir == f"{uri}/uri"
    assert (run / "config.yaml").exists()
    assert info.checkpoint.startswith(f"{uri}/uri/checkpoint_")  # with its scheme, as the run's storage
    assert (run / info.checkpoint.rsplit("/", 1)[1] / "state.pt").exists()
    assert len(read_events(run / "tensorboard")["epoch/loss"]) == 1


def test_a_bug_shows_its_traceback_and_exits_1(monkeypatch, capsys, tiny_synth, tmp_path):
    from beray.train import __main__ as cli
    from beray.train import launch

    def bug(cfg, name, **options):
        raise ValueError("an internal error, not the user's")

    monkeypatch.setattr(launch, "fit", bug)
    with pytest.raises(ValueError, match="internal error"):  # python -m turns it into a traceback, exit 1
        cli.main(["--set", f"data.root={tiny_synth}", "--set", f"run.storage={tmp_path}"])
    monkeypatch.undo()
    code = cli.main(["--set", f"data.root={tmp_path}", "--set", "data.dataset=ucf101", "--set",
                     f"run.storage={tmp_path}"])  # a user's mistake: the data is not there
    assert code == 2 and "error:" in capsys.readouterr().err


def test_a_run_name_that_exists_resumes_only_with_what_resume_allows(tiny_synth, tmp_path):
    from beray.config import ConfigError, to_yaml

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "config.yaml").write_text(to_yaml(_cfg(tiny_synth, tmp_path, "taken", 2)))
    with pytest.raises(ConfigError, match="(?s)already holds a run.*be.gamma: 0.3 -> 0.1"):
        fit(_cfg(tiny_synth, tmp_path, "taken", 2, extra=["be.gamma=0.1"]))  # refused before Ray is asked


def test_storage_uris_keep_their_query_and_local_paths_resolve():
    from beray import storage as st

    assert st.join("s3://b/runs?region=x", "r1", "config.yaml") == "s3://b/runs/r1/config.yaml?region=x"
    assert st.split("s3://b/runs/r1?region=x") == ("s3://b/runs?region=x", "r1")
    assert st.split("file:///tmp/a/r1/") == ("file:///tmp/a", "r1")
    assert st.split("~/runs/r") == (str(Path("~/runs").expanduser()), "r")

