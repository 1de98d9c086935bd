"""One evaluation's inputs: the checkpoint, the config (the run's, with the evaluation's dataset and
overrides), the dataset index, and the cached feature extraction every mode draws on."""

from __future__ import annotations

from dataclasses import dataclass, field

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
        if head not in self._weights:
            self._weights[head] = (classifier_of if head == "logits" else backbone_of)(self.source)[1]
        cache = self.source.eval_dir / "cache"
        specs = [self.spec(sampling, clips) for _, sampling, clips in wanted]
        keys = [cache_key(self.source.tag, self.cfg, subset, head, spec, pool)
                for (subset, _, _), spec in zip(wanted, specs)]
        found = [load_cached(cache, k) if self.use_cache else None for k in keys]
        todo = [i for i, f in enumerate(found) if f is None]
        if todo:
            desc = ", ".join(f"{wanted[i][0]} ({wanted[i][1]})" for i in todo)
            fresh = extract(self.cfg, self._weights[head], head, [(self.records(wanted[i][0]), specs[i]) for i in todo],
                            pool=pool, batch_size=self.batch_size, actors=self.actors, progress=self.progress,
                            actor_cpus=self.actor_cpus, actor_gpus=self.actor_gpus,
                            desc=desc if len(desc) < 60 else f"{len(todo)} subsets")
            for i, f in zip(todo, fresh):
                found[i] = f
                store_cached(cache, keys[i], f)
        return found
