"""Fuzzing the reader: corrupt real videos every way a copy breaks; only frames or VideoReadError may come out.

Each file is read in a child process (a segfault inside FFmpeg is caught as a failure of
that case, not of the test run), with a per-file timeout (a hang is a failure too).
``pytest --fuzz-full`` runs the full case count; CI runs a reduced one.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import write_indexed

HERE = Path(__file__).parent
TIMEOUT_S = 30


def _corrupt(data: bytes, kind: str, rng: np.random.Generator) -> bytes:
    b = bytearray(data)
    if kind == "flip":  # a few flipped bytes anywhere
        for pos in rng.integers(0, len(b), int(rng.integers(1, 40))):
            b[pos] ^= 1 << int(rng.integers(0, 8))
    elif kind == "cut":  # a download cut short
        b = b[: int(rng.integers(1, len(b)))]
    elif kind == "header":  # garbage over the container header
        n = int(rng.integers(4, 600))
        b[:n] = rng.bytes(n)
    elif kind == "zeros":  # a run of zeroed bytes (a bad sector)
        start = int(rng.integers(0, len(b)))
        b[start:start + int(rng.integers(16, 4096))] = bytes(min(len(b) - start, 4096))[: len(b[start:start + 4096])]
    elif kind == "splice":  # a chunk of another part of the file pasted in
        a, c = sorted(rng.integers(0, len(b), 2))
        src = int(rng.integers(0, len(b)))
        b[a:c] = b[src:src + (c - a)]
    return bytes(b)


def _empty_stream(path: Path) -> Path:
    """A container with a video stream and no packets at all."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4" if path.suffix == ".avi" else "libx264", rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
    return path


def _cases(tmp: Path, per_format: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for ext, gop in (("avi", 12), ("mp4", 25), ("mkv", 10)):
        valid = write_indexed(tmp / f"valid.{ext}", 60, gop=gop).read_bytes()
        paths.append(_empty_stream(tmp / f"empty_stream.{ext}"))
        for i in range(per_format):
            kind = ("flip", "cut", "header", "zeros", "splice")[i % 5]
            p = tmp / f"{kind}_{i:04d}.{ext}"
            p.write_bytes(_corrupt(valid, kind, rng))
            paths.append(p)
    return paths


class _Child:
    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, str(HERE / "fuzz_child.py")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1,
                                     env={**os.environ, "OMP_NUM_THREADS": "1"})

    def read(self, path: Path) -> dict:
        self.proc.stdin.write(f"{path}\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], TIMEOUT_S)
        if not ready:
            self.proc.kill()
            return {"path": str(path), "result": f"hang (no answer in {TIMEOUT_S} s)"}
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            return {"path": str(path), "result": f"crash (the reader process died with code {code})"}
        return json.loads(line)

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


@pytest.mark.ray
def test_corrupt_videos_give_frames_or_the_typed_error(tmp_path, request):
    per_format = 200 if request.config.getoption("--fuzz-full") else 40
    cases = _cases(tmp_path, per_format)
    failures, outcomes = [], {}
    child = _Child()
    for path in cases:
        answer = child.read(path)
        result = answer["result"]
        outcomes[result] = outcomes.get(result, 0) + 1
        if result == "frames":
            if answer["shape"] != [8, 24, 32, 3] or answer["dtype"] != "uint8":
                failures.append(f"{path.name}: wrong frames {answer['shape']} {answer['dtype']}")
        elif result != "typed error":
            failures.append(f"{path.name}: {result} {answer.get('reason', '')}")
            if child.proc.poll() is not None:
                child = _Child()  # the reader died or hung: go on with a fresh one
    child.close()
    print(f"fuzz outcomes over {len(cases)} cases: {outcomes}")
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures[:30])
    # the corpus really exercises both outcomes
    assert outcomes.get("typed error", 0) > len(cases) // 10 and outcomes.get("frames", 0) > len(cases) // 10
