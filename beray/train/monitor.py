"""What a run shows while it trains: TensorBoard (rank 0), Ray metrics (every rank), progress lines."""

from __future__ import annotations

import sys
import tempfile

import numpy as np
import torch
from ray.util.metrics import Gauge

from beray import storage

STARVED = 0.2  # fraction of step time waiting for data above which the loop says so


def say(line: str) -> None:
    """One line to the worker's own stdout, which goes to Ray's worker log (and to the driver with
    ``log_to_driver``); Ray Train's patched ``print`` would also log it, and the driver show it twice."""
    sys.__stdout__.write(line + "\n")
    sys.__stdout__.flush()


class Monitor:
    """``log_dir`` is a local folder or a URI (then TensorBoard writes to a local folder that is
    uploaded there at the end of every epoch)."""

    def __init__(self, log_dir: str, run_name: str, rank: int, epochs: int, log_every: int, tell=say):
        self.rank, self.epochs, self.log_every, self.say = rank, epochs, log_every, tell
        self.tags = {"run": run_name, "rank": str(rank)}
        self.writer, self.upload_to = None, None
        if rank == 0:
            from tensorboardX import SummaryWriter

            if storage.is_uri(log_dir):
                self.upload_to, log_dir = log_dir, tempfile.mkdtemp(prefix=f"beray-tensorboard-{run_name}-")
            self.writer = SummaryWriter(log_dir)
        keys = ("run", "rank")
        self.gauges = {
            "clips_per_s": Gauge("beray_clips_per_s", "Training clips per second, per worker", tag_keys=keys),
            "step_time_s": Gauge("beray_step_time_s", "Seconds per training step", tag_keys=keys),
            "data_wait_fraction": Gauge("beray_data_wait_fraction", "Fraction of step time waiting for data",
                                        tag_keys=keys),
            "loss": Gauge("beray_loss", "Training loss", tag_keys=keys),
        }

    def step(self, epoch: int, step: int, global_step: int, values: dict[str, float]) -> None:
        for k, g in self.gauges.items():
            if k in values:
                g.set(values[k], tags=self.tags)
        if self.writer is not None and global_step % self.log_every == 0:
            for k, v in values.items():
                self.writer.add_scalar(f"train/{k}", v, global_step)
            self.say(f"epoch {epoch + 1}/{self.epochs}  step {step + 1}  loss {values['loss']:.4f}  "
                  f"lr {values['lr']:.4g}  clips/s {values['clips_per_s']:.1f}  "
                  f"data wait {100 * values['data_wait_fraction']:.0f}%")

    def images(self, global_step: int, batch: dict[str, torch.Tensor]) -> None:
        """A few frames of the first video's x_o and x_d (uint8 (T, C, H, W), on any device)."""
        if self.writer is None:
            return
        for key in ("x_o", "x_d"):
            if key not in batch:  # fine-tuning ships x_o alone
                continue
            clip = batch[key][0].cpu()
            clip = clip.reshape(-1, *clip.shape[-3:])  # clip-order tuples: their clips one after another
            picks = np.linspace(0, len(clip) - 1, min(8, len(clip))).round().astype(int)
            self.writer.add_images(f"clips/{key}", clip[picks].numpy(), global_step, dataformats="NCHW")

    def epoch(self, epoch: int, global_step: int, values: dict[str, float], skipped: dict[str, str]) -> None:
        if self.writer is None:
            return
        for k, v in values.items():
            self.writer.add_scalar(f"epoch/{k}", v, epoch + 1)
        self.writer.add_scalar("data/skipped_videos", len(skipped), epoch + 1)
        self.writer.flush()
        if self.upload_to is not None:
            storage.upload_dir(self.writer.logdir, self.upload_to)
        line = (f"epoch {epoch + 1}/{self.epochs} done: loss {values['loss']:.4f}  clips/s "
                f"{values['clips_per_s']:.1f}  data wait {100 * values['data_wait_fraction']:.0f}%")
        if values.get("hard_negatives_masked"):
            line += (f"  hard negative left out for {values['hard_negatives_masked']:.0f} of {values['clips']:.0f}"
                     " clips (no clip of the video distinct from x_o)")
        if skipped:
            line += f"  skipped {len(skipped)} unreadable video(s): " + "; ".join(
                f"{p} ({r})" for p, r in sorted(skipped.items()))
        self.say(line)
        # Judged after the first batch: at a pass's start it waits for the pipeline to start, which more
        # decode CPUs would not shorten.
        steady = values.get("data_wait_after_first", values["data_wait_fraction"])
        if steady > STARVED:
            self.say(f"warning: the GPU/CPU waited for data {100 * steady:.0f}% of the step "
                  "time; give decoding more CPUs (--set data.decode_concurrency=N, data.decode_cpus) or decode "
                  "smaller frames (--set data.decode_size=...)")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            if self.upload_to is not None:
                storage.upload_dir(self.writer.logdir, self.upload_to)
