"""Training state <-> a checkpoint directory: everything a resumed run needs to continue exactly.

The file holds tensors, numbers, strings and containers only, so it loads with
``torch.load(..., weights_only=True)``: loading never runs code from the file.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from beray import storage as st
from beray.config import ModelConfig

STATE_FILE = "state.pt"
PACK_FILE = "pack.json"  # in a pack's checkpoints: the epoch and the members that failed, with why


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
        # No CUDA RNG state: every epoch reseeds torch on every device (loop.epoch_seed), and a resume on
        # fewer GPUs would have no device to restore it to.
        "rng": {"torch": torch.get_rng_state(), "numpy": _numpy_state(), "python": random.getstate()},
    }, tmp)
    os.replace(tmp, path)
    return path


def _numpy_state() -> tuple:
    """NumPy's global RNG state with its key as a tensor (a NumPy array would need unpickling code)."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    return name, torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(gauss)


def load_state(directory: str | Path, model: nn.Module, optimizer=None, scheduler=None, scaler=None) -> dict:
    """Restore what ``save_state`` wrote; returns the raw state (its ``epoch`` is the last finished)."""
    state = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)
    unwrap(model).load_state_dict(state["model"])
    for obj, key in ((optimizer, "optimizer"), (scheduler, "scheduler"), (scaler, "scaler")):
        if obj is not None and state[key]:  # a disabled (CPU) scaler saved {}: an enabled one starts afresh
            obj.load_state_dict(state[key])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    name, key, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(rng["python"])
    return state


class CheckpointError(Exception):
    """A file is not a beray checkpoint, or holds a model other than the one asked for."""


def carry_state(previous, name: str, into: str | Path) -> bool:
    """Copy member ``name``'s state from the ``previous`` Ray Train checkpoint (any storage) into ``into/name``:
    a pack's member that failed keeps its last good state in every later checkpoint. False when it has none."""
    from pyarrow.fs import FileType

    src = f"{previous.path}/{name}/{STATE_FILE}"
    if previous.filesystem.get_file_info(src).type != FileType.File:
        return False
    os.makedirs(os.path.join(into, name), exist_ok=True)
    with previous.filesystem.open_input_stream(src) as f, open(os.path.join(into, name, STATE_FILE), "wb") as out:
        shutil.copyfileobj(f, out)
    return True


def find_state(path: str | Path) -> str:
    """The ``state.pt`` that ``path`` (local or a URI) names: the file itself, a checkpoint directory, or a
    run directory or a pack member's directory (its last checkpoint). CheckpointError saying what was
    expected otherwise."""
    p = st.resolve(str(path))
    found = st.kind(p)
    if found == "file":
        return p
    if st.kind(st.join(p, STATE_FILE)) == "file":
        return st.join(p, STATE_FILE)

    def checkpoints(run: str, member: str = "") -> list[str]:
        dirs = (st.join(run, n, *([member] if member else [])) for n in st.listdir(run) if n.startswith("checkpoint_"))
        return [d for d in dirs if st.kind(st.join(d, STATE_FILE)) == "file"]

    ckpts = checkpoints(p) if found == "dir" else []
    if not ckpts and found == "dir":  # a pack's member: its states are in the job's checkpoints, under its name
        ckpts = checkpoints(*st.split(p))
        if not ckpts and (why := _failed_member(*st.split(p))):
            raise CheckpointError(f"{path}: this pack member failed before its first checkpoint ({why}): "
                                  "it has no state")
    if ckpts:  # Ray Train names them by time: the last in name order is the newest
        return st.join(sorted(ckpts)[-1], STATE_FILE)
    what = "does not exist" if found is None else "holds no state.pt and no checkpoint_*/state.pt"
    raise CheckpointError(f"{path} {what}; expected a run directory, a checkpoint directory or a state.pt")


def _failed_member(run: str, member: str) -> str | None:
    """Why ``member`` of the pack in ``run`` failed, as the newest checkpoint's ``pack.json`` says (None: it did not)."""
    packs = sorted(st.join(run, n, PACK_FILE) for n in st.listdir(run) if n.startswith("checkpoint_"))
    packs = [f for f in packs if st.kind(f) == "file"]
    return json.loads(st.read_text(packs[-1])).get("failed", {}).get(member) if packs else None


def read_state(path: str | Path) -> tuple[dict, str]:
    """(state, its file) of a beray checkpoint, local or at a URI, loaded with ``weights_only=True`` (no code runs)."""
    f = find_state(path)
    try:
        state = torch.load(io.BytesIO(st.read_bytes(f)), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError... for foreign files
        text = str(e).strip()
        why = ("it holds objects that only running code from the file could load" if "Weights only load" in text
               else f"torch.load: {text.splitlines()[0][:160] if text else type(e).__name__}")
        raise CheckpointError(f"{f} is not a beray checkpoint ({why}; beray checkpoints hold tensors, numbers "
                              "and strings only)") from None
    if not isinstance(state, dict) or not {"model", "config"} <= set(state):
        raise CheckpointError(f"{f} is not a beray checkpoint (expected a dict with 'model' and 'config', "
                              "as python -m beray.train writes)")
    return state, f


def load_weights(model: nn.Module, weights: dict, source: str | Path, expected: str) -> None:
    """``model.load_state_dict(weights)``, or a one-line CheckpointError naming what was expected."""
    try:
        unwrap(model).load_state_dict(weights)
    except RuntimeError as e:
        missing = str(e).count("Missing key") + str(e).count("size mismatch")
        raise CheckpointError(f"{source} does not hold {expected}"
                              + (f" ({missing} kind(s) of mismatch: missing keys or shapes)" if missing else "")
                              ) from None


def load_pretrained(backbone: nn.Module, model: ModelConfig) -> None:
    """Fine-tuning's start (Sec. 4.1): the backbone of checkpoint ``model.pretrained`` into ``backbone``, the head
    left new; a one-line CheckpointError for a file that is not a checkpoint, or of another backbone."""
    load_backbone(backbone, *read_state(model.pretrained), model)


def load_backbone(backbone: nn.Module, state: dict, source: str, model: ModelConfig) -> dict:
    """The backbone weights of checkpoint ``state`` (read from ``source``) loaded into ``backbone``, a
    ``model.backbone`` of ``model.width``; returns them. CheckpointError where they do not fit."""
    weights = backbone_weights(state)
    load_weights(backbone, weights, source, f"a {model.backbone} x{model.width} backbone")
    return weights


def backbone_weights(state: dict) -> dict:
    """The backbone's weights in a checkpoint's model state (MoCo's query encoder, or ``backbone.``)."""
    for prefix in ("encoder_q.backbone.", "backbone."):
        found = {k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)}
        if found:
            return found
    return {}
