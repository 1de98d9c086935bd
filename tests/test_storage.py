"""Run storage on a real S3 API: a moto server on localhost, which pyarrow's S3 file system (and so Ray
Train and ``beray.storage``) reaches through ``AWS_ENDPOINT_URL``, as it would any S3-compatible store.
``beray.train`` writes its run there, ``beray.eval knn`` reads the checkpoint from there and writes its
results and feature cache there, and nothing lands under the local results folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import _free_port, tiny_overrides

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


@pytest.mark.timeout(900)
def test_a_run_and_its_evaluation_live_on_s3(s3, tiny_synth, tmp_path):
    results = tmp_path / "results"
    env = {**os.environ, **s3, "BERAY_RESULTS": str(results)}
    env.pop("RAY_ADDRESS", None)
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
    local = [p for p in results.rglob("*") if p.is_file()] if results.exists() else []
    assert local == []  # everything went to the bucket
