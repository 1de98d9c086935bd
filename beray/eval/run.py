"""``evaluate(mode, checkpoint, options)``: one evaluation, as the CLI and a sweep's trials run it;
``evaluate_together``: several checkpoints (a pack's members), each test clip decoded once for all."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from beray import console
from beray.config import ConfigError
from beray.data.datasets import DatasetError
from beray.data.video import VideoReadError
from beray.eval.report import Report
from beray.train.checkpoint import CheckpointError

MODES = ("knn", "linear", "retrieve", "background", "finetune", "static-bias", "cam")
FROZEN = ("knn", "linear", "retrieve", "background")  # read cached features of a frozen backbone
USER_ERRORS = (ConfigError, DatasetError, CheckpointError, VideoReadError)  # one line, exit 2


@dataclass
class EvalOptions:
    against: str | None = None  # static-bias: the baseline's fine-tuned checkpoint
    dataset: str | None = None  # None: the run's own (BackgroundBias-Synth by default)
    root: str | None = None
    split: int | None = None
    splits: str | None = None  # finetune: "1,2,3"
    overrides: list[str] = field(default_factory=list)  # --set on the run's config
    k: int = 20
    clips: int = 10
    videos: int = 4
    batch_size: int = 32
    actors: int | None = None
    progress: bool = True
    use_cache: bool = True
    actor_cpus: float = 1.0  # per model actor
    actor_gpus: float | None = None  # None: one actor per GPU of the cluster, if any

    def context(self) -> dict:
        return {"batch_size": self.batch_size, "actors": self.actors, "progress": self.progress,
                "use_cache": self.use_cache, "actor_cpus": self.actor_cpus, "actor_gpus": self.actor_gpus}


def evaluate(mode: str, checkpoint: str | Path, opts: EvalOptions = EvalOptions()) -> list[tuple[str, Report, Path]]:
    """The mode's (file stem, Report, directory) triples (finetune --splits: one per split and their mean)."""
    from beray.eval.source import open_checkpoint

    if mode not in MODES:
        raise ConfigError(f"unknown evaluation mode {mode!r}; allowed: {', '.join(MODES)}")
    if min(opts.k, opts.clips, opts.videos, opts.batch_size) < 1:
        raise ConfigError("--k, --clips, --videos and --batch-size must be >= 1")
    source = open_checkpoint(checkpoint)
    if (session := console.current()) is not None:
        session.log_in(source.eval_dir)  # Ray's output beside the results
    if mode == "finetune":
        from beray.eval.finetune import finetune_splits

        return finetune_splits(source, opts)
    ctx = context(source, opts)
    if mode == "static-bias":
        from beray.eval.static_bias import static_bias

        if not opts.against:
            raise ConfigError("static-bias needs --against BASELINE: two fine-tuned checkpoints (e.g. --checkpoint "
                              "the MoCo+BE one --against the MoCo one)")
        other = open_checkpoint(opts.against)
        baseline = context(other, opts)
        report = static_bias(ctx, baseline, opts.clips)
    elif mode in ("knn", "linear"):
        from beray.eval.frozen import frozen_head

        report = frozen_head(ctx, mode, opts.k)
    elif mode == "retrieve":
        from beray.eval.frozen import retrieve

        report = retrieve(ctx)
    elif mode == "background":
        from beray.eval.frozen import background

        report = background(ctx, opts.k)
    else:
        from beray.eval.cam import cam

        report = cam(ctx, opts.videos)
    return [(ctx.stem(mode), report, source.eval_dir)]


def evaluate_together(mode: str, checkpoints: list[str], opts: EvalOptions = EvalOptions()
                      ) -> list[list[tuple[str, Report, Path]]]:
    """``evaluate`` of each checkpoint. For a frozen mode the features every checkpoint needs are first
    extracted in one pass over the test clips (each decoded once, embedded by every model) into each
    checkpoint's own cache, which each evaluation then reads. ``finetune`` of a pack's members fine-tunes them
    as one pack on one labelled stream (``finetune_pack``); the other modes run one after another."""
    from beray.eval.context import features_together
    from beray.eval.frozen import wanted_features
    from beray.eval.source import open_checkpoint

    if mode == "finetune" and len(checkpoints) > 1:
        from beray.eval.finetune import finetune_splits_of

        from beray.eval.source import pack_member

        sources = [open_checkpoint(c) for c in checkpoints]  # a pack's members: RUN/MEMBER/eval, one RUN
        places = [pack_member(s) for s in sources]
        if len({name for _, name in places}) == len(sources) and len({run for run, _ in places}) == 1:
            return finetune_splits_of(sources, opts)
    if mode in FROZEN and len(checkpoints) > 1 and opts.use_cache:
        ctxs = [context(open_checkpoint(c), opts) for c in checkpoints]
        features_together(ctxs, *wanted_features(mode, ctxs[0]))
    return [evaluate(mode, c, opts) for c in checkpoints]


def context(source, opts: EvalOptions):
    """The ``EvalContext`` of a checkpoint's ``Source``: its config with the evaluation's dataset and overrides."""
    from beray.eval.context import EvalContext
    from beray.eval.source import eval_config

    return EvalContext(source, eval_config(source, opts.dataset, opts.root, opts.split, opts.overrides),
                       **opts.context())
