"""``finetune``: action recognition as Sec. 4.1 does it, on the pretraining platform itself.

The backbone's weights are transferred, a new FC layer is trained with the rest (45 epochs,
lr 0.05 divided by 10 every 10 epochs) as a Ray Train job through the same Ray Data pipeline
(x_o and its label, no BE), with checkpoints and TensorBoard as pretraining has. The test score
of a video is the mean softmax of 10 clips uniformly sampled from it; top-1 and top-5.
The fine-tuning run lives in ``EVAL_DIR/finetune-<dataset>-split<N>/`` (a pack's members fine-tune as one
job in ``RUN/eval/finetune-<dataset>-split<N>/MEMBER``): run again, it resumes (or, finished, is tested
again) rather than starting over.
"""

from __future__ import annotations

import json
import time

from beray import storage
from beray.config import Config, ConfigError, _flat, load_config
from beray.console import say
from beray.data.datasets import index_dataset
from beray.eval.context import EvalContext
from beray.eval.metrics import clip_average, topk_accuracy
from beray.eval.report import Report
from beray.eval.source import Source, eval_config, open_checkpoint, pack_member

PAPER = {"epochs": 45, "lr": 0.05, "lr_step": 10, "lr_decay": 0.1}  # Sec. 4.1, "Supervised Fine-tuning Settings"


def finetune_config(source: Source, dataset: str | None, root: str | None, split: int, overrides: list[str]) -> Config:
    """The fine-tuning run's config: the pretraining run's data, augmentation and resources, the paper's
    fine-tuning schedule, the classes of the dataset; ``overrides`` last (they reach every setting)."""
    data = eval_config(source, dataset, root, split).data  # the dataset, validated
    index = index_dataset(data.dataset, data.root, data.split, data.synth)
    base = source.config.model_dump(mode="json")
    base["data"].update(dataset=data.dataset, root=data.root, split=split, subset="train")
    base["method"].update(name="finetune", num_classes=max(index.num_classes, 2))
    base["model"]["pretrained"] = str(source.path)
    base["optim"].update(PAPER)
    base["run"].update(storage=source.eval_dir, name=f"finetune-{data.dataset}-split{split}")
    return load_config(overrides=list(overrides), base=base)


def finetune_pack(sources: list[Source], split: int, opts) -> list[Report]:
    """Fine-tune each of ``sources`` on ``split`` through Ray Train, then test it with ``opts.clips`` clips per
    video (``opts``: the run's ``EvalOptions``). Several (a pack's members, their eval folders
    ``RUN/MEMBER/eval``) are fine-tuned as the members of one Ray Train job on one labelled stream, in
    ``RUN/eval/``, and tested in one pass over the test clips; each member's numbers are those it would
    have alone. A model (alone or a member) whose loss went non-finite gets a report that says why (``data['failed']``), no
    results; the others are tested."""
    from beray.eval.context import features_together
    from beray.train.launch import fit, run_dir

    t0 = time.perf_counter()
    cfgs = [finetune_config(s, opts.dataset, opts.root, split, opts.overrides) for s in sources]
    cfg, names, members = cfgs[0], [], []
    if len(sources) > 1:
        names = [pack_member(s)[1] for s in sources]
        job = cfg.run.model_copy(update={"storage": storage.join(pack_member(sources[0])[0], "eval")})  # RUN/eval
        cfg = cfg.model_copy(update={"run": job})
        first = _flat(cfgs[0].model_dump(mode="json"))
        members = [[f"{k}={json.dumps(v)}" for k, v in _flat(c.model_dump(mode="json")).items()
                    if first[k] != v and k not in ("run.storage", "run.name")] for c in cfgs]  # each one's own
    if opts.progress:
        what = sources[0].describe() if len(sources) == 1 else f"{len(sources)} checkpoints as one pack"
        say(f"fine-tuning {what} on {cfg.data.dataset} split {split}: {cfg.optim.epochs} epochs, "
            f"lr {cfg.optim.lr}, run {cfg.run.storage}/{cfg.run.name}")
    try:
        info = fit(cfg, cfg.run.name, echo=opts.progress, members=members, names=names or None)
    except FloatingPointError as e:  # a run of one whose loss went non-finite (a pack's members fail alone)
        return [_failed(sources[0], cfg, str(e), run_dir(cfg, cfg.run.name))]
    if info.checkpoint is None:
        raise ConfigError(f"fine-tuning {cfg.run.name} left no checkpoint")
    failed = info.metrics.get("failed", {})  # a member whose loss went non-finite has no model to test; the rest do
    folders = names or [""]  # each one's folder in the job's checkpoints ("": a run of one)
    live = [i for i, n in enumerate(folders) if n not in failed]
    tuned = {i: open_checkpoint(storage.join(info.checkpoint, folders[i]) if names else info.checkpoint) for i in live}
    ctxs = [EvalContext(tuned[i], cfgs[i], **opts.context()) for i in live]
    subsets = ctxs[0].test_subsets() if ctxs else []
    features = dict(zip(live, features_together(ctxs, [(s, "uniform", opts.clips) for s in subsets], "logits")
                        if ctxs else []))
    elapsed = round(time.perf_counter() - t0, 2)
    reports = []
    for i, (source, c) in enumerate(zip(sources, cfgs)):
        last = info.metrics["members"].get(names[i], {}) if names else info.metrics
        where = storage.join(info.dir, names[i]) if names else info.dir
        reports.append(_tested(source, c, tuned[i], features[i], subsets, last, where, opts.clips, elapsed)
                       if i in features else _failed(source, c, failed[folders[i]], where))
    return reports


def _failed(source: Source, cfg: Config, why: str, run_dir: str) -> Report:
    """The report of a pack's member whose fine-tuning stopped (its loss went non-finite): no results."""
    data = {"dataset": cfg.data.dataset, "split": cfg.data.split, "checkpoint": str(source.path),
            "model": source.describe(), "run_dir": run_dir, "failed": why, "results": {}}
    return Report("finetune", f"fine-tuned action recognition, {cfg.data.dataset} split {cfg.data.split}: failed",
                  ["failed"], [[why]], data, [f"fine-tuning stopped; TensorBoard: {run_dir}/tensorboard"])


def _tested(source: Source, cfg: Config, tuned: Source, feats: list, subsets: list[str], last: dict, run_dir: str,
            clips: int, elapsed: float) -> Report:
    """The report of a fine-tuned model from its ``logits`` features of each test subset."""
    results, rows, skipped = {}, [], {}
    for subset, f in zip(subsets, feats):
        skipped.update(f.skipped)
        logits, labels = f.per_video()
        acc = topk_accuracy(clip_average(logits), labels)
        results[subset] = {"top1": acc[1], "top5": acc[5], "videos": len(labels)}
        rows.append([subset, acc[1], acc[5], len(labels)])
    data = {"dataset": cfg.data.dataset, "split": cfg.data.split, "checkpoint": str(source.path),
            "model": source.describe(), "finetuned": str(tuned.path), "run_dir": run_dir,
            "epochs": cfg.optim.epochs, "lr": cfg.optim.lr, "clips_per_video": clips,
            "num_classes": cfg.method.num_classes, "chance": 1 / cfg.method.num_classes,
            "train_loss": last.get("loss"), "skipped_videos": skipped, "results": results, "elapsed_s": elapsed}
    return Report("finetune", f"fine-tuned action recognition, {cfg.data.dataset} split {cfg.data.split}",
                  ["test subset", "top-1", "top-5", "videos"], rows, data,
                  [f"{cfg.optim.epochs} epochs from {source.describe()}; a video's score is the mean softmax of "
                   f"{clips} uniformly spaced clips; TensorBoard: {run_dir}/tensorboard"])


def finetune_splits(source: Source, opts) -> list[tuple[str, Report, object]]:
    """``finetune`` on ``--split`` or each of ``--splits``; with several, their mean as Table 1 reports it."""
    return finetune_splits_of([source], opts)[0]


def finetune_splits_of(sources: list[Source], opts) -> list[list[tuple[str, Report, object]]]:
    """``finetune_splits`` of each of ``sources``, fine-tuned together (``finetune_pack``) split by split."""
    try:
        splits = [int(s) for s in opts.splits.split(",")] if opts.splits else [opts.split or 1]
    except ValueError:
        raise ConfigError(f"--splits {opts.splits!r}: expected comma-separated numbers, e.g. 1,2,3") from None
    per_split = [finetune_pack(sources, s, opts) for s in splits]
    return [_with_mean(source, opts.dataset or source.config.data.dataset, splits, [r[i] for r in per_split])
            for i, source in enumerate(sources)]


def _with_mean(source: Source, dataset: str, splits: list[int], reports: list[Report]) -> list[tuple[str, Report, object]]:
    out = [(f"finetune-{dataset}-split{s}", r, source.eval_dir) for s, r in zip(splits, reports)]
    if len(splits) > 1 and not any(r.data.get("failed") for r in reports):  # no mean over a failed split
        subsets = list(reports[0].data["results"])
        mean = {sub: {m: sum(r.data["results"][sub][m] for r in reports) / len(reports) for m in ("top1", "top5")}
                for sub in subsets}
        rows = [[sub, mean[sub]["top1"], mean[sub]["top5"], len(splits)] for sub in subsets]
        data = {"dataset": dataset, "splits": splits, "checkpoint": str(source.path), "results": mean,
                "per_split": {s: r.data["results"] for s, r in zip(splits, reports)}}
        name = "+".join(map(str, splits))
        out.append((f"finetune-{dataset}-split{name}", Report(
            "finetune", f"fine-tuned action recognition, {dataset}, mean of splits {', '.join(map(str, splits))}",
            ["test subset", "top-1", "top-5", "splits"], rows, data), source.eval_dir))
    return out
