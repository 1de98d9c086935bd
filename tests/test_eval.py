"""``python -m beray.eval``: every mode on a checkpoint of a real cpu-tiny run, on real Ray; test-time
clips read back from real videos; a stranger's file and a wrong model refused in one line."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from beray.config import load_config
from beray.data.sampling import clip_span
from beray.data.synth import FAMILIES
from beray.data.video import VideoReader
from beray.eval.__main__ import main
from beray.eval.clips import ClipSpec, clip_starts, eval_clips
from beray.train.checkpoint import STATE_FILE


# -- test-time clips ------------------------------------------------------------------------------

def test_clip_samplings_cover_the_video_as_the_protocols_say():
    centre, = clip_starts(100, ClipSpec(8, 4, 32, "centre"))
    assert centre == (100 - clip_span(8, 4)) // 2
    uniform = clip_starts(100, ClipSpec(8, 4, 32, "uniform", clips=10))
    assert len(uniform) == 10 and uniform[0] == 0 and uniform[-1] == 100 - clip_span(8, 4)
    cut = clip_starts(100, ClipSpec(16, 1, 32, "cut"))  # consecutive 16-frame clips, Sec. 4.3
    assert cut.tolist() == [0, 16, 32, 48, 64, 80]  # 80 + 16 <= 100
    assert clip_starts(10, ClipSpec(16, 1, 32, "cut")).tolist() == [0]  # a short video still gives one (looped)


def test_test_clips_are_centre_crops_of_the_right_frames(videos):
    path = str(videos["avi"])
    record = {"path": path, "label": 0, "start_frame": -1, "end_frame": -1}
    spec = ClipSpec(4, 8, 32, "uniform", clips=3)
    clips = eval_clips(record, spec, index=0)
    assert clips.shape == (3, 4, 3, 32, 32) and clips.dtype == np.uint8
    with VideoReader(path) as r:
        want = r.frames([0 + 8 * j for j in range(4)], 32)  # first uniform clip, short side 32: 32 x 43
    left = (want.shape[2] - 32) // 2
    assert np.array_equal(clips[0].transpose(0, 2, 3, 1), want[:, :, left:left + 32])
    static = eval_clips(record, ClipSpec(4, 8, 32, "static", seed=3), index=5)
    assert static.shape == (1, 4, 3, 32, 32)
    assert all(np.array_equal(static[0, 0], f) for f in static[0])  # one frame, repeated
    assert np.array_equal(static, eval_clips(record, ClipSpec(4, 8, 32, "static", seed=3), index=5))
    picks = {eval_clips(record, ClipSpec(4, 8, 32, "static", seed=3), index=i)[0, 0].tobytes() for i in range(6)}
    assert len(picks) > 1  # the frame is drawn per video


# -- the CLI on a real cpu-tiny checkpoint ----------------------------------------------------------

@pytest.fixture(scope="module")
def pretrained(ray_cluster, tiny_synth, tmp_path_factory) -> Path:
    """One epoch of the cpu-tiny preset (MoCo + BE) on the tiny BackgroundBias-Synth: its run directory."""
    from beray.train.launch import fit

    storage = tmp_path_factory.mktemp("eval-runs")
    cfg = load_config(preset="cpu-tiny", overrides=[f"data.root={tiny_synth}", "optim.epochs=1", "optim.batch_size=4",
                                                     f"run.storage={storage}", "run.name=pre", "run.images_every=0"])
    fit(cfg, "pre")
    return storage / "pre"


def _last_checkpoint(run_dir: Path) -> Path:
    return sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())[-1]


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([*map(str, argv), "--quiet"])
    out = capsys.readouterr()
    return code, out.out, out.err


def _json(run_dir: Path, stem: str) -> dict:
    return json.loads((run_dir / "eval" / f"{stem}.json").read_text())


def _fields_as_declared(res: dict, mode: str, dataset: str, root: Path) -> bool:
    """The results' dotted fields are what ``eval.fields`` says the mode reports: a sweep's objective
    is refused or accepted by that list before any trial trains."""
    from beray.data.datasets import subset_names
    from beray.eval.fields import result_fields
    from beray.sweep.trial import flatten

    reported = sorted(k.replace("/", ".") for k in flatten(res["results"]))
    return reported == sorted(result_fields(mode, subset_names(dataset, root)))


def test_knn_and_linear_score_every_test_subset_from_one_extraction(pretrained, tiny_synth, capsys):
    code, out, err = _run(capsys, "knn", "--checkpoint", pretrained, "--k", 5)
    assert code == 0, err
    assert "| test_biased |" in out and "| test_swapped |" in out and "knn-synth-split1.json" in out
    res = _json(pretrained, "knn-synth-split1")
    assert res["mode"] == "knn" and res["k"] == 5 and res["gallery_videos"] == 12
    for subset in ("test_biased", "test_swapped"):
        r = res["results"][subset]
        assert r["videos"] == 6 and 0 <= r["top1"] <= r["top5"] <= 1
    assert res["chance"] == pytest.approx(1 / 6) and res["model"].startswith("moco (r3d_18 x0.125")
    assert _fields_as_declared(res, "knn", "synth", tiny_synth)
    cache = sorted((pretrained / "eval" / "cache").glob("*.pt"))
    assert len(cache) == 3  # train, test_biased, test_swapped
    code, out, err = _run(capsys, "linear", "--checkpoint", pretrained, "--json")
    assert code == 0, err
    assert sorted((pretrained / "eval" / "cache").glob("*.pt")) == cache  # no decoding again
    lin = _json(pretrained, "linear-synth-split1")
    assert json.loads(out) == lin  # --json prints the report as written
    assert all(0 <= r["top1"] <= r["top5"] <= 1 for r in lin["results"].values())
    assert (pretrained / "eval" / "linear-synth-split1.md").read_text().startswith("## linear probe")


def _two_models(pretrained: Path, tmp_path: Path, **more: float) -> dict[tuple[str, str], Path]:
    """(together | alone, a | b) -> a copy of the pretrained run; b's weights halved: another model. The
    copies of ``together`` sit side by side, as a pack's members in their run (RUN/a, RUN/b). ``more``: other
    members, each with its weights scaled by its value."""
    import shutil

    runs = {}
    for name, scale in (("a", 1.0), ("b", 0.5), *more.items()):
        for where in ("together", "alone"):
            run = shutil.copytree(pretrained, tmp_path / where / name, ignore=shutil.ignore_patterns("eval"))
            f = _last_checkpoint(run) / STATE_FILE
            state = torch.load(f, weights_only=True)
            state["model"] = {k: v * scale if v.is_floating_point() else v for k, v in state["model"].items()}
            torch.save(state, f)
            runs[where, name] = run
    return runs


def test_checkpoints_evaluated_together_score_and_cache_what_each_scores_alone(pretrained, tmp_path):
    # Two checkpoints with other weights (a pack's members): one pass embeds each decoded clip with both
    # models; each gets its own results and cache, equal to its evaluation alone, for every feature.
    from beray.eval.extract import load_cached
    from beray.eval.run import EvalOptions, evaluate, evaluate_together

    runs = _two_models(pretrained, tmp_path)
    opts = EvalOptions(k=5, progress=False)
    together = evaluate_together("knn", [str(runs["together", n]) for n in "ab"], opts)
    for n, [(_, report, directory)] in zip("ab", together):
        [(_, alone, alone_dir)] = evaluate("knn", runs["alone", n], opts)
        assert directory == str(runs["together", n] / "eval") and report.data["results"] == alone.data["results"]
        cached, solo = (sorted((Path(d) / "cache").glob("*.pt")) for d in (directory, alone_dir))
        # named subset-head-sampling-digest, the digest of the checkpoint's path among the rest
        assert len(cached) == 3 and [p.name.rsplit("-", 1)[0] for p in cached] == [p.name.rsplit("-", 1)[0] for p in solo]
        for p, q in zip(cached, solo):
            assert torch.equal(load_cached(p.parent, p.stem).x, load_cached(q.parent, q.stem).x)
    a, b = (sorted((runs["together", n] / "eval" / "cache").glob("*.pt"))[0] for n in "ab")
    assert not torch.equal(load_cached(a.parent, a.stem).x, load_cached(b.parent, b.stem).x)  # each model's own


def test_retrieve_cuts_clips_and_reports_recall_at_k(pretrained, tiny_synth, capsys):
    checkpoint_dir = _last_checkpoint(pretrained)  # a checkpoint directory works as well
    code, out, err = _run(capsys, "retrieve", "--checkpoint", checkpoint_dir)
    assert code == 0, err
    res = _json(pretrained, "retrieve-synth-split1")
    assert res["gallery_clips"] == 12  # 12-frame videos hold one 8-frame clip at stride 2 each
    for r in res["results"].values():
        recalls = [r[f"R@{k}"] for k in (1, 5, 10, 20, 50)]
        assert recalls == sorted(recalls) and 0 <= recalls[0] and recalls[-1] == 1.0  # K=50 > gallery: all hit
        assert r["queries"] == 6
    assert _fields_as_declared(res, "retrieve", "synth", tiny_synth)


def test_background_reports_the_gap_and_the_static_probe(pretrained, tiny_synth, capsys):
    code, out, err = _run(capsys, "background", "--checkpoint", pretrained)
    assert code == 0, err
    assert _fields_as_declared(_json(pretrained, "background-synth-split1"), "background", "synth", tiny_synth)
    # the floors, counted here from the manifests: a background reader is right where the family is the class's
    own = {}
    for split in ("test_biased", "test_swapped"):
        with open(tiny_synth / f"{split}.csv") as fh:
            rows = list(csv.DictReader(fh))
        own[split] = sum(FAMILIES.index(r["background"]) == int(r["label"]) for r in rows) / len(rows)
    floors = _json(pretrained, "background-synth-split1")["floors"]
    assert floors["chance"] == pytest.approx(1 / 6) and floors["background_reader"] == pytest.approx(
        {**own, "gap": own["test_biased"] - own["test_swapped"]})
    res = _json(pretrained, "background-synth-split1")["results"]
    for head in ("knn", "linear"):
        r = res[head]
        assert r["gap"] == pytest.approx(r["test_biased"] - r["test_swapped"])
        assert all(0 <= r[k] <= 1 for k in ("test_biased", "test_swapped", "static_biased", "static_swapped",
                                             "unbiased_swapped"))
    assert "| knn |" in out and "| linear |" in out and "unbiased_swapped" in out


def test_cam_writes_a_strip_and_a_gif(pretrained, capsys):
    from PIL import Image

    code, out, err = _run(capsys, "cam", "--checkpoint", pretrained, "--videos", 2)
    assert code == 0, err
    res = _json(pretrained, "cam-synth-split1")
    assert len(res["videos"]) == 2 and all(0 <= v["mean_activation"] <= 1 for v in res["videos"])
    gif = Image.open(pretrained / "eval" / "cam-synth-split1.gif")
    assert gif.n_frames == 8 and gif.size[0] >= 2 * 96  # two videos side by side, enlarged
    assert Image.open(pretrained / "eval" / "cam-synth-split1.png").size[0] > 0


def _two_class_manifest(synth: Path, out: Path) -> Path:
    """The tiny BackgroundBias-Synth's classes 0 and 1 as a manifest dataset: train and test CSVs."""
    out.mkdir()
    for subset, source in (("train", "train"), ("test", "test_swapped")):
        with open(synth / f"{source}.csv") as fh:
            rows = [r for r in csv.DictReader(fh) if int(r["label"]) < 2]
        (out / f"{subset}.csv").write_text("path,label\n" + "".join(f"{synth / r['path']},{r['label']}\n" for r in rows))
    return out


def test_finetune_a_two_class_set_through_ray_train(pretrained, tiny_synth, tmp_path, capsys):
    root = _two_class_manifest(tiny_synth, tmp_path / "two")
    code, out, err = _run(capsys, "finetune", "--checkpoint", pretrained, "--dataset", "manifest", "--root", root,
                          "--clips", 3, "--set", "optim.epochs=1", "--set", "optim.batch_size=2")
    assert code == 0, err
    res = _json(pretrained, "finetune-manifest-split1")
    assert res["num_classes"] == 2 and res["epochs"] == 1 and res["lr"] == 0.05 and res["clips_per_video"] == 3
    assert res["results"]["test"]["videos"] == 2 and 0 <= res["results"]["test"]["top1"] <= 1
    assert res["results"]["test"]["top5"] == 1.0  # two classes: always in the top 5
    assert _fields_as_declared(res, "finetune", "manifest", root)
    tuned = torch.load(res["finetuned"], weights_only=True)
    assert tuned["config"]["method"]["name"] == "finetune" and tuned["model"]["fc.weight"].shape[0] == 2
    # the backbone started from the pretrained one (the run's last checkpoint)
    assert tuned["config"]["model"]["pretrained"] == str(_last_checkpoint(pretrained) / STATE_FILE)
    run_dir = Path(res["run_dir"])
    assert (run_dir / "config.yaml").is_file() and (run_dir / "tensorboard").is_dir()


def test_a_packs_members_fine_tune_together_to_the_numbers_each_gets_alone_and_a_failing_one_is_named(pretrained, tiny_synth, tmp_path):
    # One Ray Train job fine-tunes both (members a and b of RUN/eval/finetune-...), one pass tests both
    from beray.eval.run import EvalOptions, evaluate, evaluate_together

    # and a third member, whose weights are NaN: its fine-tuning stops at its first step, the others go on
    runs = _two_models(pretrained, tmp_path, c=float("nan"))
    opts = EvalOptions(dataset="manifest", root=str(_two_class_manifest(tiny_synth, tmp_path / "two")), clips=3,
                       overrides=["optim.epochs=1", "optim.batch_size=2"], progress=False)
    *together, [(_, nan, _)] = evaluate_together("finetune", [str(runs["together", n]) for n in "abc"], opts)
    assert nan.data["results"] == {} and nan.data["failed"].startswith("loss is nan at epoch 1, step 1")
    [(_, nan_alone, _)] = evaluate("finetune", runs["together", "c"], opts)  # alone: a run of one stops the same way
    assert nan_alone.data["results"] == {} and nan_alone.data["failed"] == nan.data["failed"]
    job = tmp_path / "together" / "eval" / "finetune-manifest-split1"
    assert sorted(p.name for p in job.glob("checkpoint_*/*") if p.is_dir()) == ["a", "b"]  # one job, two members
    for n, [(stem, report, directory)] in zip("ab", together):
        [(_, alone, _)] = evaluate("finetune", runs["alone", n], opts)
        assert directory == str(runs["together", n] / "eval") and report.data["run_dir"] == str(job / n)
        assert (report.data["train_loss"], report.data["results"]) == (alone.data["train_loss"], alone.data["results"])
        assert torch.load(report.data["finetuned"], weights_only=True)["config"]["model"]["pretrained"] == \
            str(_last_checkpoint(runs["together", n]) / STATE_FILE)  # each from its own pretrained model
    assert together[0][0][1].data["train_loss"] != together[1][0][1].data["train_loss"]


def test_static_bias_of_two_finetuned_checkpoints(pretrained, tmp_path, capsys):
    code, out, err = _run(capsys, "finetune", "--checkpoint", pretrained, "--clips", 2, "--set", "optim.epochs=1",
                          "--set", "optim.batch_size=4", "--set", "run.name=ft-base")
    assert code == 0, err
    # The method: the baseline's fine-tuned model with its classifier's rows rolled by one class, a model of
    # its own whose every class scores differently, and one fine-tuning run less.
    state = torch.load(_json(pretrained, "finetune-synth-split1")["finetuned"], weights_only=True)
    for k in ("fc.weight", "fc.bias"):
        state["model"][k] = state["model"][k].roll(1, 0)
    (tmp_path / "method").mkdir()
    torch.save(state, tmp_path / "method" / STATE_FILE)
    tuned = [pretrained / "eval" / "ft-base", tmp_path / "method" / STATE_FILE]
    code, out, err = _run(capsys, "static-bias", "--checkpoint", tuned[1], "--against", tuned[0], "--clips", 2)
    assert code == 0, err
    result = tmp_path / "method" / "eval" / "static-bias-synth-split1"
    res = json.loads(result.with_suffix(".json").read_text())
    assert res["subset"] == "test_biased" and len(res["per_class"]) == 6
    used = 0
    for c in res["per_class"].values():
        assert all(0 <= c[k] <= 1 for k in ("static", "baseline", "method"))
        if c["baseline"] > 0:
            used += 1
            assert c["relative_improvement_pct"] == pytest.approx(100 * (c["method"] - c["baseline"]) / c["baseline"])
    assert res["classes_used"] == used
    assert math.isnan(res["rho"]) or -1 <= res["rho"] <= 1
    assert result.with_suffix(".png").stat().st_size > 0


# -- a stranger's file, a wrong model: one line, exit 2 ----------------------------------------------

class _NotAllowed:  # anything weights_only refuses to unpickle
    pass


def _refused(capsys, *argv) -> str:
    code, out, err = _run(capsys, *argv)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_foreign_files_and_wrong_models_are_refused_in_one_line(pretrained, tmp_path, capsys):
    (tmp_path / "text.pt").write_text("not a checkpoint")
    assert "is not a beray checkpoint" in _refused(capsys, "knn", "--checkpoint", tmp_path / "text.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "dict.pt")
    assert "expected a dict with 'model' and 'config'" in _refused(capsys, "knn", "--checkpoint", tmp_path / "dict.pt")
    torch.save({"model": _NotAllowed(), "config": {}}, tmp_path / "code.pt")
    assert "holds objects that only running code" in _refused(capsys, "knn", "--checkpoint", tmp_path / "code.pt")
    assert "does not exist" in _refused(capsys, "knn", "--checkpoint", tmp_path / "nowhere")
    err = _refused(capsys, "knn", "--checkpoint", pretrained, "--set", "model.backbone=c3d")
    assert "holds a r3d_18 x0.125 backbone, not the c3d x0.125" in err
    state = torch.load(_last_checkpoint(pretrained) / STATE_FILE, weights_only=True)
    state["config"]["model"]["width"] = 0.25  # weights of one width, a config of another
    torch.save(state, tmp_path / "mislabelled.pt")
    assert "does not hold a r3d_18 x0.25 backbone" in _refused(capsys, "knn", "--checkpoint", tmp_path / "mislabelled.pt")
    assert "expected a fine-tuned one" in _refused(capsys, "static-bias", "--checkpoint", pretrained,
                                                   "--against", pretrained)
    assert "needs --against" in _refused(capsys, "static-bias", "--checkpoint", pretrained)
