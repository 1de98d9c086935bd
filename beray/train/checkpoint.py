"""Training state <-> a checkpoint directory: everything a resumed run needs to continue exactly."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

STATE_FILE = "state.pt"


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def save_state(directory: str | Path, model: nn.Module, optimizer, scheduler, scaler, epoch: int,
               config: dict, global_step: int = 0) -> Path:
    """Write encoder, momentum encoder and queue (all in the model's state), optimiser, scheduler,
    scaler, epoch and RNG states. Written to a temporary name and renamed, so a reader never
    sees half a file."""
    path = Path(directory) / STATE_FILE
    tmp = path.with_suffix(".tmp")
    torch.save({
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": epoch,
        "global_step": global_step,
        "config": config,
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
    }, tmp)
    os.replace(tmp, path)
    return path


def load_state(directory: str | Path, model: nn.Module, optimizer=None, scheduler=None, scaler=None) -> dict:
    """Restore what ``save_state`` wrote; returns the raw state (its ``epoch`` is the last finished)."""
    state = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=False)
    unwrap(model).load_state_dict(state["model"])
    for obj, key in ((optimizer, "optimizer"), (scheduler, "scheduler"), (scaler, "scaler")):
        if obj is not None:
            obj.load_state_dict(state[key])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return state
