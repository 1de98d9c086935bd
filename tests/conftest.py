"""Shared test data: real encoded videos whose frames carry their own index."""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import yaml

from beray.data.encode import write_video

# Ray Train's controller polls its workers every 2 s, so a run's end is seen up to 2 s late; the suite
# runs some thirty runs. Set before any Ray starts: every Ray process and test subprocess inherits it.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")


def pytest_addoption(parser):
    parser.addoption("--fuzz-full", action="store_true", help="run the full reader fuzzing corpus (slow)")


def pytest_collection_modifyitems(config, items):
    """Tests that start Ray (through ``ray_cluster``) are marked ``ray``, as the tests that start a
    process mark themselves: ``-m "not ray"`` is the inner loop. tests/gpu runs wherever CUDA is
    present; without it, its tests are skipped (the one allowed skip)."""
    import torch

    cuda = torch.cuda.is_available()
    skip = pytest.mark.skip(reason="needs a CUDA device: tests/gpu runs on GPU machines (README, Development)")
    for item in items:
        if "ray_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)
        if not cuda and Path(str(item.fspath)).parent.name == "gpu":
            item.add_marker(skip)


# -- a test that hangs fails at its limit (pytest-timeout) and leaves nothing running ------------------

_TIMED_OUT = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed and call.excinfo is not None and "from pytest-timeout" in str(call.excinfo.value):
        item.stash[_TIMED_OUT] = True
    return report


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item):
    if item.stash.get(_TIMED_OUT, False):
        reap()


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for t in os.listdir(f"/proc/{pid}/task")
                for c in Path(f"/proc/{pid}/task/{t}/children").read_text().split()]
    except OSError:
        return []


def reap(wait_s: float = 60) -> None:
    """End what a timed-out test left running: the processes it started (Ray's own processes, children
    of this one too, are spared), and the Ray actors it held (gc drops the dead frame's handles, and Ray
    ends an actor nobody holds). Waits until the cluster's CPUs are free again."""
    import gc
    import signal

    import ray

    ray_dir = str(Path(ray.__file__).parent)
    for pid in _children(os.getpid()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
            if any(arg.startswith(ray_dir) for arg in cmdline):
                continue  # the session's Ray (gcs_server, raylet, dashboard, ...)
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)  # a process started in its own session: its whole group
            else:
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (OSError, ChildProcessError):
            continue
    gc.collect()
    if ray.is_initialized():
        wait_for(lambda: ray.available_resources().get("CPU", 0) >= ray.cluster_resources().get("CPU", 0), wait_s,
                 poll_s=0.5)


def wait_for(predicate, timeout_s: float, poll_s: float = 0.2) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout_s`` has passed (False)."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll_s)
    return False


def saved_an_ended_trial(state_json: str) -> bool:
    """Whether Tune's saved state (an ``experiment_state-*.json``, read whole) has a trial that ended: a driver
    killed after that resumes without it. (A save's time alone can belong to a copy begun before the end.)"""
    import json

    try:
        return any(json.loads(state).get("status") == "TERMINATED"
                   for state, _ in json.loads(state_json)["trial_data"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return False  # caught mid-write, or not yet a state


# Every line that beray's train and sweep commands print, by its start: their own lines, the sweep's
# report (markdown), and blank lines. Anything else on their console is Ray's and belongs in the log.
BERAY_LINE = re.compile(r"(beray: |epoch \d|resuming from |done: |  (checkpoint|config|TensorBoard|resume|run folder): "
                        r"|(  )?member [\w.+=-]+: "
                        r"|Ray's log: |warning: |error: |continue from |waiting for |\[\d\d:\d\d:\d\d\] "
                        r"|# Sweep |objective: |\||best: |!\[|TensorBoard of every trial|paired differences: "
                        r"|one seed cannot |highest mean |lowest mean |no point is ahead |ahead of the baseline |one point: "
                        r"|reference column: |floors, from "
                        r"|shortcut: |$)")


def foreign_lines(*outputs: str) -> list[str]:
    """The lines of a command's stdout and stderr that beray did not print."""
    return [line for out in outputs for line in out.splitlines() if not BERAY_LINE.match(line)]


BITS = 8  # frame index encoded in 8 vertical black/white bands: survives lossy codecs
H, W = 48, 64


def index_frame(i: int, h: int = H, w: int = W) -> np.ndarray:
    """An RGB frame whose bands spell ``i`` in binary (band b white if bit b is set)."""
    frame = np.zeros((h, w, 3), np.uint8)
    band = w // BITS
    for b in range(BITS):
        if (i >> b) & 1:
            frame[:, b * band:(b + 1) * band] = 255
    return frame


def frame_index(frame: np.ndarray) -> int:
    """Read back the index spelled by ``index_frame`` (at any output size)."""
    w = frame.shape[1]
    band = w / BITS
    centre = [frame[:, int((b + 0.3) * band):max(int((b + 0.7) * band), int((b + 0.3) * band) + 1)].mean()
              for b in range(BITS)]
    return sum(1 << b for b, v in enumerate(centre) if v > 127)


def clip_index(clip: np.ndarray) -> list[int]:
    return [frame_index(f) for f in clip]


def write_indexed(path: Path, n: int, **kw) -> Path:
    write_video(path, (index_frame(i) for i in range(n)), **kw)
    return path


@pytest.fixture(scope="session")
def videos(tmp_path_factory) -> dict[str, Path]:
    """100-frame indexed videos in every container/codec beray writes."""
    d = tmp_path_factory.mktemp("videos")
    return {
        "avi": write_indexed(d / "v.avi", 100),
        "mp4": write_indexed(d / "v.mp4", 100, gop=25),
        "mkv": write_indexed(d / "v.mkv", 100, gop=10),
    }


# -- official dataset layouts, with real (tiny) videos ----------------------------------

UCF_CLASSES = ["ApplyEyeMakeup", "Basketball", "YoYo"]
HMDB_CLASSES = ["brush_hair", "cartwheel"]


@pytest.fixture(scope="session")
def tiny_video_bytes(tmp_path_factory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("tiny")
    return {ext: write_indexed(d / f"t.{ext}", 30, gop=10).read_bytes() for ext in ("avi", "mp4")}


def make_ucf101(root: Path, data: dict[str, bytes]) -> dict[str, int]:
    """UCF101 layout: 3 classes, groups 1-2 test and 3-4 train in split 1, 2 clips a group."""
    lists, videos = root / "ucfTrainTestlist", root / "UCF-101"
    lists.mkdir(parents=True)
    (lists / "classInd.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(UCF_CLASSES)))
    train, test = [], []
    for i, cls in enumerate(UCF_CLASSES):
        (videos / cls).mkdir(parents=True)
        for g in range(1, 5):
            for c in range(1, 3):
                rel = f"{cls}/v_{cls}_g{g:02d}_c{c:02d}.avi"
                (videos / rel).write_bytes(data["avi"])
                (test.append(rel) if g <= 2 else train.append(f"{rel} {i + 1}"))
    for n in (1, 2, 3):
        (lists / f"trainlist0{n}.txt").write_text("\r\n".join(train) + "\r\n")  # the official files use CRLF
        (lists / f"testlist0{n}.txt").write_text("\r\n".join(test) + "\r\n")
    return {"train": len(train), "test": len(test)}


def make_hmdb51(root: Path, data: dict[str, bytes]) -> dict[str, int]:
    """HMDB51 layout: 2 classes, 5 videos each tagged train (1), test (2) or unused (0)."""
    splits = root / "testTrainMulti_7030_splits"
    splits.mkdir(parents=True)
    tags = [1, 1, 2, 0, 1]
    for cls in HMDB_CLASSES:
        (root / cls).mkdir()
        names = [f"{cls}_clip_{k}_u_nm_np1_fr_goo_{k}.avi" for k in range(len(tags))]
        for name in names:
            (root / cls / name).write_bytes(data["avi"])
        for n in (1, 2, 3):
            rolled = tags[n - 1:] + tags[: n - 1]
            (splits / f"{cls}_test_split{n}.txt").write_text("".join(f"{nm} {t} \n" for nm, t in zip(names, rolled)))
    return {"train": 3 * len(HMDB_CLASSES), "test": 1 * len(HMDB_CLASSES)}


# -- one local Ray instance for the whole test session ---------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray with 2 CPUs and a Prometheus metrics endpoint; yields its address and metrics port."""
    import ray

    from beray.runtime import init_ray

    port = _free_port()
    os.environ.pop("RAY_ADDRESS", None)
    info = init_ray(num_cpus=2, _metrics_export_port=port, include_dashboard=True)
    yield {"address": info["gcs_address"], "metrics_port": port}
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory):
    """BackgroundBias-Synth at 32 px, 12 frames, 2 training videos per class (12 in all)."""
    from beray.data.synth import SynthConfig, generate

    config = SynthConfig(size=32, frames=12, train_per_class=2, test_per_class=1, unbiased_per_class=1)
    return generate(tmp_path_factory.mktemp("synth"), config, workers=1, progress=False)


def tiny_overrides(root, storage, name, epochs=2):
    """cpu-tiny shrunk further: 2 DDP workers, batch 4, 16 px clips of 4 frames."""
    return [f"data.root={root}", "data.dataset=synth", "data.num_frames=4", "data.decode_size=20",
            "augment.size=16", "method.queue_size=64", "optim.batch_size=4", f"optim.epochs={epochs}",
            f"run.storage={storage}", f"run.name={name}", "run.log_every=1", "run.max_failures=2",
            "run.workers=2", "run.cpus_per_worker=0.5"]


def registered_checkpoints(run_dir: Path) -> int:
    """Checkpoints the Train controller has registered (a reported checkpoint is only restorable then)."""
    import json

    try:
        return len(json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())["checkpoint_results"])
    except (OSError, ValueError, KeyError):
        return 0


def tiny_sweep(tmp_path: Path, synth: Path, name: str, space: dict, **extra) -> Path:
    """A sweep file over the tiny BackgroundBias-Synth: 16 px, 4 frames, batch 4, kNN objective."""
    tree = {"name": name, "storage": str(tmp_path / "sweeps"),
            "base": {"preset": "cpu-tiny", "set": {"data.root": str(synth), "data.num_frames": 4,
                                                   "data.decode_size": 20, "augment.size": 16,
                                                   "method.queue_size": 64, "optim.batch_size": 4,
                                                   "optim.epochs": 1, "run.images_every": 0}},
            "space": space, "seeds": 1, "resources": {"workers": 1, "cpus_per_worker": 0.49},  # 2 at once on 2 CPUs
            "eval": {"mode": "knn", "k": 3}, "objective": {"metric": "test_swapped.top1", "mode": "max"}, **extra}
    f = tmp_path / f"{name}.yaml"
    f.write_text(yaml.safe_dump(tree))
    return f


@contextmanager
def scraped(port: int, prefixes: tuple[str, ...], every_s: float = 2.0):
    """Ray's Prometheus endpoint on ``port`` scraped every ``every_s`` while the block runs, as Prometheus would:
    yields the list of scrapes, each the lines that start with ``prefixes``. (Ray drops a gauge some 20 s after
    its last update: a scrape after a run has ended may find nothing.)"""
    import threading
    import urllib.request

    scrapes, stop = [], threading.Event()

    def scrape():
        while not stop.is_set():
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
                scrapes.append("\n".join(line for line in text.splitlines() if line.startswith(prefixes)))
            except OSError:
                pass
            stop.wait(every_s)

    scraper = threading.Thread(target=scrape, daemon=True)
    scraper.start()
    try:
        yield scrapes
    finally:
        stop.set()
        scraper.join()


@pytest.fixture(scope="session")
def grid_sweep(ray_cluster, tiny_synth, tmp_path_factory) -> dict:
    """One real 2 x 2 sweep (gamma x noise, 4 points trained as one pack) on a copy of the tiny set whose first training video
    is cut short, run once and checked several ways (the sweep tests, the Grafana dashboard's metrics).
    Ray's Prometheus endpoint is scraped while it runs (``scraped``; "scrapes": the ``ray_beray_``/``ray_node_``
    lines of each)."""
    import contextlib
    import io
    import re
    import shutil

    from beray.sweep.__main__ import main

    tmp = tmp_path_factory.mktemp("grid")
    data = tmp / "synth"
    shutil.copytree(tiny_synth, data)
    first = data / (data / "train.csv").read_text().splitlines()[1].split(",")[0]
    first.write_bytes(first.read_bytes()[:200])  # unreadable: skipped, counted, named
    f = tiny_sweep(tmp, data, "grid", {"be.gamma": {"grid": [0.0, 0.3]}, "be.noise": {"grid": ["intra_frame", "gaussian"]}})
    with scraped(ray_cluster["metrics_port"], ("ray_beray_", "ray_node_")) as scrapes:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(f)])
        done = re.compile(r'ray_beray_sweep_trials\{[^}]*state="finished",sweep="grid"\} 4(\.0)?$', re.M)
        # the last trial counts reach the endpoint within Ray's export interval
        wait_for(lambda: bool(scrapes and done.search(scrapes[-1])), 60, poll_s=0.5)
    return {"code": code, "out": out.getvalue(), "err": err.getvalue(), "results": tmp / "sweeps" / "grid", "file": f,
            "skipped": str(first), "scrapes": scrapes}


@pytest.fixture(scope="session")
def overrides():
    """``tiny_overrides`` for test folders that cannot import this conftest by name (tests/gpu)."""
    return tiny_overrides


# -- the shared Ray is clean between tests --------------------------------------------------------------


@pytest.fixture(autouse=True)
def _ray_left_clean(request):
    """A test on the shared Ray leaves nothing that holds its CPUs or GPUs: an actor, a running task, a placement
    group (Ray's state API, ``beray.runtime.holders``), or CPUs held by nothing that Ray lists. What is still there
    after a grace period (Ray ends an actor that nobody holds, and a finished dataset's actor pool, within seconds)
    fails the test, named; its placement groups are removed, so that the tests after it start on a clean Ray."""
    yield
    if "ray_cluster" not in request.fixturenames:
        return
    import ray

    if not ray.is_initialized():
        return
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    from beray.runtime import holders

    def clean() -> bool:
        return not holders() and ray.available_resources().get("CPU", 0) >= ray.cluster_resources().get("CPU", 0)

    if wait_for(clean, 20, poll_s=0.5):
        return
    left = holders()
    for kind, name, _ in left:
        if kind == "placement group":
            from ray._raylet import PlacementGroupID

            try:
                remove_placement_group(PlacementGroup(PlacementGroupID.from_hex(name)))
            except Exception:  # a named group: its id is not at hand
                pass
    free, total = ray.available_resources().get("CPU", 0), ray.cluster_resources().get("CPU", 0)
    pytest.fail(f"the test left the shared Ray holding resources ({free:g} of {total:g} CPUs free): "
                + ("; ".join(f"{kind} {name} {res}" for kind, name, res in left) or "nothing that Ray lists"),
                pytrace=False)
