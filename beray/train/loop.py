"""The Ray Train worker loop: a plain PyTorch loop with Ray only at its edges
(dataset shard in, ``prepare_model``, ``report`` with a checkpoint out).

Batches arrive on the worker's device (``iter_torch_batches``' default): anything
that leaves the step (metrics, logs, images) goes through ``.item()`` or ``.cpu()``.
Every epoch reseeds this rank's RNG from (run seed, epoch, rank); each pass of the
data (several epochs, ``beray.data.pipeline``) starts at the epoch the loop tells it,
so a resumed run continues exactly as the uninterrupted one would have.

The loop trains a pack (``beray.train.pack``): each member its own model, optimiser,
scheduler, scaler and torch RNG state, stepped one after another on each batch,
each making its own x_d from the batch's x_v. A run of one is a pack of one.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from beray.config import Config
from beray.augment.be import add_noise
from beray.methods.build import build_method, encoder, make_optimizer, train_step
from beray.train.checkpoint import PACK_FILE, carry_state, load_pretrained, load_state, save_state
from beray.train.epochs import DataStalled, EpochStream
from beray.runtime import describe_holders
from beray.train.monitor import Monitor, say


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The torch seed of ``rank`` in ``epoch`` (dropout, pretext labels, MoCo's BN shuffle)."""
    return int(np.random.default_rng([seed, epoch, 3, rank]).integers(2**62))


def sum_over_ranks(x: float, device: torch.device) -> float:
    """``x`` summed over the Train workers (a device tensor: NCCL reduces CUDA tensors only)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    t = torch.tensor([x], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item()


@dataclass
class _Member:
    """One member's model and training state on this worker, and its torch RNG between its steps."""

    name: str
    cfg: Config
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    monitor: Monitor
    rng: tuple = ()
    failed: str | None = None  # why it stopped (a non-finite loss); the others go on
    loss_sum: float = 0.0
    masked: float = 0.0

    def seed(self, seed: int, device: torch.device) -> None:
        """Start this member's own torch RNG at ``seed`` (the pack's RNG is not shared between members)."""
        torch.manual_seed(seed)
        self.rng = _rng_state(device)

    @contextmanager
    def own_rng(self, device: torch.device):
        torch.set_rng_state(self.rng[0])
        if self.rng[1] is not None:
            torch.cuda.set_rng_state(self.rng[1], device)
        try:
            yield
        finally:
            self.rng = _rng_state(device)


def _rng_state(device: torch.device) -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _build_member(name: str, saved: dict, config: dict, rank: int, device: torch.device, tell,
                  resuming: bool) -> _Member:
    cfg = Config.model_validate(saved)
    torch.manual_seed(cfg.run.seed)  # the same initial weights on every rank and in any pack (DDP broadcasts rank 0's)
    model = build_method(cfg)
    if cfg.model.pretrained and not resuming:  # fine-tuning: the pre-trained backbone, a new head (Sec. 4.1)
        load_pretrained(encoder(model), cfg.model)
    model = ray.train.torch.prepare_model(model)
    o = cfg.optim
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=o.lr_step, gamma=o.lr_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=o.amp and device.type == "cuda")
    label = config["run_name"] + (f"/{name}" if name else "")
    member_tell = (lambda line: tell(f"member {name}: {line}")) if name else tell
    monitor = Monitor(config["tensorboard"][name], label, rank, o.epochs, cfg.run.log_every, member_tell)
    return _Member(name, cfg, model, optimizer, scheduler, scaler, monitor)


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is true on any Train worker."""
    return sum_over_ranks(float(flag), device) > 0


def train_loop_per_worker(config: dict) -> list[dict]:
    """Train every member of ``config['members']`` on one stream, from the job's last checkpoint to the
    last epoch. Returns this attempt's epoch metrics: one dict per epoch for a pack of one, else one dict
    per epoch with each member's metrics under ``members``."""
    cfg = Config.model_validate(config["cfg"])
    run_name = config["run_name"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    data = config["run_data"]

    def tell(line: str) -> None:
        """Rank 0's line for the user: to the driver, which prints it on its terminal, or to the worker's log."""
        if config.get("echo"):
            data.say.remote(line)
        else:
            say(line)

    checkpoint = ray.train.get_checkpoint()  # resuming: the weights come from it, not from model.pretrained
    members = [_build_member(n, c, config, rank, device, tell, checkpoint is not None) for n, c in config["members"]]
    solo = len(members) == 1 and not members[0].name
    start_epoch, global_step = 0, 0
    if checkpoint:
        with checkpoint.as_directory() as d:
            pack = json.loads((Path(d) / PACK_FILE).read_text()) if not solo else {}
            for m in members:
                m.failed = pack.get("failed", {}).get(m.name)
                if m.failed is None:
                    state = load_state(os.path.join(d, m.name), m.model, m.optimizer, m.scheduler, m.scaler)
                    start_epoch, global_step = state["epoch"] + 1, state.get("global_step", 0)
            if pack:
                start_epoch = pack["epoch"] + 1
        if rank == 0:
            tell(f"resuming from epoch {start_epoch + 1} ({checkpoint.path})")

    torch.set_num_threads(cfg.run.torch_threads or max(1, int(cfg.run.cpus_per_worker)))
    shard = ray.train.get_dataset_shard("train")
    o = cfg.optim
    per_worker = o.batch_size // world
    history = []

    stream, pass_end = None, start_epoch
    for epoch in range(start_epoch, o.epochs):
        live = [m for m in members if m.failed is None]
        for m in live:
            m.model.train()
            m.seed(epoch_seed(cfg.run.seed, epoch, rank), device)
            m.loss_sum = m.masked = 0.0
        if epoch >= pass_end:  # a new pass of the data over the next epochs
            ray.get(data.set_epoch.remote(epoch))  # every rank, before it asks for the pass (Ray Data waits for all)
            if stream is not None:
                stream.close()
            stream = EpochStream(shard.iter_torch_batches(batch_size=None, prefetch_batches=cfg.data.prefetch_batches,
                                                          pin_memory=device.type == "cuda"), per_worker,
                                 cfg.data.stall_timeout_s)
            pass_end = epoch + config["epochs_per_pass"]
        batches = stream.epoch(epoch)
        n_steps, wait, t_epoch, stalled = 0, 0.0, time.perf_counter(), None
        first_wait = first_step = 0.0  # at a pass's start, the first batch also waits for the pipeline to start
        while live and (cfg.run.max_steps_per_epoch is None or n_steps < cfg.run.max_steps_per_epoch):
            t0 = time.perf_counter()
            try:
                batch = next(batches, None)
            except DataStalled as e:
                batch, stalled = None, str(e)
            if any_rank(batch is None, device):  # every rank takes as many steps (DDP): the first to run out ends the epoch
                break
            t1 = time.perf_counter()
            losses = {}
            for m in live:  # one after another on the same batch; each step's activations are freed before the next
                with m.own_rng(device):
                    x = add_noise(batch, m.cfg.be, cfg.run.seed, epoch)  # x_d on the device, drawn from this batch alone
                    out = train_step(m.model, m.optimizer, m.scaler, x, device, m.scaler.is_enabled())
                loss = out["loss"].item()  # also waits for the device, so the step time is real
                if any_rank(not math.isfinite(loss), device):
                    # not raised: Ray Train would restart the workers, and a resumed run diverges again
                    m.failed = (f"loss is {loss} at epoch {epoch + 1}, step {n_steps + 1}; lower optim.lr or "
                                "turn off optim.amp")
                    if rank == 0 and not solo:
                        tell(f"member {m.name}: failed: {m.failed}; the other members go on")
                    continue
                if n_steps == 0 and m.cfg.run.images_every and epoch % m.cfg.run.images_every == 0:
                    m.monitor.images(global_step, x)
                losses[m.name] = (loss, {k: v.detach().item() for k, v in out.items() if k != "loss"})
                del out, x
            t2 = time.perf_counter()
            live = [m for m in live if m.failed is None]
            wait += t1 - t0
            if n_steps == 0:
                first_wait, first_step = t1 - t0, t2 - t0
            n_steps += 1
            global_step += 1
            for m in live:
                loss, logged = losses[m.name]
                m.loss_sum += loss
                m.masked += logged.get("hard_negative_masked", 0.0)
                m.monitor.step(epoch, n_steps - 1, global_step, {
                    "loss": loss, "lr": m.optimizer.param_groups[0]["lr"], "clips_per_s": world * per_worker / (t2 - t0),
                    "step_time_s": t2 - t0, "data_wait_fraction": (t1 - t0) / (t2 - t0), **logged})
        elapsed = time.perf_counter() - t_epoch
        skipped = ray.get(data.drain.remote(epoch)) if rank == 0 else {}
        shared = {"epoch": epoch + 1, "steps": n_steps, "clips": world * per_worker * n_steps,
                  "clips_per_s": world * per_worker * n_steps / elapsed, "data_wait_fraction": wait / elapsed,
                  "data_wait_after_first": (wait - first_wait) / max(elapsed - first_step, 1e-9),
                  "skipped_videos": len(skipped), "skipped_paths": sorted(skipped), "resumed_from_epoch": start_epoch,
                  "node": ray.get_runtime_context().get_node_id()}  # where rank 0 trains (a sweep's records keep it)
        if any_rank(stalled is not None, device):  # not raised: Ray Train's restarts would wait as long again;
            # the driver names what holds the cluster, and a sweep's trial gets its retries
            why = stalled or "another rank's data pipeline is starved"
            metrics = {**shared, "stalled": f"{why}; {describe_holders()}" if rank == 0 else why}  # as it is now
            history.append(metrics)
            ray.train.report(metrics)
            break
        if n_steps == 0 and live:  # every rank alike (any_rank); not raised: Ray Train's restarts would decode the
            # same data to the same end. No checkpoint: with the data mended, a resume continues from the last one.
            unreadable = f" ({len(skipped)} unreadable, e.g. {sorted(skipped)[0]})" if skipped else ""
            metrics = {**shared, "no_data": f"epoch {epoch + 1} had no full batch of {per_worker} clips on a worker: "
                                            f"the data has fewer readable videos than optim.batch_size{unreadable}"}
            history.append(metrics)
            ray.train.report(metrics)
            break
        per_member = {}
        for m in live:
            lr = m.optimizer.param_groups[0]["lr"]
            m.scheduler.step()
            per_member[m.name] = metrics = {**shared, "loss": m.loss_sum / n_steps, "lr": lr,
                                            "hard_negatives_masked": sum_over_ranks(m.masked, device)}
            m.monitor.epoch(epoch, global_step, {k: v for k, v in metrics.items()
                                                  if isinstance(v, (int, float)) and k != "epoch"}, skipped)
        failed = {m.name: m.failed for m in members if m.failed is not None}
        if solo:  # a run of one that failed: why (``fit`` raises it), and no checkpoint
            metrics = per_member[""] if live else {**shared, "failed": failed}
        else:
            metrics = {**shared, "members": per_member, "failed": failed}
        history.append(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0 and (live or not solo):
                for m in live:
                    os.makedirs(os.path.join(tmp, m.name), exist_ok=True)
                    with m.own_rng(device):  # its own RNG state is what it resumes with
                        save_state(os.path.join(tmp, m.name), m.model, m.optimizer, m.scheduler, m.scaler, epoch,
                                   m.cfg.model_dump(mode="json"), global_step)
                previous = ray.train.get_checkpoint()  # the last one reported (or resumed from)
                for m in members:
                    if m.failed is not None and previous is not None:  # its last good state, kept
                        carry_state(previous, m.name, tmp)
                if not solo:
                    (Path(tmp) / PACK_FILE).write_text(json.dumps({"epoch": epoch, "failed": failed}))
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt)
        if not live:
            break
    if stream is not None:
        stream.close()
    for m in members:
        m.monitor.close()
    return history
