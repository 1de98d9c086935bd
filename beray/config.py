"""One typed config for a run: the paper's settings as defaults (Sec. 4.1), named presets,
YAML files and ``--set a.b=c`` overrides, validated before any work starts.

The same object flows from the CLI to every Ray Train worker (it is plain data).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator


def results_root() -> str:
    """Where runs and sweeps go unless told: ``$BERAY_RESULTS``, else ``~/beray_results``."""
    return os.environ.get("BERAY_RESULTS", "~/beray_results")


def _one_of(value: str, allowed, what: str) -> str:
    """``value`` if it is one of ``allowed`` (a registry's names), else a ValueError listing them."""
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; allowed: {', '.join(allowed)}")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    dataset: str = "synth"  # synth (BackgroundBias-Synth, generated when root is None), ucf101, hmdb51, ...
    root: str | None = None
    split: int = Field(1, ge=1, le=3)
    subset: str = "train"
    num_frames: int = Field(16, ge=1)  # paper: 16 frames
    stride: int = Field(4, ge=1)  # paper: temporal stride 4
    decode_size: int = Field(128, ge=8)  # short side at decode, before the random crop
    decode_concurrency: int | None = Field(None, ge=1)  # Ray Data decode tasks at once (None: Ray decides)
    decode_cpus: float = Field(1.0, gt=0)  # CPUs per decode task
    clips_per_task: int | None = Field(None, ge=1)  # clips per decode task (None: one worker's share of a batch)
    decode_timeout_s: float = Field(60.0, gt=0)  # a video that takes longer is abandoned as bad
    stall_timeout_s: float | None = Field(300.0, gt=0)  # a pipeline that delivers no batch for this long stops the run
    prefetch_batches: int = Field(2, ge=0)  # decoded blocks (of data.clips_per_task clips) a worker holds ready
    synth: dict[str, Any] = {}  # BackgroundBias-Synth generator options (SynthConfig), when root is None

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, v: str) -> str:
        from beray.data.datasets import DATASETS

        return _one_of(v.lower(), ("synth", *DATASETS), "dataset")

    @field_validator("synth")
    @classmethod
    def _synth_options(cls, v: dict[str, Any]) -> dict[str, Any]:
        from beray.data.synth import synth_config

        synth_config(v)  # raises ValueError naming the option
        return v


class AugmentConfig(_Section):
    size: int = Field(112, ge=8)  # paper: 112 or 224
    crop_scale: tuple[float, float] = (0.5, 1.0)
    rotation: float = Field(10.0, ge=0, le=180)  # paper: less than 10 degrees
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = Field(0.8, ge=0, le=1)


class BEConfig(_Section):
    noise: str = "intra_frame"  # Table 4 noise type; intra_frame is Background Erasing
    gamma: float = Field(0.3, ge=0.0, le=1.0)  # Eq. (1): lam ~ U[0, gamma]; paper 0.3
    fg_ratio: float = Field(0.3, gt=0.0, le=1.0)  # FAME only: the moving fraction kept as foreground

    @field_validator("noise")
    @classmethod
    def _known_noise(cls, v: str) -> str:
        from beray.augment.be import NOISES

        return _one_of(v, NOISES, "noise type")


class MethodConfig(_Section):
    name: Literal["moco", "rotnet", "cubic_puzzle", "cop", "finetune"] = "moco"  # finetune: supervised (Sec. 4.1)
    beta: float = Field(1.0, ge=0.0)  # Eq. (5) weight of the BE term (pretext methods); paper 1
    dim: int = Field(128, ge=1)  # D of the MoCo projection; paper 128
    queue_size: int = Field(16384, ge=1)
    momentum: float = Field(0.999, ge=0.0, le=1.0)
    tau: float = Field(0.07, gt=0.0)
    # MoCo's negative terms: "eq7" with N2, another clip of the video (Eq. 7); "eq6" without it (Eq. 6); "reversed"
    # with x_o played backwards as N2 (same frames and augmentation, opposite motion: a positive control).
    # true/false, as configs saved before wrote it: eq7/eq6
    hard_negative: Literal["eq7", "eq6", "reversed"] = "eq7"
    distracted_query: bool = False  # x_d through MoCo's query encoder, x_o the key (the authors' code)
    num_classes: int | None = Field(None, ge=2)  # finetune only: the dataset's classes
    dropout: float = Field(0.5, ge=0.0, lt=1.0)  # finetune only: before the new FC layer

    @field_validator("hard_negative", mode="before")
    @classmethod
    def _hard_negative_of_a_bool(cls, v: Any) -> Any:
        return {True: "eq7", False: "eq6"}[v] if isinstance(v, bool) else v  # configs and checkpoints saved before


class ModelConfig(_Section):
    backbone: str = "i3d"  # the paper's MoCo+BE backbone (Tables 1, 4)
    width: float = Field(1.0, gt=0.0)  # channel multiplier; < 1 for tiny CPU models
    pretrained: str | None = None  # a beray state.pt whose backbone initialises this one (fine-tuning)

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, v: str) -> str:
        from beray.models import BACKBONES

        return _one_of(v, BACKBONES, "backbone")


class OptimConfig(_Section):
    name: Literal["sgd", "adamw"] = "sgd"  # paper: SGD; AdamW moves tiny CPU models in far fewer steps
    epochs: int = Field(50, ge=1)  # paper: 50
    batch_size: int = Field(64, ge=1)  # global, over all workers; paper: 64
    lr: float = Field(0.01, gt=0)  # paper: 0.01, divided by 10 every 10 epochs
    lr_step: int = Field(10, ge=1)
    lr_decay: float = Field(0.1, gt=0, le=1)
    momentum: float = Field(0.9, ge=0, lt=1)  # SGD only; paper 0.9
    weight_decay: float = Field(5e-4, ge=0)  # paper 5e-4
    amp: bool = True  # mixed precision, on GPU workers only


class RunConfig(_Section):
    name: str | None = None  # default: derived from method, noise and time
    storage: str = Field(default_factory=lambda: results_root())  # local folder or URI (s3://, gs://, ...)
    workers: int = Field(1, ge=1)
    gpus_per_worker: float = Field(0.0, ge=0)
    cpus_per_worker: float = Field(1.0, gt=0)  # logical CPUs; what is left feeds the Ray Data pipeline
    # torch's intra-op threads per worker. None: the CPUs the worker holds (cpus_per_worker, at least 1): more
    # threads would contend with the decode tasks for the cores Ray gave them, and with concurrent trials
    torch_threads: int | None = Field(None, ge=1)
    max_failures: int = Field(3, ge=-1)
    seed: int = Field(0, ge=0)  # seeds the weights and every data draw, from (seed, epoch, video)
    log_every: int = Field(10, ge=1)  # steps between TensorBoard scalars
    images_every: int = Field(1, ge=0)  # epochs between x_o / x_d image logs (0: never)
    max_steps_per_epoch: int | None = Field(None, ge=1)  # cap, for quick runs


class Config(_Section):
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    be: BEConfig = BEConfig()
    method: MethodConfig = MethodConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    run: RunConfig = RunConfig()

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> "Config":
        if self.optim.batch_size % self.run.workers:
            raise ValueError(f"optim.batch_size ({self.optim.batch_size}) must be divisible by run.workers "
                             f"({self.run.workers})")
        if self.run.workers > 1 and 0 < self.run.gpus_per_worker < 1:
            raise ValueError(f"run.gpus_per_worker={self.run.gpus_per_worker:g} with run.workers={self.run.workers}: "
                             "Ray may put two DDP workers on one GPU, which NCCL refuses; give each worker a whole "
                             "GPU (run.gpus_per_worker=1), or use one worker")
        if self.method.name == "finetune" and self.method.num_classes is None:
            raise ValueError("method.num_classes is required for method finetune")
        if self.data.dataset != "synth" and self.data.root is None:
            raise ValueError(f"data.root is required for dataset {self.data.dataset}")
        check_paths = (info.context or {}).get("check_paths", True)  # a dry run may name data on another machine
        if check_paths and self.data.root is not None and not Path(self.data.root).expanduser().exists():
            raise ValueError(f"data.root {self.data.root} does not exist")
        return self

    def method_summary(self) -> str:
        """The method as a person names it: ``moco + intra_frame (gamma 0.3)``; fine-tuning uses no noise."""
        if self.method.name == "finetune":
            return f"finetune ({self.method.num_classes} classes, no noise)"
        return f"{self.method.name} + {self.be.noise} (gamma {self.be.gamma})"


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},  # Sec. 4.1 exactly: the defaults above
    # A few minutes on 2 CPU cores: a tiny R3D-18 on 32 px clips of BackgroundBias-Synth, one
    # Train worker on one CPU, the other CPU decoding (two tasks at a time).
    "cpu-tiny": {
        "augment": {"size": 32},
        "method": {"queue_size": 512},
        "model": {"backbone": "r3d_18", "width": 0.125},
        "data": {"num_frames": 8, "stride": 2, "decode_size": 40, "decode_cpus": 0.5},
        "optim": {"epochs": 3, "batch_size": 8, "lr": 0.05, "lr_step": 2, "amp": False},
        "run": {"workers": 1, "cpus_per_worker": 1.0, "log_every": 5},
    },
    # The evidence study on BackgroundBias-Synth: a model that can learn its motion on 2 CPU cores
    # (C3D with AdamW; docs/results.md, "The benchmark, calibrated"). A short run needs MoCo's key
    # encoder to follow quickly (momentum 0.99) and a queue smaller than the training set; dropout
    # before so small a head keeps a supervised model at chance.
    "cpu-synth": {
        "augment": {"size": 32},
        "method": {"queue_size": 128, "momentum": 0.99, "dropout": 0.0},
        "model": {"backbone": "c3d", "width": 0.25},
        "data": {"num_frames": 8, "stride": 2, "decode_size": 40, "decode_cpus": 0.5},
        "optim": {"name": "adamw", "epochs": 30, "batch_size": 16, "lr": 1e-3, "lr_step": 30, "amp": False},
        "run": {"workers": 1, "cpus_per_worker": 1.0, "log_every": 5},
    },
}


class ConfigError(Exception):
    """A config the user wrote is wrong; the message names the field and what is allowed."""


# What a resumed run may change: its length, where the data lies, and what does not touch the
# training math (resources, logging, retries). Everything else is fixed by the checkpoint (the
# optimiser and scheduler state override lr and its schedule) or by the data stream (seed, clips).
# Changing run.workers keeps the global batch but not the exact stream of batches.
RESUMABLE = ("optim.epochs", "data.root", "data.decode_concurrency", "data.decode_cpus", "data.clips_per_task",
             "data.decode_timeout_s", "data.stall_timeout_s",
             "data.prefetch_batches", "run.workers", "run.gpus_per_worker", "run.cpus_per_worker", "run.torch_threads",
             "run.max_failures", "run.log_every", "run.images_every", "run.max_steps_per_epoch")


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def changed_fields(saved: dict, new: dict, ignore: tuple[str, ...] = ()) -> dict[str, tuple[Any, Any]]:
    """Dotted field -> (saved, new) for every leaf of two nested settings trees that differs (a missing one: None)."""
    a, b = _flat(saved), _flat(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k) and k not in ignore}


def resume_changes(saved: Config, new: Config) -> dict[str, tuple[Any, Any]]:
    """field -> (saved, new) for what ``new`` changes in a run's ``saved`` config; ConfigError
    naming every changed field that a resumed run cannot honour (see RESUMABLE)."""
    changed = changed_fields(saved.model_dump(mode="json"), new.model_dump(mode="json"), ("run.storage", "run.name"))
    refused = [k for k in changed if k not in RESUMABLE]
    if refused:
        raise ConfigError("cannot change on resume (the checkpoint's optimiser, scheduler and data stream fix it):\n  "
                          + "\n  ".join(f"{k}: {changed[k][0]!r} -> {changed[k][1]!r}" for k in refused)
                          + f"\nallowed on resume: {', '.join(RESUMABLE)}; or start a new run with this config")
    return changed


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_value(raw: str) -> Any:
    """A ``--set`` value as YAML reads it (numbers, booleans, lists); the text itself if it is not YAML."""
    try:
        return yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        return raw


def _set(tree: dict, dotted: str) -> None:
    """Apply one ``a.b=c`` override; the value is parsed as YAML (numbers, booleans, lists)."""
    if "=" not in dotted:
        raise ConfigError(f"--set {dotted!r}: expected KEY=VALUE, e.g. be.gamma=0.5")
    key, raw = dotted.split("=", 1)
    value = parse_value(raw)
    parts = key.strip().split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {p} is not a section")
    node[parts[-1]] = value


def read_mapping(path: str | Path, what: str, expected: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping; ConfigError saying what is wrong with it."""
    try:
        tree = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping of {expected}")
    return tree


def load_config(path: str | Path | None = None, overrides: list[str] = (), preset: str | None = None,
                base: dict[str, Any] | None = None, check_paths: bool = True, members: list | None = None) -> Config:
    """Preset (or the YAML's ``preset:`` key) <- YAML file <- ``--set`` overrides, validated.

    ``base`` (a saved run's config) replaces the preset. ``check_paths=False`` leaves out the check
    that ``data.root`` exists here. ``members``: a list that receives the file's ``members:`` (a pack's,
    as lists of overrides; without it that key is unknown). Raises ConfigError with one line per
    problem, each naming the field.
    """
    tree = read_mapping(path, "config", "sections (data, be, method, ...)") if path is not None else {}
    if members is not None and "members" in tree:
        members.extend(_member_overrides(tree.pop("members")))
    preset = preset or tree.pop("preset", None)  # --preset wins over the file's
    tree.pop("preset", None)
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"preset: unknown preset {preset!r}; allowed: {', '.join(PRESETS)}")
    tree = _merge(copy.deepcopy(base if base is not None else PRESETS.get(preset or "paper", {})), tree)
    for item in overrides:
        _set(tree, item)
    try:
        return Config.model_validate(tree, context={"check_paths": check_paths})
    except ValidationError as e:
        raise ConfigError(format_errors(e)) from None


def _member_overrides(items: Any) -> list[list[str]]:
    """``members: [{be.noise: none}, {be.noise: intra_frame, be.gamma: 0.5}]`` as lists of overrides."""
    if not isinstance(items, list) or not all(isinstance(m, dict) and m for m in items):
        raise ConfigError("members: expected a list of mappings of settings, e.g. "
                          "[{be.noise: none}, {be.noise: intra_frame, be.gamma: 0.5}]")
    return [[f"{k}={json.dumps(v) if isinstance(v, (list, dict, bool)) or v is None else v}"
             for k, v in _flat(m).items()] for m in items]


def format_errors(e: ValidationError, model: type[BaseModel] | None = None) -> str:
    """One line per problem: the dotted field, what is wrong, what was given or is allowed."""
    lines = []
    for err in e.errors():
        loc = [str(p) for p in err["loc"]]
        field = ".".join(loc)
        if err["type"] == "extra_forbidden":
            allowed = _allowed(loc[:-1], model or Config)
            lines.append(f"{field}: unknown key" + (f"; allowed: {', '.join(allowed)}" if allowed else ""))
            continue
        msg = err["msg"].removeprefix("Value error, ")
        given = err.get("input")
        lines.append((f"{field}: " if field else "") + msg + ("" if isinstance(given, dict) else f" (got {given!r})"))
    return "invalid config:\n  " + "\n  ".join(lines)


def _model_in(t) -> Any:
    """The pydantic model or dict type inside an annotation such as ``X | None``."""
    for a in (t, *get_args(t)):
        if (isinstance(a, type) and issubclass(a, BaseModel)) or get_origin(a) is dict:
            return a
    return None


def _allowed(loc: list[str], model: type[BaseModel]) -> list[str]:
    """The keys allowed at ``loc`` (a path of fields and dict keys) of ``model``; [] when unknown."""
    t: Any = model
    for name in loc:
        t = _model_in(t)
        if t is None:
            return []
        if get_origin(t) is dict:
            t = get_args(t)[1]
        elif name in t.model_fields:
            t = t.model_fields[name].annotation
        else:
            return []
    t = _model_in(t)
    return list(t.model_fields) if t is not None and get_origin(t) is not dict else []


def to_yaml(config: Config) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
