"""One evaluation's inputs: the checkpoint, the config (the run's, with the evaluation's dataset and
overrides), the dataset index, and the cached feature extraction every mode draws on."""

from __future__ import annotations

from dataclasses import dataclass, field

from beray import storage
from beray.config import Config
from beray.data.datasets import DatasetError, DatasetIndex, index_dataset
from beray.data.views import record_row
from beray.eval.clips import ClipSpec
from beray.eval.extract import RETRIEVAL_POOL, Features, cache_key, extract, load_cached, store_cached
from beray.eval.fields import test_subsets
from beray.eval.source import Source, backbone_of, classifier_of


@dataclass
class EvalContext:
    source: Source
    cfg: Config
    index: DatasetIndex = field(init=False)
    batch_size: int = 32  # clips per model call
    actors: int | None = None  # model actors (None: one per GPU, or per two CPUs)
    progress: bool = True
    use_cache: bool = True
    actor_cpus: float = 1.0  # per model actor
    actor_gpus: float | None = None  # None: one actor per GPU of the cluster, if any

    def __post_init__(self):
        d = self.cfg.data
        self.index = index_dataset(d.dataset, d.root, d.split, d.synth)
        self._weights: dict[str, dict] = {}

    @property
    def num_classes(self) -> int:
        return self.index.num_classes

    def stem(self, mode: str) -> str:
        return f"{mode}-{self.cfg.data.dataset}-split{self.cfg.data.split}"

    def test_subsets(self) -> list[str]:
        """``test``, or where a dataset has several test subsets (BackgroundBias-Synth), each of them."""
        names = test_subsets(self.index.subsets)
        if not names:
            raise DatasetError(f"{self.index.name} has no test subset (it has {', '.join(self.index.subsets)})")
        return names

    def records(self, subset: str) -> list[dict]:
        if subset not in self.index.subsets:
            raise DatasetError(f"{self.index.name} has no subset {subset!r}; it has {', '.join(self.index.subsets)}")
        rows = [record_row(r) for r in self.index.subsets[subset]]
        if not rows:
            raise DatasetError(f"{self.index.name}/{subset} is empty")
        return rows

    def spec(self, sampling: str, clips: int = 1) -> ClipSpec:
        d = self.cfg.data
        return ClipSpec(d.num_frames, d.stride, self.cfg.augment.size, sampling, clips, self.cfg.run.seed)

    def features(self, subset: str, head: str = "pooled", sampling: str = "centre", clips: int = 1,
                 pool: tuple[int, int, int] = RETRIEVAL_POOL) -> Features:
        """``head`` outputs for every clip of ``subset``, from the cache when this checkpoint, data and
        clip settings were extracted before."""
        return self.features_of([(subset, sampling, clips)], head, pool)[0]

    def features_of(self, wanted: list[tuple[str, str, int]], head: str = "pooled",
                    pool: tuple[int, int, int] = RETRIEVAL_POOL) -> list[Features]:
        """``features`` of each (subset, sampling, clips); what the cache lacks is extracted in one pass."""
        return features_together([self], wanted, head, pool)[0]

    def weights(self, head: str) -> dict:
        if head not in self._weights:
            self._weights[head] = (classifier_of if head == "logits" else backbone_of)(self.source)[1]
        return self._weights[head]


def features_together(ctxs: list[EvalContext], wanted: list[tuple[str, str, int]], head: str = "pooled",
                      pool: tuple[int, int, int] = RETRIEVAL_POOL) -> list[list[Features]]:
    """``EvalContext.features_of`` for several checkpoints evaluated on the same data and clips (a pack's
    members): what their caches lack is extracted in one pass, each clip decoded once and embedded by every
    checkpoint's model that needs it. One list of Features per context, cached per checkpoint as alone."""
    first = ctxs[0]
    specs = [first.spec(sampling, clips) for _, sampling, clips in wanted]
    found, keys = [], []
    for ctx in ctxs:
        keys.append([cache_key(ctx.source.tag, ctx.cfg, subset, head, spec, pool)
                     for (subset, _, _), spec in zip(wanted, specs)])
        found.append([load_cached(storage.join(ctx.source.eval_dir, "cache"), k) if ctx.use_cache else None for k in keys[-1]])
    todo = [i for i in range(len(wanted)) if any(f[i] is None for f in found)]
    models = [c for c, f in enumerate(found) if any(f[i] is None for i in todo)]
    if todo:
        desc = ", ".join(f"{wanted[i][0]} ({wanted[i][1]})" for i in todo)
        fresh = extract([(ctxs[c].cfg, ctxs[c].weights(head)) for c in models], head,
                        [(first.records(wanted[i][0]), specs[i]) for i in todo], pool=pool,
                        batch_size=first.batch_size, actors=first.actors, progress=first.progress,
                        actor_cpus=first.actor_cpus, actor_gpus=first.actor_gpus,
                        desc=desc if len(desc) < 60 else f"{len(todo)} subsets")
        for c, per_job in zip(models, fresh):
            for i, f in zip(todo, per_job):
                if found[c][i] is None:
                    found[c][i] = f
                    store_cached(storage.join(ctxs[c].source.eval_dir, "cache"), keys[c][i], f)
    return found
