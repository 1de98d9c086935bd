"""The Ray Train worker loop: a plain PyTorch loop with Ray only at its edges
(dataset shard in, ``prepare_model``, ``report`` with a checkpoint out).

Batches arrive on the worker's device (``iter_torch_batches``' default): anything
that leaves the step (metrics, logs, images) goes through ``.item()`` or ``.cpu()``.
Every epoch reseeds this rank's RNG from (run seed, epoch, rank) and tells the data
pipeline which epoch to draw, so a resumed run continues exactly as the
uninterrupted one would have.
"""

from __future__ import annotations

import math
import os
import tempfile
import time

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from beray.config import Config
from beray.augment.be import add_noise
from beray.methods.build import build_method, encoder, make_optimizer, train_step
from beray.train.checkpoint import backbone_weights, load_state, load_weights, read_state, save_state
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


def train_loop_per_worker(config: dict) -> list[dict]:
    """Train ``config['cfg']`` from its last checkpoint to the last epoch; returns this attempt's epoch metrics."""
    cfg = Config.model_validate(config["cfg"])
    run_name = config["run_name"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.run.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    device = ray.train.torch.get_device()

    model = build_method(cfg)
    if cfg.model.pretrained:  # fine-tuning: the pre-trained backbone, a new head (Sec. 4.1)
        state, f = read_state(cfg.model.pretrained)
        load_weights(encoder(model), backbone_weights(state), f,
                     f"a {cfg.model.backbone} x{cfg.model.width} backbone")
    model = ray.train.torch.prepare_model(model)
    o = cfg.optim
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=o.lr_step, gamma=o.lr_decay)
    use_amp = o.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    data = config["run_data"]

    def tell(line: str) -> None:
        """Rank 0's line for the user: to the driver, which prints it on its terminal, or to the worker's log."""
        if config.get("echo"):
            data.say.remote(line)
        else:
            say(line)

    start_epoch, global_step = 0, 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = load_state(d, model, optimizer, scheduler, scaler)
        start_epoch, global_step = state["epoch"] + 1, state.get("global_step", 0)
        if rank == 0:
            tell(f"resuming from epoch {start_epoch + 1} ({checkpoint.path})")

    torch.set_num_threads(cfg.run.torch_threads or max(1, len(os.sched_getaffinity(0)) // ctx.get_local_world_size()))
    shard = ray.train.get_dataset_shard("train")
    per_worker = o.batch_size // world
    monitor = Monitor(config["tensorboard"], run_name, rank, o.epochs, cfg.run.log_every, tell)
    history = []

    for epoch in range(start_epoch, o.epochs):
        model.train()
        torch.manual_seed(epoch_seed(cfg.run.seed, epoch, rank))
        ray.get(data.set_epoch.remote(epoch))  # every rank, before it asks for the epoch (Ray Data waits for all)
        lr = optimizer.param_groups[0]["lr"]
        batches = iter(shard.iter_torch_batches(batch_size=per_worker, prefetch_batches=cfg.data.prefetch_batches,
                                                drop_last=True, pin_memory=device.type == "cuda"))
        n_steps, loss_sum, masked, wait, t_epoch = 0, 0.0, 0.0, 0.0, time.perf_counter()
        first_wait = first_step = 0.0  # the first batch also waits for the epoch's pipeline to start
        while cfg.run.max_steps_per_epoch is None or n_steps < cfg.run.max_steps_per_epoch:
            t0 = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                break
            t1 = time.perf_counter()
            batch = add_noise(batch, cfg.be, cfg.run.seed, epoch)  # x_d on the device, drawn from this batch alone
            out = train_step(model, optimizer, scaler, batch, device, use_amp)
            loss = out["loss"].item()  # also waits for the device, so the step time is real
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss is {loss} at epoch {epoch + 1}, step {n_steps + 1}; "
                                         "lower optim.lr or turn off optim.amp")
            t2 = time.perf_counter()
            if n_steps == 0 and cfg.run.images_every and epoch % cfg.run.images_every == 0:
                monitor.images(global_step, batch)
            logged = {k: v.detach().item() for k, v in out.items() if k != "loss"}
            masked += logged.get("hard_negative_masked", 0.0)
            wait += t1 - t0
            if n_steps == 0:
                first_wait, first_step = t1 - t0, time.perf_counter() - t0
            loss_sum += loss
            n_steps += 1
            global_step += 1
            monitor.step(epoch, n_steps - 1, global_step, {
                "loss": loss, "lr": lr, "clips_per_s": world * per_worker / (t2 - t0),
                "step_time_s": t2 - t0, "data_wait_fraction": (t1 - t0) / (t2 - t0), **logged})
        if n_steps == 0:
            raise RuntimeError(f"epoch {epoch + 1} had no full batch of {per_worker} clips on worker {rank}: "
                               "the data has fewer readable videos than optim.batch_size")
        scheduler.step()
        elapsed = time.perf_counter() - t_epoch
        skipped = ray.get(data.drain.remote()) if rank == 0 else {}
        metrics = {"epoch": epoch + 1, "loss": loss_sum / n_steps, "lr": lr, "steps": n_steps,
                   "clips": world * per_worker * n_steps, "hard_negatives_masked": sum_over_ranks(masked, device),
                   "clips_per_s": world * per_worker * n_steps / elapsed, "data_wait_fraction": wait / elapsed,
                   "data_wait_after_first": (wait - first_wait) / max(elapsed - first_step, 1e-9),
                   "skipped_videos": len(skipped), "skipped_paths": sorted(skipped), "resumed_from_epoch": start_epoch}
        history.append(metrics)
        monitor.epoch(epoch, global_step, {k: v for k, v in metrics.items()
                                            if isinstance(v, (int, float)) and k != "epoch"}, skipped)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                save_state(tmp, model, optimizer, scheduler, scaler, epoch, config["cfg"], global_step)
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt)
    monitor.close()
    return history
