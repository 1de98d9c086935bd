"""Build and fit the TorchTrainer of one run: Ray Data stream in, checkpoints and logs out.

``make_trainer`` is the seam for Ray Tune and clusters: a sweep's trial driver passes
its own callbacks (``TuneReportCallback``) and a stable run name, and storage may be
a local folder or any URI Ray Train accepts.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import PurePosixPath

from pydantic import ValidationError
import ray
import yaml

from beray import storage as st
from beray.config import Config, ConfigError, resume_changes, to_yaml
from beray.console import say
from beray.runtime import init_ray, missing_local_gpus, waiting_for_gpus


MEMBERS_FILE = "members.yaml"  # a pack's members, as their overrides of the run's config.yaml


@dataclass
class RunInfo:
    name: str
    dir: str  # storage/name, a local path or a URI: Ray Train's checkpoints, config.yaml, tensorboard/
    checkpoint: str | None
    metrics: dict


def run_name(cfg: Config, members: list = ()) -> str:
    """``run.name``, or method-noise-time (method-packN-time for a pack of N members)."""
    what = f"pack{len(members)}" if members else cfg.be.noise
    return cfg.run.name or f"{cfg.method.name}-{what}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_dir(cfg: Config, name: str) -> str:
    return st.join(st.resolve(cfg.run.storage), name)


def make_trainer(cfg: Config, name: str, callbacks: list = (), echo: bool = False, members: list[list[str]] = (),
                 names: list[str] | None = None):
    """The TorchTrainer of run ``name`` (resuming when its storage holds checkpoints), with Ray
    Train ``callbacks``; ``echo``: rank 0's lines go to the driver's terminal (``fit`` prints them).
    ``members``: one list of overrides of ``cfg`` per member of a pack (none: ``cfg`` alone), their
    folders named ``names`` (default: after their overrides).
    Raises DatasetError before Ray starts when the data is not there, ConfigError for a bad pack."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from beray.data.pipeline import build_dataset, epochs_per_pass, run_data, training_records
    from beray.data.reach import check_nodes
    from beray.methods.build import method_views
    from beray.train.loop import train_loop_per_worker
    from beray.train.pack import make_pack

    pack = make_pack(cfg, members, names)  # a bad member fails here, before Ray starts
    rows = training_records(cfg)  # a bad dataset fails here, before Ray starts
    storage = st.resolve(cfg.run.storage)
    directory = st.join(storage, name)
    try:
        saved = load_run_config(directory)
    except FileNotFoundError:
        saved = None
    members = [list(m) for m in members]
    if saved is not None and (had := load_members(directory)) != members:
        raise ConfigError(f"{directory} already holds a run with other members ({had or 'none'}),"
                          " which this one would resume; pick another run.name")
    if saved is not None:  # Ray Train resumes a run of this name: only what a resume allows may change
        try:
            resume_changes(saved, cfg)
        except ConfigError as e:
            raise ConfigError(f"{directory} already holds a run, which this one would resume; pick another "
                              f"run.name. {e}") from None
    if why := missing_local_gpus(cfg.run.gpus_per_worker, cfg.run.workers):
        raise ConfigError(why)
    if saved is None:  # a resumed run takes its weights from its checkpoint, not from model.pretrained
        check_pretrained(pack)
    try:
        st.write_text(st.join(directory, "config.yaml"), to_yaml(cfg))
        if members:
            st.write_text(st.join(directory, MEMBERS_FILE), yaml.safe_dump(members))
        for m in pack:
            if m.name:
                st.write_text(st.join(directory, m.name, "config.yaml"), to_yaml(m.cfg))
    except st.FAILURES as e:
        raise ConfigError(f"run.storage: cannot write the run's files to {directory}: {e}") from None
    init_ray()
    check_nodes([r["path"] for r in rows])  # a node without the data is named now, not after its skipped videos
    if waiting := waiting_for_gpus(cfg.run.gpus_per_worker, cfg.run.workers):
        say(waiting)  # once: Ray Train itself waits without a word
    state = run_data(name)  # the run's epoch and skipped videos; the handles below keep it alive
    use_gpu = cfg.run.gpus_per_worker > 0
    resources = {"CPU": cfg.run.cpus_per_worker, **({"GPU": cfg.run.gpus_per_worker} if use_gpu else {})}
    ingest = DataConfig.default_ingest_options()  # Train replaces the dataset's own execution options
    ingest.preserve_order = True  # batches in the order the seed fixes
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "run_name": name, "run_data": state,
                           "epochs_per_pass": epochs_per_pass(cfg, len(rows)),
                           "members": [(m.name, m.cfg.model_dump(mode="json")) for m in pack],
                           "tensorboard": {m.name: st.join(directory, m.name, "tensorboard") if m.name
                                           else st.join(directory, "tensorboard") for m in pack},
                           "echo": echo},
        scaling_config=ScalingConfig(num_workers=cfg.run.workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(name=name, storage_path=storage, callbacks=list(callbacks),
                             failure_config=FailureConfig(max_failures=cfg.run.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=3)),
        datasets={"train": build_dataset(cfg, name, state, method_views(cfg), rows)},
        dataset_config=DataConfig(execution_options=ingest),
    )


def fit(cfg: Config, name: str | None = None, callbacks: list = (), echo: bool = False,
        members: list[list[str]] = (), names: list[str] | None = None) -> RunInfo:
    """Pretrain ``cfg`` (or the pack of its ``members``, named ``names``) with ``cfg.run.workers`` Ray Train
    workers; resumes when ``name`` has checkpoints. ``echo``: print rank 0's epoch lines here, as they come.
    A run of one whose loss goes non-finite stops at once, without restarts: FloatingPointError saying where; an
    epoch without a full batch (too few readable videos) stops every member so: DatasetError; a data pipeline that
    delivers nothing for ``data.stall_timeout_s``: DataStalled, naming what holds the cluster."""
    from ray.train import TrainingFailedError

    from beray.data.datasets import DatasetError
    from beray.data.reach import found_in

    name = name or run_name(cfg, members)
    trainer = make_trainer(cfg, name, callbacks, echo, members, names)
    state = trainer.train_loop_config["run_data"]
    stop = threading.Event()
    printer = threading.Thread(target=_echo, args=(state, stop), daemon=True) if echo else None
    if printer:
        printer.start()
    try:
        result = trainer.fit()
    except TrainingFailedError as e:
        raise found_in(e) or e  # a node without the data: one line, not the workers' tracebacks
    finally:
        stop.set()
        if printer:
            printer.join()
        skipped, (decode_s, decode_clips) = ray.get([state.all.remote(), state.decoded.remote()])
        ray.kill(state)
    history = result.return_value or []  # rank 0's per-epoch metrics of the last attempt
    if history and (why := history[-1].get("stalled")):
        from beray.train.epochs import DataStalled

        raise DataStalled(why)
    if history and (why := history[-1].get("no_data")):
        raise DatasetError(why)  # every member stopped: the data, not one member (its last report has no checkpoint)
    if not members and history and (why := (history[-1].get("failed") or {}).get("")):
        raise FloatingPointError(why)  # a run of one whose loss went non-finite (its last report has no checkpoint)
    metrics = dict(result.metrics or {})  # the last checkpoint's
    metrics["skipped_total"] = len(skipped)
    metrics["decode_cpu_s"], metrics["decode_clips"] = decode_s, decode_clips  # this attempt's, all members
    metrics["history"] = history
    where = run_dir(cfg, name)  # Ray's checkpoint path has no scheme (s3://): its name in the run's folder has
    return RunInfo(name, where, st.join(where, PurePosixPath(result.checkpoint.path).name) if result.checkpoint
                   else None, metrics)


def _echo(state, stop: threading.Event, every_s: float = 0.5) -> None:
    """Print the lines rank 0 sends to ``state`` (a ``RunData``) until ``stop``, then the last of them."""
    shown = 0
    while True:
        stopping = stop.wait(every_s)
        try:
            lines = ray.get(state.lines_from.remote(shown))
        except ray.exceptions.RayError:  # the run's state is gone with its node: the run itself says why
            return
        for line in lines:
            say(line)
        shown += len(lines)
        if stopping:
            return


def check_pretrained(pack) -> None:
    """Each member's ``model.pretrained`` loaded as its workers will load it, once per file and backbone: one that
    is not a checkpoint of that backbone, or cannot be read, is a ConfigError before Ray starts, not a worker
    error after Ray Train's restarts."""
    from beray.models import build_backbone
    from beray.train.checkpoint import CheckpointError, load_pretrained

    seen = set()
    for m in pack:
        c = m.cfg.model
        if not c.pretrained or (c.pretrained, c.backbone, c.width) in seen:
            continue
        seen.add((c.pretrained, c.backbone, c.width))
        try:
            load_pretrained(build_backbone(c.backbone, c.width), c)
        except (CheckpointError, *st.FAILURES) as e:
            raise ConfigError(f"{'member ' + m.name + ': ' if m.name else ''}model.pretrained: {e}") from None


def load_members(directory: str) -> list[list[str]]:
    """The members of the pack in ``directory`` (their overrides), [] for a run of one."""
    try:
        return yaml.safe_load(st.read_text(st.join(st.resolve(directory), MEMBERS_FILE))) or []
    except FileNotFoundError:
        return []


def load_run_config(directory: str) -> Config:
    """The config a run was started with (its ``config.yaml``); FileNotFoundError when there is none."""
    try:
        text = st.read_text(st.join(st.resolve(directory), "config.yaml"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{directory} is not a beray run (no config.yaml)") from None
    try:
        return Config.model_validate(yaml.safe_load(text))
    except (ValidationError, yaml.YAMLError) as e:
        raise ConfigError(f"{directory}/config.yaml is not a valid beray config: {e}") from None
