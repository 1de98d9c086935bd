"""``python -m beray.bench``: a request it cannot honour is refused before any work, in one line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.ray
@pytest.mark.parametrize("bench", ["be", "train"])
def test_device_cuda_without_cuda_exits_2_in_one_line(bench):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no CUDA device, on any machine
    res = subprocess.run([sys.executable, "-m", "beray.bench", bench, "--device", "cuda"], capture_output=True,
                         text=True, timeout=120, env=env)
    assert res.returncode == 2 and res.stdout == "", res.stdout + res.stderr
    assert res.stderr.strip().splitlines() == [
        "error: --device cuda, but torch sees no CUDA device here; run without it (or --device cpu)"]
