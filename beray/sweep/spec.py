"""A sweep file: a base run config, a search space over any of its fields, how to search it, how to
schedule and resource the trials, the evaluation that scores each, and published numbers to show
beside the results. Validated as a whole, and every trial's run config with it, before Ray starts.

    name: gamma
    base: {preset: paper, set: {data.dataset: ucf101, data.root: /data/ucf101}}
    space: {be.gamma: {grid: [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]}}
    search: {algorithm: grid}                 # grid | random | optuna (samples: N)
    scheduler: {name: fifo}                   # or asha on an intermediate metric
    seeds: 3
    resources: {workers: 1, gpus_per_worker: 1}
    eval: {mode: knn}
    objective: {metric: test.top1, mode: max}
"""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from beray.config import PRESETS, Config, ConfigError, _set, format_errors, load_config, parse_value, read_mapping, results_root

KINDS = ("grid", "choice", "uniform", "loguniform", "randint")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Base(_Section):
    preset: str | None = None  # default: paper (cpu-tiny where the sweep says so)
    config: str | None = None  # a run YAML, relative to the sweep file
    set: dict[str, Any] = {}  # dotted run-config field -> value

    @field_validator("preset")
    @classmethod
    def _known(cls, v):
        if v is not None and v not in PRESETS:
            raise ValueError(f"unknown preset {v!r}; allowed: {', '.join(PRESETS)}")
        return v


class Dimension(_Section):
    """Exactly one of: grid (every value), choice (one of them), uniform / loguniform [low, high],
    randint [low, high) integers."""

    grid: list[Any] | None = None
    choice: list[Any] | None = None
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None

    @model_validator(mode="after")
    def _one(self):
        given = [k for k in KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(KINDS)} (got {', '.join(given) or 'none'})")
        values = getattr(self, given[0])
        if given[0] in ("grid", "choice") and not values:
            raise ValueError(f"{given[0]} needs at least one value")
        if given[0] in ("uniform", "loguniform", "randint") and not values[0] < values[1]:
            raise ValueError(f"{given[0]} needs low < high, got {list(values)}")
        if given[0] == "loguniform" and values[0] <= 0:
            raise ValueError(f"loguniform needs low > 0, got {values[0]}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if getattr(self, k) is not None)

    @property
    def values(self):
        return getattr(self, self.kind)

    def corners(self) -> list:
        """Values that every trial's config must accept: each listed one, or both ends of a range."""
        if self.kind in ("grid", "choice"):
            return list(self.values)
        low, high = self.values
        return [low, high - 1] if self.kind == "randint" else [low, high]

    def sample(self, rng: np.random.Generator):
        if self.kind in ("grid", "choice"):
            return self.values[int(rng.integers(len(self.values)))]
        low, high = self.values
        if self.kind == "uniform":
            return float(rng.uniform(low, high))
        if self.kind == "loguniform":
            return float(np.exp(rng.uniform(np.log(low), np.log(high))))
        return int(rng.integers(low, high))


class Search(_Section):
    algorithm: Literal["grid", "random", "optuna"] = "grid"
    samples: int = Field(1, ge=1)  # random / optuna: points to try (times the seeds)
    seed: int = 0  # of the random sampler and of Optuna's TPE


class Scheduler(_Section):
    name: Literal["fifo", "asha"] = "fifo"
    metric: str = "loss"  # ASHA: an intermediate metric every trial reports each epoch
    mode: Literal["min", "max"] = "min"
    grace_period: int = Field(1, ge=1)  # epochs before a trial may be stopped
    reduction_factor: float = Field(2.0, gt=1)


class Resources(_Section):
    workers: int = Field(1, ge=1)  # Ray Train workers per trial
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    max_concurrent: int | None = Field(None, ge=1)  # None: as many as the cluster holds now
    decode_tasks: int = Field(1, ge=1)  # decode tasks of its own that the concurrency bound leaves each trial room for


class Eval(_Section):
    mode: Literal["knn", "linear", "retrieve", "background", "finetune"] = "knn"
    dataset: str | None = None  # None: the trial's own dataset
    root: str | None = None
    split: int | None = None
    k: int = Field(20, ge=1)
    clips: int = Field(10, ge=1)
    set: dict[str, Any] = {}  # overrides for the evaluation (e.g. finetune's optim.epochs)


class Objective(_Section):
    metric: str = "test.top1"  # a field of the evaluation's results, dotted (e.g. knn.gap for background)
    mode: Literal["min", "max"] = "max"
    also: list[str] = []  # more result fields shown in the report


class Reference(_Section):
    title: str  # where the numbers come from, e.g. "Table 4, UCF101 fine-tune top-1 (paper)"
    param: str  # the swept field they are indexed by
    values: dict[str, float]


class Sweep(_Section):
    name: str
    base: Base = Base()
    space: dict[str, Dimension]
    search: Search = Search()
    scheduler: Scheduler = Scheduler()
    seeds: int | list[int] = 1  # a count (seeds 0..n-1) or the list
    resources: Resources = Resources()
    eval: Eval = Eval()
    objective: Objective = Objective()
    retries: int = Field(1, ge=0)  # a failed trial is run again this many times, then reported failed
    storage: str = Field(default_factory=lambda: f"{results_root()}/sweeps")
    reference: Reference | None = None
    # The point the others are compared with, seed by seed: fields of the space and their values (a field
    # left out keeps each point's own value). Default for grid search: every field's first grid value.
    baseline: dict[str, Any] | None = None
    synthetic: bool = False  # run the same space on BackgroundBias-Synth at cpu-tiny scale (see SYNTHETIC)
    # Trials that read the same stream (the same seed and every setting the pipeline reads) train as the
    # members of one pack, at most pack_size to a pack. Default: on, except with ASHA (it stops single
    # trials) and Optuna (it chooses each point after the last results); ``packed`` says which applies.
    pack: bool | None = None
    pack_size: int = Field(4, ge=1)
    source: str | None = None  # the file it was read from (set by load_sweep)

    @field_validator("name")
    @classmethod
    def _plain(cls, v):
        if not v or any(c in v for c in "/\\ "):
            raise ValueError(f"a sweep name is one word without slashes or spaces, got {v!r}")
        return v

    @field_validator("space")
    @classmethod
    def _fields(cls, v):
        if not v:
            raise ValueError("the space needs at least one field")
        return v

    @model_validator(mode="after")
    def _consistent(self):
        if self.search.algorithm == "grid":
            ranged = [k for k, d in self.space.items() if d.kind not in ("grid", "choice")]
            if ranged:
                raise ValueError(f"space.{ranged[0]}: {self.space[ranged[0]].kind} needs search.algorithm random or "
                                 "optuna (grid search takes grid and choice)")
        if self.pack and self.scheduler.name == "asha":
            raise ValueError("pack: true with scheduler asha: ASHA stops single trials at its rungs, and a pack "
                             "trains its points as one job; leave pack out (ASHA sweeps run unpacked) or use "
                             "scheduler fifo")
        if self.pack and self.search.algorithm == "optuna":
            raise ValueError("pack: true with search.algorithm optuna: Optuna chooses each point after the last "
                             "results, so no set of points is known to pack; leave pack out")
        if self.baseline is not None:
            if self.search.algorithm == "optuna":
                raise ValueError("baseline: an Optuna search chooses its own points, so none is there to compare "
                                 "with; leave baseline out")
            drawn = [k for k, d in self.space.items() if d.kind != "grid"]
            if self.search.algorithm == "random" and drawn:
                raise ValueError(f"baseline: a random search draws {', '.join(drawn)} anew for every point, so no "
                                 "point has a baseline with its draws to compare with; make them grids, or leave "
                                 "baseline out")
            for key, value in self.baseline.items():
                if key not in self.space:
                    raise ValueError(f"baseline.{key} is not a field of the space ({', '.join(self.space)})")
                dim = self.space[key]
                if dim.kind in ("grid", "choice") and value not in dim.values:
                    raise ValueError(f"baseline.{key} = {value!r} is not one of its values {dim.values}")
        if self.reference is not None and self.reference.param not in self.space:
            raise ValueError(f"reference.param {self.reference.param!r} is not a field of the space "
                             f"({', '.join(self.space)})")
        return self

    @property
    def packed(self) -> bool:
        """Whether trials that share a stream train as packs: ``pack``, or by default unless ASHA or Optuna."""
        if self.pack is not None:
            return self.pack
        return self.scheduler.name == "fifo" and self.search.algorithm != "optuna"

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)

    def baseline_of(self, point: dict[str, Any]) -> dict[str, Any] | None:
        """The point ``point`` is compared with: ``point`` with the baseline's values; None when the sweep
        compares nothing (Optuna, or random search without ``baseline``)."""
        base = self.baseline
        if base is None and self.search.algorithm == "grid":
            base = {k: d.values[0] for k, d in self.space.items()}
        return None if base is None else {**point, **base}

    # -- the run configs of the trials ------------------------------------------------------

    def points(self) -> list[dict[str, Any]]:
        """The points grid and random search run (every one with every seed); Optuna's are chosen as it goes."""
        grid_keys = [k for k, d in self.space.items() if d.kind in ("grid", "choice")
                     and (self.search.algorithm == "grid" or d.kind == "grid")]
        grid = [dict(zip(grid_keys, combo)) for combo in itertools.product(*(self.space[k].values for k in grid_keys))]
        rest = [k for k in self.space if k not in grid_keys]
        if not rest:
            return grid
        rng = np.random.default_rng(self.search.seed)
        return [{**g, **{k: self.space[k].sample(rng) for k in rest}} for _ in range(self.search.samples)
                for g in grid]

    def run_config(self, point: dict[str, Any], seed: int, storage: str | None = None, name: str | None = None,
                   check_paths: bool = True) -> Config:
        """The run config of one trial: base <- point <- seed, resources and where it lives."""
        overrides = [*_sets(self.base.set), *_sets(point), f"run.seed={seed}",
                     f"run.workers={self.resources.workers}", f"run.cpus_per_worker={self.resources.cpus_per_worker}",
                     f"run.gpus_per_worker={self.resources.gpus_per_worker}"]
        if storage is not None:
            overrides += _sets({"run.storage": storage, "run.name": name})  # quoted: YAML reads 73008_00001 as a number
        config = None
        if self.base.config is not None:
            config = Path(self.base.config)
            if self.source and not config.is_absolute():
                config = Path(self.source).parent / config
        return load_config(config, overrides, preset=self.base.preset, check_paths=check_paths)

    def validate_trials(self, check_paths: bool = True) -> list[tuple[dict, int, Config]]:
        """Every trial's (point, seed, run config) for grid and random search; for Optuna, every listed value
        and both ends of every range. ConfigError naming the space field that makes an invalid run."""
        try:
            base = self.run_config({}, 0, check_paths=check_paths)
        except ConfigError as e:
            raise ConfigError(f"base: {e}") from None
        self.check_objective(base)
        if self.search.algorithm == "optuna":
            for key, dim in self.space.items():
                for value in dim.corners():
                    _check(self, {key: value}, check_paths)
            return []
        return [(p, s, _check(self, p, check_paths)) for p in self.points() for s in self.seed_list]

    def packs(self, trials: list[tuple[dict, int, Config]]) -> list[list[tuple[dict, int, Config]]]:
        """``trials`` grouped into packs: those that share every setting the pipeline reads (the seed among
        them), in trial order, split into packs of at most ``pack_size``; one trial each without ``pack``."""
        from beray.train.pack import shared_settings

        if not self.packed:
            return [[t] for t in trials]
        groups: dict[str, list] = {}
        for point, seed, cfg in trials:  # cfg: the point's run config (its run.seed is not the trial's)
            groups.setdefault(repr((seed, sorted(shared_settings(cfg).items()))), []).append((point, seed, cfg))
        return [g[i:i + self.pack_size] for g in groups.values() for i in range(0, len(g), self.pack_size)]

    def check_objective(self, base: Config) -> None:
        """ConfigError unless the objective and every ``also:`` metric is a field the evaluation reports
        on its dataset (``base``: the run config of the sweep's base, whose dataset it evaluates by default)."""
        from beray.data.datasets import subset_names
        from beray.eval.fields import BACKGROUND_SUBSETS, result_fields, unknown_field

        e = self.eval
        dataset, root = (e.dataset, e.root) if e.dataset else (base.data.dataset, e.root or base.data.root)
        subsets = subset_names(dataset, root)
        where = f"{e.mode} on {dataset}"
        if e.mode == "background" and subsets is not None and not set(BACKGROUND_SUBSETS) <= set(subsets):
            raise ConfigError(f"eval.mode: background needs BackgroundBias-Synth's subsets "
                              f"({', '.join(BACKGROUND_SUBSETS)}); {dataset} has {', '.join(subsets)}")
        fields = result_fields(e.mode, subsets)
        for key, metric in [("objective.metric", self.objective.metric),
                            *((f"objective.also[{i}]", m) for i, m in enumerate(self.objective.also))]:
            if unknown_field(metric, fields):
                raise ConfigError(f"{key}: {metric!r} is not a result of {where}; it reports: {', '.join(fields)}")

    def dump(self) -> dict:
        return self.model_dump(mode="json")


def _sets(values: dict[str, Any]) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in values.items()]


def _check(sweep: Sweep, point: dict, check_paths: bool) -> Config:
    try:
        return sweep.run_config(point, 0, check_paths=check_paths)
    except ConfigError as e:
        where = ", ".join(f"space.{k} = {v!r}" for k, v in point.items())
        raise ConfigError(f"{where} makes an invalid run: {str(e).removeprefix('invalid config:').strip()}") from None


# ``synthetic: true`` keeps a sweep's space, search, seeds and its method settings (method.*, be.*),
# and swaps in the cpu-tiny preset on BackgroundBias-Synth, two trials at a time on 2 cores, a kNN
# objective on the background-swapped videos, and results under NAME-synthetic.
SYNTHETIC = {"eval": {"mode": "knn"}, "resources": {"workers": 1, "cpus_per_worker": 0.5},
             "objective": {"metric": "test_swapped.top1", "mode": "max", "also": ["test_biased.top1"]},
             "reference": None}
KEPT_ON_SYNTHETIC = ("method.", "be.")


def _synthetic(tree: dict) -> dict:
    base = tree.get("base") or {}
    kept = {k: v for k, v in (base.get("set") or {}).items() if k.startswith(KEPT_ON_SYNTHETIC)}
    out = {**tree, **copy.deepcopy(SYNTHETIC), "base": {"preset": "cpu-tiny", "set": kept}}
    out["name"] = f"{tree.get('name', 'sweep')}-synthetic"
    if (tree.get("scheduler") or {}).get("name") == "asha":  # ASHA over the short schedule: from the first epoch
        out["scheduler"] = {**tree["scheduler"], "grace_period": 1}
    return out


def load_sweep(path: str | Path, overrides: list[str] = ()) -> Sweep:
    """Read and validate a sweep file; ``overrides`` are ``a.b=c`` on the sweep file's own fields
    (``base.set.data.dataset=synth`` reaches the run config). ConfigError naming the field."""
    tree = read_mapping(path, "sweep file", "fields (name, base, space, search, ...)")
    for item in overrides:
        _override(tree, item)
    if tree.get("synthetic") is True:  # then the overrides again: they win over the synthetic defaults
        tree = _synthetic(tree)
        for item in overrides:
            if not item.startswith("synthetic="):
                _override(tree, item)
    tree["source"] = str(path)
    try:
        return Sweep.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(f"{path}: " + format_errors(e, Sweep).replace("invalid config", "invalid sweep file")) from None


def _override(tree: dict, item: str) -> None:
    """``base.set.X.Y=v`` (and ``eval.set.``) sets run-config field X.Y, a dotted key of that mapping;
    ``space.FIELD.KIND=v`` a dimension; any other key nests as in a run config's ``--set``."""
    key, _, raw = item.partition("=")
    for prefix in ("base.set.", "eval.set.", "space."):  # their keys are dotted run-config fields
        if key.startswith(prefix) and "=" in item:
            value = parse_value(raw)
            section, sub = prefix.rstrip(".").partition(".")[::2]
            node = tree.setdefault(section, {})
            node = node.setdefault(sub, {}) if sub else node
            field, _, kind = key[len(prefix):].rpartition(".")
            if prefix == "space." and kind in KINDS:
                node[field] = {kind: value}
            else:
                node[key[len(prefix):]] = value
            return
    _set(tree, item)
