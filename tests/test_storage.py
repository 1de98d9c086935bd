"""Run storage on a real S3 API: a moto server on localhost, which pyarrow's S3 file system (and so Ray
Train, Ray Tune and ``beray.storage``) reaches through ``AWS_ENDPOINT_URL``, as it would any S3-compatible
store. ``beray.train`` writes its run there, ``beray.eval knn`` reads the checkpoint from there and writes
its results and feature cache there; a sweep keeps its state, records, runs and report there and resumes
from them; nothing lands under the local results folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import yaml

from conftest import _free_port, foreign_lines, saved_an_ended_trial, tiny_overrides, tiny_sweep, wait_for

BUCKET = "beray"


@pytest.fixture(scope="module")
def s3() -> dict[str, str]:
    """The environment that points pyarrow and boto3 at a moto S3 server holding an empty bucket."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}
    _client(env).create_bucket(Bucket=BUCKET)
    yield env
    server.stop()


def _client(env: dict[str, str]):
    import boto3

    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                        aws_secret_access_key="testing", region_name="us-east-1")


def _keys(env: dict[str, str], prefix: str) -> list[str]:
    pages = _client(env).get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    # leaving out the empty markers that pyarrow's create_dir puts for folders
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []) if not o["Key"].endswith("/"))


def _beray(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess:
    """A beray command in its own process and its own Ray (which inherits the S3 environment)."""
    return subprocess.run([sys.executable, "-m", *argv], env=env, capture_output=True, text=True, timeout=400)


def _env(s3: dict[str, str], results) -> dict[str, str]:
    """This process's environment, pointed at the S3 server and a local results folder, without the suite's
    Ray: each command starts its own, which inherits the S3 environment."""
    env = {**os.environ, **s3, "BERAY_RESULTS": str(results)}
    env.pop("RAY_ADDRESS", None)
    return env


def _local_files(results) -> list:
    return [p for p in results.rglob("*") if p.is_file()] if results.exists() else []


def _records(env: dict[str, str], prefix: str) -> list[dict]:
    s3 = _client(env)
    return [json.loads(s3.get_object(Bucket=BUCKET, Key=k)["Body"].read()) for k in _keys(env, prefix)
            if k.endswith(".json")]


@pytest.mark.timeout(900)
def test_a_run_and_its_evaluation_live_on_s3(s3, tiny_synth, tmp_path):
    results = tmp_path / "results"
    env = _env(s3, results)
    run = f"s3://{BUCKET}/runs/tiny"
    sets = [a for o in tiny_overrides(tiny_synth, f"s3://{BUCKET}/runs", "tiny", epochs=1) + ["run.workers=1"]
            for a in ("--set", o)]
    train = _beray(env, "beray.train", "--preset", "cpu-tiny", *sets)
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-3000:]
    keys = _keys(s3, "runs/tiny/")
    assert "runs/tiny/config.yaml" in keys and any(k.startswith("runs/tiny/tensorboard/events.") for k in keys)
    states = [k for k in keys if k.startswith("runs/tiny/checkpoint_") and k.endswith("/state.pt")]
    assert len(states) == 1, keys

    knn = _beray(env, "beray.eval", "knn", "--checkpoint", run, "--k", "3")
    assert knn.returncode == 0, knn.stdout[-2000:] + knn.stderr[-3000:]
    assert f"{run}/eval/knn-synth-split1.json" in knn.stdout
    body = _client(s3).get_object(Bucket=BUCKET, Key="runs/tiny/eval/knn-synth-split1.json")["Body"].read()
    report = json.loads(body)
    assert report["checkpoint"] == f"{run}/{states[0].split('/')[2]}/state.pt"
    assert all(0 <= r["top1"] <= r["top5"] <= 1 for r in report["results"].values())
    cache = _keys(s3, "runs/tiny/eval/cache/")
    assert len(cache) == 3  # train, test_biased, test_swapped

    again = _beray(env, "beray.eval", "linear", "--checkpoint", run)  # the cache on S3 serves a second mode
    assert again.returncode == 0, again.stderr[-3000:]
    assert _keys(s3, "runs/tiny/eval/cache/") == cache and "runs/tiny/eval/linear-synth-split1.md" in _keys(s3, "runs/")
    # fine-tuning: its Train workers read model.pretrained, the run's checkpoint, from the bucket
    tune = _beray(env, "beray.eval", "finetune", "--checkpoint", run, "--clips", "1", "--set", "optim.epochs=1",
                  "--set", "optim.batch_size=2")
    assert tune.returncode == 0, tune.stdout[-2000:] + tune.stderr[-3000:]
    tuned = json.loads(_client(s3).get_object(Bucket=BUCKET, Key="runs/tiny/eval/finetune-synth-split1.json")["Body"].read())
    assert tuned["finetuned"].startswith(f"{run}/eval/") and 0 <= tuned["results"]["test_swapped"]["top1"] <= 1
    state = _client(s3).get_object(Bucket=BUCKET, Key=tuned["finetuned"][len(f"s3://{BUCKET}/"):])["Body"].read()
    import io

    import torch

    assert torch.load(io.BytesIO(state), weights_only=True)["config"]["model"]["pretrained"] == report["checkpoint"]
    assert _local_files(results) == []  # everything went to the bucket


@pytest.mark.timeout(900)
def test_a_sweep_on_s3_resumes_from_its_state_there_after_its_driver_is_killed(s3, tiny_synth, tmp_path):
    # Two points, one trial at a time; the driver is killed with SIGKILL once the first has finished and Tune
    # has saved its state to the bucket since (every second here), then --resume continues from the bucket.
    results = tmp_path / "results"
    env = {**_env(s3, results), "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    f = tiny_sweep(tmp_path, tiny_synth, "s3sweep", {"be.gamma": {"grid": [0.0, 0.3]}}, pack=False,
                   resources={"workers": 1, "cpus_per_worker": 0.5, "max_concurrent": 1})
    tree = yaml.safe_load(f.read_text())
    tree["storage"] = f"s3://{BUCKET}/sweeps"
    f.write_text(yaml.safe_dump(tree))
    prefix = "sweeps/s3sweep/"

    def saved_the_end() -> bool:
        client = _client(s3)
        return any(saved_an_ended_trial(client.get_object(Bucket=BUCKET, Key=k)["Body"].read().decode())
                   for k in _keys(s3, prefix) if k.rsplit("/", 1)[-1].startswith("experiment_state-"))

    proc = subprocess.Popen([sys.executable, "-m", "beray.sweep", str(f)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        finished = wait_for(lambda: any(r["status"] == "finished" for r in _records(s3, prefix + "trials/")), 400, 1.0)
        saved = wait_for(saved_the_end, 20, 0.5)  # a save of Tune's state to the bucket that has the first trial ended
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    first = [r for r in _records(s3, prefix + "trials/") if r["status"] == "finished"]
    assert finished and saved and len(first) == 1, proc.stdout.read()[-3000:]
    done = first[0]["trial_id"]
    assert first[0]["run_dir"] == f"s3://{BUCKET}/{prefix}runs/{done}"
    checkpoints = [k for k in _keys(s3, f"{prefix}runs/{done}/") if "/checkpoint_" in k]

    res = _beray(env, "beray.sweep", str(f), "--resume")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert not foreign_lines(res.stdout, res.stderr), res.stdout + res.stderr
    assert f"started   {done}" not in res.stdout and "started   " in res.stdout  # only the other point ran
    records = _records(s3, prefix + "trials/")
    assert sorted(r["point"]["be.gamma"] for r in records) == [0.0, 0.3]
    assert all(r["status"] == "finished" and 0 <= r["objective"] <= 1 for r in records), records
    assert [k for k in _keys(s3, f"{prefix}runs/{done}/") if "/checkpoint_" in k] == checkpoints  # not trained again
    keys = _keys(s3, prefix)
    assert {prefix + n for n in ("sweep.yaml", "tuner.pkl", "results.md", "results.csv", "results.png")} <= set(keys)
    report = _client(s3).get_object(Bucket=BUCKET, Key=prefix + "results.md")["Body"].read().decode()
    assert "2 finished" in report and f"tensorboard --logdir s3://{BUCKET}/{prefix}runs" in report
    assert _local_files(results) == []  # Tune's own staging lives in Ray's session folder, not here

    again = _beray(env, "beray.sweep", "report", f"s3://{BUCKET}/sweeps/s3sweep")
    assert again.returncode == 0 and "2 finished" in again.stdout, again.stderr[-2000:]


@pytest.mark.parametrize("scheme", ["path", "file://"])
def test_a_file_is_replaced_whole_and_a_failed_write_leaves_nothing_behind(tmp_path, scheme):
    from beray import storage as st

    folder = tmp_path / "trials"
    record = folder / "t1.json"
    name = record.as_uri() if scheme == "file://" else str(record)
    st.write_text(name, "old")
    with open(record) as reader:  # a report reading a record while the sweep rewrites it
        st.write_text(name, "new")
        assert reader.read() == "old"  # written in place, it would read the new text or half of it
    assert record.read_text() == "new"
    (folder / "t2.json" / "x").mkdir(parents=True)  # a folder in the way: the write fails after its data went out
    with pytest.raises(st.FAILURES):
        st.write_text(name.replace("t1.json", "t2.json"), "lost")
    assert sorted(p.name for p in folder.iterdir()) == ["t1.json", "t2.json"]  # no temporary file left
