"""What an evaluation starts from: a checkpoint (a run directory, a checkpoint directory or a
``state.pt``), the config it was trained with, and the models built from it.

The file is read with ``torch.load(weights_only=True)``; a foreign file or a model other than
the one asked for is a one-line ``CheckpointError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError
from torch import nn

from beray import storage
from beray.config import Config, format_errors, load_config
from beray.methods.build import build_method
from beray.models import build_backbone
from beray.train.checkpoint import CheckpointError, load_backbone, load_weights, read_state


@dataclass
class Source:
    path: str  # the state.pt, a local path or a URI
    state: dict
    config: Config  # as the run was trained
    eval_dir: str  # where results go: RUN/eval (a pack member's: RUN/MEMBER/eval), or next to the checkpoint

    @property
    def tag(self) -> str:
        """Names this checkpoint's cached features: the file, its size and modification time."""
        size, mtime = storage.stat(self.path)
        return f"{self.path}:{size}:{mtime}"

    def describe(self) -> str:
        c = self.config
        return f"{c.method.name} ({c.model.backbone} x{c.model.width}, epoch {self.state.get('epoch', -1) + 1})"


def open_checkpoint(path: str | Path) -> Source:
    state, f = read_state(path)
    try:
        config = Config.model_validate(state["config"])
    except ValidationError as e:
        raise CheckpointError(f"{f} holds a config beray cannot read: {format_errors(e)}") from None
    folder = storage.split(f)[0]
    run_dir, name = storage.split(folder)
    member = storage.join(storage.split(run_dir)[0], name)  # RUN/checkpoint_*/MEMBER/state.pt -> RUN/MEMBER
    eval_dir = next((storage.join(d, "eval") for d in (run_dir, member)
                     if storage.kind(storage.join(d, "config.yaml")) == "file"), storage.join(folder, "eval"))
    return Source(f, state, config, eval_dir)


def pack_member(source: Source) -> tuple[str, str]:
    """(RUN, MEMBER) of a checkpoint whose results go to RUN/MEMBER/eval (a pack's member's)."""
    return storage.split(storage.split(source.eval_dir)[0])


def eval_config(source: Source, dataset: str | None = None, root: str | None = None, split: int | None = None,
                overrides: list[str] = ()) -> Config:
    """The checkpoint's config with the evaluation's dataset and ``--set`` overrides (clip length,
    stride and size of the test clips, fine-tuning settings, resources). ConfigError on a bad one."""
    base = source.config.model_dump(mode="json")
    if dataset is not None:
        base["data"].update(dataset=dataset, root=root)
    elif root is not None:
        base["data"]["root"] = root
    if split is not None:
        base["data"]["split"] = split
    cfg = load_config(overrides=list(overrides), base=base)
    saved, asked = source.config.model, cfg.model
    if (saved.backbone, saved.width) != (asked.backbone, asked.width):
        raise CheckpointError(f"{source.path} holds a {saved.backbone} x{saved.width} backbone, not the "
                              f"{asked.backbone} x{asked.width} asked for")
    return cfg


def backbone_of(source: Source) -> tuple[nn.Module, dict]:
    """The checkpoint's backbone (an untrained one of the same shape) and its trained weights."""
    c = source.config.model
    net = build_backbone(c.backbone, c.width)
    return net, load_backbone(net, source.state, source.path, c)  # checks now, not in an actor


def classifier_of(source: Source) -> tuple[nn.Module, dict]:
    """A fine-tuned checkpoint's classifier and its weights; CheckpointError for any other checkpoint."""
    c = source.config
    if c.method.name != "finetune":
        raise CheckpointError(f"{source.path} is a {c.method.name} pretraining checkpoint; expected a fine-tuned "
                              "one (python -m beray.eval finetune --checkpoint RUN writes it)")
    net = build_method(c)
    load_weights(net, source.state["model"], source.path, f"a {c.model.backbone} x{c.model.width} classifier")
    return net, source.state["model"]
