"""Child process of the fuzz test: reads one path per stdin line, answers one JSON line each.

Run apart from pytest so that a crash of FFmpeg inside PyAV kills this process, not the test run.
"""

import json
import sys

import numpy as np

from beray.data.video import VideoReadError, read_clip

for line in sys.stdin:
    path = line.strip()
    try:
        clip = read_clip(path, 8, 2, start="random", size=(24, 32), rng=np.random.default_rng(0), timeout_s=10)
        answer = {"path": path, "result": "frames", "shape": list(clip.shape), "dtype": str(clip.dtype)}
    except VideoReadError as e:
        answer = {"path": path, "result": "typed error", "reason": e.reason}
    except Exception as e:  # noqa: BLE001 - exactly what the test is looking for
        answer = {"path": path, "result": "other exception", "reason": f"{type(e).__name__}: {e}"}
    print(json.dumps(answer), flush=True)
