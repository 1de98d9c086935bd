"""``finetune``: action recognition as Sec. 4.1 does it, on the pretraining platform itself.

The backbone's weights are transferred, a new FC layer is trained with the rest (45 epochs,
lr 0.05 divided by 10 every 10 epochs) as a Ray Train job through the same Ray Data pipeline
(x_o and its label, no BE), with checkpoints and TensorBoard as pretraining has. The test score
of a video is the mean softmax of 10 clips uniformly sampled from it; top-1 and top-5.
The fine-tuning run lives in ``EVAL_DIR/finetune-<dataset>-split<N>/``: run again, it resumes
(or, finished, is tested again) rather than starting over.
"""

from __future__ import annotations

import time

from beray.config import Config, ConfigError, load_config
from beray.console import say
from beray.data.datasets import index_dataset
from beray.eval.context import EvalContext
from beray.eval.metrics import clip_average, topk_accuracy
from beray.eval.report import Report
from beray.eval.source import Source, eval_config, open_checkpoint

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
    base["run"].update(storage=str(source.eval_dir), name=f"finetune-{data.dataset}-split{split}")
    return load_config(overrides=list(overrides), base=base)


def finetune(source: Source, split: int, opts) -> Report:
    """Fine-tune ``source`` on ``split`` through Ray Train, then test it with ``opts.clips`` clips per video
    (``opts``: the run's ``EvalOptions``)."""
    from beray.train.launch import fit

    t0 = time.perf_counter()
    cfg = finetune_config(source, opts.dataset, opts.root, split, opts.overrides)
    if opts.progress:
        say(f"fine-tuning {source.describe()} on {cfg.data.dataset} split {split}: {cfg.optim.epochs} epochs, "
            f"lr {cfg.optim.lr}, run {source.eval_dir / cfg.run.name}")
    info = fit(cfg, cfg.run.name, echo=opts.progress)
    if info.checkpoint is None:
        raise ConfigError(f"fine-tuning {cfg.run.name} left no checkpoint")
    tuned = open_checkpoint(info.checkpoint)
    ctx = EvalContext(tuned, cfg, **opts.context())
    results, rows, skipped = {}, [], {}
    subsets = ctx.test_subsets()
    for subset, feats in zip(subsets, ctx.features_of([(s, "uniform", opts.clips) for s in subsets], "logits")):
        skipped.update(feats.skipped)
        logits, labels = feats.per_video()
        acc = topk_accuracy(clip_average(logits), labels)
        results[subset] = {"top1": acc[1], "top5": acc[5], "videos": len(labels)}
        rows.append([subset, acc[1], acc[5], len(labels)])
    last = info.metrics
    data = {"dataset": cfg.data.dataset, "split": split, "checkpoint": str(source.path),
            "model": source.describe(), "finetuned": str(tuned.path), "run_dir": info.dir,
            "epochs": cfg.optim.epochs, "lr": cfg.optim.lr, "clips_per_video": opts.clips,
            "num_classes": cfg.method.num_classes, "chance": 1 / cfg.method.num_classes,
            "train_loss": last.get("loss"), "skipped_videos": skipped, "results": results,
            "elapsed_s": round(time.perf_counter() - t0, 2)}
    return Report("finetune", f"fine-tuned action recognition, {cfg.data.dataset} split {split}",
                  ["test subset", "top-1", "top-5", "videos"], rows, data,
                  [f"{cfg.optim.epochs} epochs from {source.describe()}; a video's score is the mean softmax of "
                   f"{opts.clips} uniformly spaced clips; TensorBoard: {info.dir}/tensorboard"])


def finetune_splits(source: Source, opts) -> list[tuple[str, Report, object]]:
    """``finetune`` on ``--split`` or each of ``--splits``; with several, their mean as Table 1 reports it."""
    try:
        splits = [int(s) for s in opts.splits.split(",")] if opts.splits else [opts.split or 1]
    except ValueError:
        raise ConfigError(f"--splits {opts.splits!r}: expected comma-separated numbers, e.g. 1,2,3") from None
    dataset = opts.dataset or source.config.data.dataset
    out = [(f"finetune-{dataset}-split{s}", finetune(source, s, opts), source.eval_dir) for s in splits]
    if len(splits) > 1:
        reports = [r for _, r, _ in out]
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
