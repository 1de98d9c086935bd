"""A test that hangs fails at its limit, naming itself, and what it started is ended before the next
test runs: a pytest session of its own, on a Ray of its own, with this suite's conftest and settings."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).parent

HANGS = '''
import os, subprocess, sys, time
from pathlib import Path

import pytest
import ray

PIDS = Path(__file__).parent / "pids"


@ray.remote(num_cpus=1)
class Holder:
    def pid(self):
        return os.getpid()


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=1, include_dashboard=False)
    yield
    ray.shutdown()


def test_ray_starts(local_ray):
    pass  # Ray's start is paid here, under the suite's limit: the hung test's limit counts its fixtures


@pytest.mark.timeout(LIMIT)
def test_hangs(local_ray):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    holder = Holder.remote()
    PIDS.write_text(f"{child.pid} {ray.get(holder.pid.remote())}")
    time.sleep(600)


def _alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_the_next_test_finds_it_all_ended(local_ray):
    child, actor = map(int, PIDS.read_text().split())
    assert not _alive(child)
    assert ray.available_resources().get("CPU", 0) == 1  # the hung test's actor gave its CPU back
    deadline = time.time() + 30
    while _alive(actor) and time.time() < deadline:
        time.sleep(0.2)
    assert not _alive(actor)
'''


@pytest.mark.ray
def test_a_hung_test_fails_at_its_limit_and_leaves_nothing_running(tmp_path):
    limit = 20  # room for an actor to come up on a slow machine (Ray started in the test before)
    shutil.copy(HERE / "conftest.py", tmp_path / "conftest.py")
    shutil.copy(HERE.parent / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "test_hangs.py").write_text(HANGS.replace("LIMIT", str(limit)))
    start = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", "."],
                         cwd=tmp_path, capture_output=True, text=True, timeout=240)
    took = time.monotonic() - start
    out = res.stdout + res.stderr
    assert res.returncode == 1, out[-3000:]
    assert f"FAILED test_hangs.py::test_hangs - Failed: Timeout (>{limit}.0s) from pytest-timeout" in out, out[-3000:]
    assert "PASSED test_hangs.py::test_the_next_test_finds_it_all_ended" in out, out[-3000:]
    assert took < limit + 120  # failed at its limit, not at the sleep's end (600 s)
