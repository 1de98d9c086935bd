"""``python -m beray.sweep``: sweep files validated before Ray starts, the report checked against
hand-made trial results, and real tiny sweeps on the session's local Ray (trials are real Ray Train
runs, scored by a real kNN evaluation): a 2 x 2 grid, ASHA stopping a trial, a killed driver resumed."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from beray.sweep.__main__ import main
from beray.sweep.driver import max_concurrent
from conftest import foreign_lines, saved_an_ended_trial, tiny_sweep, wait_for
from beray.sweep.report import aggregate, write_report
from beray.sweep.spec import Sweep, load_sweep

SWEEPS = sorted((Path(__file__).parent.parent / "sweeps").glob("*.yaml"))


# -- sweep files ------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_every_sweep_file_passes_its_dry_run(path, capsys):
    assert main([str(path), "--dry-run"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "no Ray started" in out
    assert main([str(path), "--dry-run", "--set", "synthetic=true"]) == 0  # the README's one-line switch
    assert "on synth (generated), r3d_18 x0.125" in capsys.readouterr().out


def test_synthetic_study_sweeps_cover_table_4_with_seeds_and_score_both_probes():
    import torch

    from beray.augment.be import NOISES
    from beray.eval.frozen import background_scores
    from beray.sweep.trial import flatten

    noise, gamma = load_sweep("sweeps/synthetic_noise.yaml"), load_sweep("sweeps/synthetic_gamma.yaml")
    supervised = load_sweep("sweeps/synthetic_supervised.yaml")  # the reference: labels, rho 0.9 and 1.0
    assert [p["data.synth.rho"] for p in supervised.points()] == [0.9, 1.0]
    cfg = supervised.run_config(supervised.points()[1], 0)
    assert cfg.method.name == "finetune" and cfg.data.synth == {**noise.run_config(noise.points()[0], 0).data.synth,
                                                                "rho": 1.0}  # the same copy of the data, rho apart
    assert sorted(p["be.noise"] for p in noise.points()) == sorted(NOISES)  # Table 4's six and FAME
    assert [p["be.gamma"] for p in gamma.points()] == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    x, y = torch.randn(12, 4), torch.arange(6).repeat(2)
    tests = {name: (x, y) for name in ("test_biased", "test_swapped", "static_biased", "static_swapped")}
    names = flatten(background_scores((x, y), tests, 6, 3, (x, y)))
    for sweep in (noise, gamma, supervised):
        assert len(sweep.seed_list) >= 3 and sweep.eval.mode == "background"
        metrics = [sweep.objective.metric, *sweep.objective.also]
        assert "linear.unbiased_swapped" in metrics and "linear.test_swapped" in metrics  # probes (b) and (a)
        assert all(m.replace(".", "/") in names for m in metrics), metrics  # each is a field of the results
        assert sweep.run_config(sweep.points()[0], 0).data.synth["background_pool"] > 0


def test_paper_sweeps_are_the_ablations_they_name():
    gamma = load_sweep("sweeps/gamma.yaml")
    assert [p["be.gamma"] for p in gamma.points()] == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    assert [p["method.beta"] for p in load_sweep("sweeps/beta.yaml").points()] == [0, 0.5, 1, 2, 5]
    assert [p["data.stride"] for p in load_sweep("sweeps/stride.yaml").points()] == [1, 2, 4, 8]
    noise = load_sweep("sweeps/noise.yaml")
    assert {p["be.noise"] for p in noise.points()} == set(noise.reference.values) and len(noise.points()) == 6
    cfg = gamma.run_config({"be.gamma": 0.3}, 0, storage="/tmp/s", name="73008_00001", check_paths=False)
    assert cfg.run.name == "73008_00001"  # a trial id, which YAML alone would read as the number 7300800001
    assert (cfg.data.dataset, cfg.data.split, cfg.model.backbone, cfg.optim.epochs) == ("ucf101", 1, "i3d", 50)
    tpe = load_sweep("sweeps/tpe.yaml")
    assert tpe.search.algorithm == "optuna" and tpe.scheduler.name == "asha"
    synthetic = load_sweep("sweeps/beta.yaml", ["synthetic=true"])
    cfg = synthetic.run_config({"method.beta": 2.0}, 1, check_paths=False)
    assert (cfg.method.name, cfg.method.beta, cfg.data.dataset, cfg.run.seed) == ("rotnet", 2.0, "synth", 1)


def test_the_driver_generates_each_synthetic_copy_once_before_ray(tmp_path, monkeypatch, capsys):
    from beray.data.synth import ensure_synth, synth_config
    from beray.sweep.__main__ import _generate_synth

    monkeypatch.setenv("BERAY_CACHE", str(tmp_path / "cache"))
    small = {"data.synth.train_per_class": 1, "data.synth.test_per_class": 1, "data.synth.unbiased_per_class": 1,
             "data.synth.frames": 8, "data.synth.size": 32}
    sweep = Sweep.model_validate({"name": "g", "base": {"preset": "cpu-tiny", "set": small},
                                  "space": {"data.synth.rho": {"grid": [0.9, 1.0]}, "be.gamma": {"grid": [0.0, 0.3]}},
                                  "eval": {"mode": "background"}, "objective": {"metric": "linear.gap"}})
    _generate_synth(sweep, [cfg for _, _, cfg in sweep.validate_trials()])
    copies = sorted((tmp_path / "cache").glob("synth-*"))
    assert len(copies) == 2  # one per rho: gamma does not change the data
    assert "BackgroundBias-Synth" in capsys.readouterr().err  # its progress bar, on this console
    options = {k.removeprefix("data.synth."): v for k, v in small.items()}
    assert ensure_synth(synth_config({**options, "rho": 1.0})) in copies  # what a trial asks for is there


def test_random_points_are_reproducible_and_inside_the_space():
    sweep = Sweep.model_validate({"name": "r", "space": {"be.gamma": {"uniform": [0.1, 0.4]},
                                                         "optim.lr": {"loguniform": [1e-3, 1e-1]},
                                                         "data.stride": {"grid": [2, 4]}},
                                  "search": {"algorithm": "random", "samples": 5, "seed": 3}, "seeds": [7, 8],
                                  "objective": {"metric": "test_swapped.top1"}})  # synth's test subsets
    points = sweep.points()
    assert len(points) == 10 and points == sweep.points()
    assert sorted({p["data.stride"] for p in points}) == [2, 4]
    assert all(0.1 <= p["be.gamma"] <= 0.4 and 1e-3 <= p["optim.lr"] <= 1e-1 for p in points)
    assert len(sweep.validate_trials(check_paths=False)) == 20  # every point with both seeds


def test_trials_that_read_the_same_stream_group_into_packs_and_the_dry_run_lists_them(capsys, tmp_path):
    tree = {"name": "k", "base": {"preset": "cpu-tiny"}, "seeds": 2, "objective": {"metric": "test_swapped.top1"},
            "space": {"be.gamma": {"grid": [0.0, 0.1, 0.2]}, "data.stride": {"grid": [2, 4]},
                      "optim.lr": {"grid": [0.01, 0.05]}}}
    sweep = Sweep.model_validate(tree)
    packs = sweep.packs(sweep.validate_trials(check_paths=False))
    # 24 trials; a stream is (seed, stride): 4 streams of 6 members, split by pack_size 4 into 4 + 2
    assert sorted(len(p) for p in packs) == [2, 2, 2, 2, 4, 4, 4, 4]
    for pack in packs:
        assert len({(seed, point["data.stride"]) for point, seed, _ in pack}) == 1
    assert sum(len(p) for p in packs) == 24
    assert len(Sweep.model_validate({**tree, "pack": False}).packs(sweep.validate_trials(check_paths=False))) == 24
    f = tmp_path / "k.yaml"
    f.write_text(yaml.safe_dump({**tree, "space": {"be.gamma": {"grid": [0.0, 0.3]}}}))
    assert main([str(f), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 pack(s) of at most 4" in out and out.count("2 member(s), model and optimiser state ~") == 2


def test_concurrency_counts_whole_workers_per_node_and_leaves_each_trial_room_for_its_decode_tasks():
    def trials(nodes, **resources):
        sweep = Sweep.model_validate({"name": "c", "base": {"preset": "cpu-tiny"}, "space": {"be.gamma": {"grid": [0.3]}},
                                      "resources": resources})  # cpu-tiny: a decode task holds 0.5 CPU
        return max_concurrent(sweep, nodes)

    # 2 CPUs: a trial of 0.51 (its driver and worker) and its decode task fit twice in 2.02, not in 2
    assert trials([{"CPU": 2}], workers=1, cpus_per_worker=0.5) == 1
    assert trials([{"CPU": 2}], workers=1, cpus_per_worker=0.49) == 2  # 2 x (0.5 + 0.5)
    assert trials([{"CPU": 4}], workers=1, cpus_per_worker=0.5) == 3  # 3 x 1.01 in 4; 4 x in 4.04: no
    assert trials([{"CPU": 4}], workers=1, cpus_per_worker=0.5, decode_tasks=2) == 2  # 2 x (0.51 + 1.0)
    # Two 2-CPU nodes: 1.5-CPU workers leave 0.49 free on each, no room for a 0.5-CPU decode task
    # anywhere, though the cluster has 0.98 CPUs free in all; 1.25-CPU workers leave 0.74 on each.
    assert trials([{"CPU": 2}, {"CPU": 2}], workers=1, cpus_per_worker=1.5) == 1
    assert trials([{"CPU": 2}, {"CPU": 2}], workers=1, cpus_per_worker=1.25) == 2
    gpu_cluster = [{"CPU": 8}, {"CPU": 48, "GPU": 4}, {"CPU": 48, "GPU": 4}]  # a CPU head, two g5.12xlarge
    assert trials(gpu_cluster, workers=1, cpus_per_worker=8, gpus_per_worker=1) == 8
    assert trials(gpu_cluster, workers=2, cpus_per_worker=8, gpus_per_worker=1) == 4
    assert trials(gpu_cluster, workers=1, cpus_per_worker=8, gpus_per_worker=1, max_concurrent=3) == 3
    assert trials([{"CPU": 8}], workers=1, cpus_per_worker=8, gpus_per_worker=1) == 1  # none fit now: one waits


def test_an_autoscaler_s_max_workers_bounds_every_node_type_together():
    from beray.sweep.driver import scaled_workers

    sweep = Sweep.model_validate({"name": "c", "base": {"preset": "cpu-tiny"}, "space": {"be.gamma": {"grid": [0.3]}},
                                  "resources": {"workers": 1, "cpus_per_worker": 8, "gpus_per_worker": 1}})
    cpu, gpu = {"CPU": 16}, {"CPU": 48, "GPU": 4}
    assert scaled_workers(sweep, [(cpu, 8), (gpu, 8)]) == [cpu] * 8 + [gpu] * 8  # no budget: each type's own
    assert scaled_workers(sweep, [(cpu, 8), (gpu, 8)], budget=3) == [gpu] * 3  # 3 in all: those that hold trials
    assert len(scaled_workers(sweep, [(cpu, -1)], budget=-1)) == 64  # no limit anywhere: UNLIMITED
    assert max_concurrent(sweep, [{"CPU": 8}, *scaled_workers(sweep, [(cpu, 8), (gpu, 8)], budget=3)]) == 12


def test_a_bad_sweep_file_exits_2_naming_the_field(tmp_path, capsys):
    good = yaml.safe_load(Path("sweeps/quickstart.yaml").read_text())
    cases = [
        ({"space": {"be.gamma": {"grid": [0.1, 7]}}}, "space.be.gamma = 7 makes an invalid run: be.gamma: Input should"),
        ({"space": {"be.noise": {"grid": ["none", "salt"]}}}, "space.be.noise = 'salt' makes an invalid run"),
        ({"search": {"algorithm": "bayes"}}, "search.algorithm: Input should be 'grid', 'random' or 'optuna'"),
        ({"resources": {"gpu": 1}}, "resources.gpu: unknown key; allowed: workers, cpus_per_worker"),
        ({"space": {"be.gamma": {"uniform": [0.5, 0.1]}}}, "space.be.gamma: Value error, uniform needs low < high"),
        ({"scheduler": {"name": "hyperband"}}, "scheduler.name: Input should be 'fifo' or 'asha'"),
        ({"pack": True, "scheduler": {"name": "asha"}}, "pack: true with scheduler asha: ASHA stops single trials"),
        ({"pack": True, "search": {"algorithm": "optuna"}}, "pack: true with search.algorithm optuna"),
        ({"base": {"preset": "huge"}}, "base.preset: Value error, unknown preset 'huge'"),
        ({"base": {"set": {"data.dataset": "ucf101", "data.root": "/no/such/ucf101"}}, "eval": {"mode": "knn"},
          "objective": {"metric": "test.top1"}}, "data.root /no/such/ucf101 does not exist"),
        ({"objective": {"metric": "nonsense.top1"}, "eval": {"mode": "knn"}},
         "objective.metric: 'nonsense.top1' is not a result of knn on synth; it reports: test_biased.top1, "
         "test_biased.top5, test_biased.videos, test_swapped.top1"),
        ({"objective": {"metric": "linear.gap", "also": ["linear.gap", "test_swapped.top1"]}},
         "objective.also[1]: 'test_swapped.top1' is not a result of background on synth; it reports: "
         "knn.test_biased, knn.test_swapped, knn.gap"),
        ({"eval": {"mode": "retrieve", "dataset": "ucf101", "root": "/no/such/ucf101"}},
         "objective.metric: 'linear.gap' is not a result of retrieve on ucf101; it reports: test.R@1, "),
        ({"baseline": {"be.beta": 0}}, "baseline.be.beta is not a field of the space (be.noise)"),
        ({"baseline": {"be.noise": "fame"}}, "baseline.be.noise = 'fame' is not one of its values ['none', 'intra_frame']"),
        ({"baseline": {"be.noise": "none"}, "search": {"algorithm": "random", "samples": 2},
          "space": {"be.noise": {"grid": ["none", "fame"]}, "be.gamma": {"uniform": [0.1, 0.5]}}},
         "baseline: a random search draws be.gamma anew for every point, so no point has a baseline"),
        ({"eval": {"mode": "background"}, "base": {"set": {"data.dataset": "ucf101", "data.root": "."}},
          "objective": {"metric": "knn.gap"}}, "eval.mode: background needs BackgroundBias-Synth's subsets"),
    ]
    for change, message in cases:
        f = tmp_path / "bad.yaml"
        f.write_text(yaml.safe_dump({**good, **change}))
        early = message.startswith(("objective", "eval.mode"))  # refused at --dry-run too, in one line
        for dry in ([], ["--dry-run"]) if early else ([],):
            code = main([str(f), *dry])
            err = capsys.readouterr().err
            assert code == 2 and message.replace("Value error, ", "") in err and "Traceback" not in err, (change, err)
            assert not early or len(err.strip().splitlines()) == 1, err
    assert main([str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read sweep file" in capsys.readouterr().err


def test_storage_that_cannot_be_written_or_read_is_one_line_before_ray_starts(tiny_synth, tmp_path, capsys):
    (tmp_path / "file").write_text("")  # a file where the storage needs a folder
    f = tiny_sweep(tmp_path, tiny_synth, "w", {"be.gamma": {"grid": [0.0]}})
    tree = yaml.safe_load(f.read_text())
    f.write_text(yaml.safe_dump({**tree, "storage": str(tmp_path / "file" / "sweeps")}))
    assert main([str(f)]) == 2
    err = capsys.readouterr().err
    assert f"error: storage: cannot write the sweep's files to {tmp_path / 'file' / 'sweeps' / 'w'}: " in err, err
    assert "Traceback" not in err
    assert main(["report", "s4://bucket/sweeps/w"]) == 2  # a scheme no file system knows
    err = capsys.readouterr().err
    assert "error: cannot read or write the report in s4://bucket/sweeps/w: " in err and "Traceback" not in err, err


def test_a_resume_that_changes_the_sweep_is_refused_naming_the_field(tiny_synth, tmp_path, capsys):
    # Tune restores a sweep's space, search and trials from its tuner.pkl: a changed sweep file would only
    # change what the report expects and what the trials read
    f = tiny_sweep(tmp_path, tiny_synth, "again", {"be.gamma": {"grid": [0.0, 0.3]}})
    results = tmp_path / "sweeps" / "again"
    results.mkdir(parents=True)
    (results / "tuner.pkl").write_bytes(b"")  # a started sweep, as far as the check before Ray goes
    (results / "sweep.yaml").write_text(yaml.safe_dump(load_sweep(str(f), []).dump(), sort_keys=False))
    assert main([str(f), "--set", "seeds=3", "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"error: --resume: {results} was started with other settings (seeds: 1 -> 3); " in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


# -- the report against hand-made results -----------------------------------------------------------

def test_report_aggregates_seeds_and_marks_stopped_and_failed_trials(tmp_path):
    sweep = Sweep.model_validate({"name": "h", "space": {"be.gamma": {"grid": [0.0, 0.3, 0.5]}}, "seeds": 3,
                                  "objective": {"metric": "test.top1", "mode": "max", "also": ["test.top5"]}})
    records = [{"point": {"be.gamma": 0.3}, "seed": s, "status": "finished", "objective": v,
                "results": {"test/top5": v + 0.2}} for s, v in enumerate([0.5, 0.7, 0.6])]
    records += [{"point": {"be.gamma": 0.0}, "seed": 0, "status": "finished", "objective": 0.4},
                {"point": {"be.gamma": 0.0}, "seed": 1, "status": "stopped"},
                {"point": {"be.gamma": 0.5}, "seed": 0, "status": "failed", "error": "Traceback\nValueError: boom"}]
    records.append({**records[0]})  # a point and seed drawn twice (random search): the same run, counted once
    rows = aggregate(records, sweep)
    assert [r.point["be.gamma"] for r in rows] == [0.3, 0.0, 0.5]  # best first, no result last
    assert rows[0].mean == pytest.approx(0.6) and rows[0].std == pytest.approx(0.1) and rows[0].n == 3
    assert rows[0].repeated == 1 and rows[1].repeated == 0
    assert rows[1].n == 1 and math.isnan(rows[1].std) and rows[1].stopped == 1  # one seed: no spread
    assert rows[2].n == 0 and rows[2].failed == 1 and rows[2].errors == ["ValueError: boom"]
    (tmp_path / "trials").mkdir()
    for i, r in enumerate(records):
        (tmp_path / "trials" / f"t{i}.json").write_text(json.dumps(r))
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep.dump()))
    md = write_report(tmp_path)
    # gamma 0 (the first of the grid) is the baseline; gamma 0.3 shares one finished seed with it (whose
    # record has no top-5: nothing to pair there)
    assert "| 0.3 | 0.6000 | 0.1000 | 3 | +0.100 | 0.8000 | 0.1000 | - | 1 repeat(s) of a seed counted once |" in md
    assert "highest mean test.top1: be.gamma=0.3 (0.6000 +- 0.1000, n=3); with fewer than 3 paired" in md
    assert "best:" not in md
    assert "1 trial(s) stopped early have no pair: each difference is over the seeds where both points ran" in md
    with open(tmp_path / "results.csv") as fh:
        table = list(csv.DictReader(fh))
    assert float(table[0]["test.top1 mean"]) == pytest.approx(0.6) and float(table[0]["test.top1 std"]) == \
        pytest.approx(0.1) and table[0]["test.top1 n"] == "3"
    assert float(table[0]["test.top5 mean"]) == pytest.approx(0.8)  # every metric with its spread and pairs
    assert float(table[0]["test.top1 diff"]) == pytest.approx(0.1) and table[0]["test.top1 pairs"] == "1"
    assert table[0]["test.top5 pairs"] == "0" and table[0]["test.top1 diff_lo"] == ""  # one pair: no interval
    assert table[1]["test.top1 pairs"] == "0"  # the baseline itself
    assert "1 stopped early" in table[1]["notes"] and "1 failed: ValueError: boom" in table[2]["notes"]
    assert (tmp_path / "results.png").stat().st_size > 0 and (tmp_path / "results.md").is_file()


def _write(results: Path, sweep: Sweep, values: dict) -> str:
    """Records of ``values`` (point value -> objective per seed) under ``results``; the report's markdown."""
    (results / "trials").mkdir(parents=True)
    key = next(iter(sweep.space))
    for value, per_seed in values.items():
        for seed, v in enumerate(per_seed):
            (results / "trials" / f"{value}-{seed}.json").write_text(json.dumps(
                {"point": {key: value}, "seed": seed, "status": "finished", "objective": v}))
    (results / "sweep.yaml").write_text(yaml.safe_dump(sweep.dump()))
    return write_report(results)


def test_the_report_sets_the_gap_between_the_floors_that_its_trials_recorded(tmp_path):
    sweep = Sweep.model_validate({"name": "f", "space": {"be.noise": {"grid": ["none", "intra_frame"]}},
                                  "eval": {"mode": "background"}, "objective": {"metric": "linear.gap", "mode": "min"}})
    (tmp_path / "trials").mkdir()
    floors = {"floor/chance": 1 / 6, "floor/background_reader/test_biased": 0.9,
              "floor/background_reader/test_swapped": 0.25, "floor/background_reader/gap": 0.65}
    for i, (noise, gap) in enumerate([("none", 0.52), ("intra_frame", 0.39)]):
        (tmp_path / "trials" / f"{i}.json").write_text(json.dumps(
            {"point": {"be.noise": noise}, "seed": 0, "status": "finished", "objective": gap,
             "results": {"linear/gap": gap, **floors}}))
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep.dump()))
    md = write_report(tmp_path)
    assert ("floors, from the test manifests: chance 0.167; a reader of the background alone scores test_biased "
            "0.900, test_swapped 0.250, gap 0.650; a reader of motion alone has gap 0") in md
    assert "shortcut: linear.gap of every point lies between 0.390 and 0.520, 60%-80% of the way" in md


def test_the_report_pairs_trials_by_seed_and_marks_only_intervals_that_exclude_0(tmp_path):
    sweep = Sweep.model_validate({"name": "p", "space": {"be.noise": {"grid": ["none", "gaussian", "fame"]}},
                                  "seeds": 3, "objective": {"metric": "test.top1"}})
    # Seeds move every point together (0.2, 0.5, 0.8): unpaired, the spread hides it; paired, gaussian is
    # +0.12 +- 0.02 (t(0.975, 2) = 4.3027: half-width 0.0497) and fame +0.2 +- 0.1 (half-width 0.2484).
    md = _write(tmp_path / "a", sweep, {"none": [0.2, 0.5, 0.8], "gaussian": [0.30, 0.64, 0.92],
                                        "fame": [0.3, 0.7, 1.1]})
    assert "| gaussian | 0.6200 | 0.3105 | 3 | +0.120 [+0.070, +0.170] * |" in md
    assert "| fame | 0.7000 | 0.4000 | 3 | +0.200 [-0.048, +0.448] |" in md and "| none | 0.5000 | 0.3000 | 3 | baseline |" in md
    assert "2 comparison(s), 1 marked" in md and "have no pair" not in md
    assert "best: be.noise=gaussian (test.top1 0.6200 +- 0.3105, n=3): its paired difference" in md  # not fame
    md = _write(tmp_path / "b", sweep.model_copy(update={"baseline": {"be.noise": "fame"}}),
                {"none": [0.2, 0.5], "gaussian": [0.3, 0.6], "fame": [0.3, 0.7]})
    assert "| none | 0.3500 | 0.2121 | 2 | -0.100, -0.200 |" in md and "no interval below 3 pairs" in md  # two pairs
    md = _write(tmp_path / "c", sweep, {"none": [0.25], "gaussian": [0.2], "fame": [0.2]})
    assert "| none | 0.2500 | - | 1 | baseline |" in md and "| gaussian | 0.2000 | - | 1 | -0.050 |" in md
    assert "one seed cannot rank the points" in md and "best" not in md
    # every seed one test video ahead: a width-0 interval tests nothing; two points ahead are not ranked
    md = _write(tmp_path / "d", sweep, {"none": [0.2, 0.5, 0.8], "gaussian": [0.25, 0.55, 0.85],
                                        "fame": [0.3, 0.6, 0.9]})
    assert "| gaussian | 0.5500 | 0.3000 | 3 | +0.050, +0.050, +0.050 |" in md and "comparison(s)" not in md
    assert "no interval below 3 pairs or where every pair differs alike" in md and "best" not in md
    assert "no difference is tested (fewer than 3 paired seeds, or pairs that all differ alike)" in md
    md = _write(tmp_path / "e", sweep, {"none": [0.2, 0.5, 0.8], "gaussian": [0.30, 0.64, 0.92],
                                        "fame": [0.31, 0.63, 0.93]})
    assert "2 comparison(s), 2 marked" in md and "best" not in md
    assert "ahead of the baseline in test.top1 (paired differences that exclude 0), not compared with each other: " \
           "be.noise=fame (0.6233 +- 0.3101, n=3); be.noise=gaussian (0.6200 +- 0.3105, n=3)" in md
    with open(tmp_path / "e" / "results.csv") as fh:
        fame = next(r for r in csv.DictReader(fh) if r["be.noise"] == "fame")
    assert fame["test.top1 diffs"] == "+0.1100 +0.1300 +0.1300" and fame["test.top1 marked"] == "1"


# -- real sweeps on the session's Ray ---------------------------------------------------------------

def _records(results: Path) -> list[dict]:
    return [json.loads(f.read_text()) for f in sorted((results / "trials").glob("*.json"))]


@pytest.mark.timeout(600)  # the first test to ask runs the shared 4-trial sweep: 170 s on a slow machine
def test_a_two_by_two_sweep_reports_four_points(grid_sweep, capsys):
    assert grid_sweep["code"] == 0, grid_sweep["err"][-3000:]
    out, results = grid_sweep["out"], grid_sweep["results"]
    records = _records(results)
    assert len(records) == 4 and all(r["status"] == "finished" for r in records)
    assert all(0 <= r["objective"] <= 1 for r in records)
    assert out.count("started   ") == 4 and out.count("finished  ") == 4 and "(4 done, 0 running, 0 pending)" in out
    assert not foreign_lines(out, grid_sweep["err"]) and (results / "ray.log").is_file()  # Ray's lines: its log
    with open(results / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and {(r["be.gamma"], r["be.noise"]) for r in rows} == \
        {("0", "intra_frame"), ("0", "gaussian"), ("0.3", "intra_frame"), ("0.3", "gaussian")}
    assert all(r["test_swapped.top1 n"] == "1" for r in rows)
    assert (results / "results.png").is_file() and "one seed cannot rank" in (results / "results.md").read_text()
    # one pack (one seed, one stream): one job, whose run holds a folder per point, as an unpacked trial's run
    assert len(list((results / "runs").iterdir())) == 1
    runs = [Path(r["run_dir"]) for r in records]
    assert {r.parent for r in runs} == {results / "runs" / records[0]["trial_id"].split("/")[0]}
    assert all((r / "tensorboard").is_dir() and (r / "eval" / "knn-synth-split1.json").is_file() for r in runs)
    assert main(["report", str(results)]) == 0 and "| be.gamma | be.noise |" in capsys.readouterr().out


@pytest.mark.timeout(600)
def test_a_packed_grid_gives_every_point_the_numbers_of_its_unpacked_trial(grid_sweep, tmp_path, capsys):
    # The same 2 x 2 sweep as four jobs: every point's last loss and every kNN number equal to every digit
    assert grid_sweep["code"] == 0, grid_sweep["err"][-3000:]
    storage = tmp_path / "sweeps"
    assert main([str(grid_sweep["file"]), "--set", "pack=false", "--set", f"storage={storage}"]) == 0, \
        capsys.readouterr().err[-3000:]
    out = capsys.readouterr().out
    packed, alone = ({tuple(sorted(r["point"].items())): r for r in _records(d)}
                     for d in (grid_sweep["results"], storage / "grid"))
    assert len(alone) == 4 and len(list((storage / "grid" / "runs").iterdir())) == 4 and out.count("started   ") == 4
    for point, r in alone.items():
        p = packed[point]
        assert r["status"] == p["status"] == "finished" and "/" in p["trial_id"] and "/" not in r["trial_id"]
        assert (p["loss"], p["epochs"], p["objective"], p["results"]) == (r["loss"], r["epochs"], r["objective"],
                                                                         r["results"]), point
    assert len({r["loss"] for r in alone.values()}) == 3  # the points differ, but at gamma 0 x_d is x_v for both noises
    assert main(["report", str(storage / "grid")]) == 0

    def body(md: str) -> str:  # the report from its table to the results' folder, which differs
        return md[md.index("\n| "):md.index("TensorBoard of every")]

    assert body(capsys.readouterr().out) == body((grid_sweep["results"] / "results.md").read_text())


def test_asha_stops_the_trial_that_is_worse_at_the_first_rung(ray_cluster, tiny_synth, tmp_path, capsys):
    # One trial at a time, the sound one first: a 4096-key queue of random keys puts MoCo's loss about
    # ln(4096 / 16) = 5.5 nats above the other's from the first step, far beyond what two steps change.
    # The third (8 keys, a lower loss still) must then get the stopped trial's CPUs and finish.
    f = tiny_sweep(tmp_path, tiny_synth, "asha", {"method.queue_size": {"grid": [16, 4096, 8]}},
                    scheduler={"name": "asha", "metric": "loss", "mode": "min", "grace_period": 1,
                               "reduction_factor": 2},
                    resources={"workers": 1, "cpus_per_worker": 0.5, "max_concurrent": 1})
    assert main([str(f)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    by_queue = {r["point"]["method.queue_size"]: r for r in _records(tmp_path / "sweeps" / "asha")}
    assert by_queue[16]["status"] == "finished" and by_queue[4096]["status"] == "stopped"
    assert by_queue[8]["status"] == "finished"  # the stopped trial freed its resources
    assert by_queue[4096]["epochs"] == 1 and "stopped early (ASHA)" in out
    assert "1 stopped early" in (tmp_path / "sweeps" / "asha" / "results.md").read_text()


def test_a_diverging_trial_fails_at_once_and_a_starved_one_after_its_retry_and_the_sweep_goes_on(
        ray_cluster, tiny_synth, tmp_path, capsys):
    # Two trials (a stall limit is part of the stream), one at a time, each with a retry and Train restarts to
    # spare. One's loss is NaN at the first step (logits / tau overflow): failed at once, not retried. The other's
    # pipeline may deliver nothing for a microsecond, less than its first batch takes: starved, retried once (a
    # busy cluster may free up), then failed in one line.
    f = tiny_sweep(tmp_path, tiny_synth, "nan", {"method.tau": {"grid": [1.0e-45]},
                                                 "data.stall_timeout_s": {"grid": [300.0, 1.0e-6]}}, retries=1,
                   resources={"workers": 1, "cpus_per_worker": 0.49, "max_concurrent": 1})
    assert main([str(f)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    by_limit = {r["point"]["data.stall_timeout_s"]: r for r in _records(tmp_path / "sweeps" / "nan")}
    record = by_limit[300.0]
    assert record["status"] == "failed" and record["error"].startswith("loss is nan at epoch 1, step 1"), record
    starved = by_limit[1.0e-6]
    assert starved["status"] == "failed", starved
    assert re.search(r"DataStalled: the data pipeline is starved: it delivered no batch for 1e-06 s "
                    r"\(data\.stall_timeout_s\); [\d.]+ of 2 CPUs free; held by: ", starved["error"].splitlines()[-1]), \
        starved["error"]
    assert out.count("retrying") == 1 and out.count("failed    ") == 2 and "2 failed" in out


@pytest.mark.timeout(600)  # three drivers, three Train starts and two evaluations: 80 s here
def test_a_killed_driver_resumes_with_only_the_packs_left_and_a_failing_member_or_pack_is_reported(
        ray_cluster, tiny_synth, tmp_path):
    # Two packs (a decode limit is part of the stream) of two members (tau 0.2, and tau 1e-45, whose loss
    # is NaN at the first step), one pack at a time. The first (a decode limit of 60 s) finishes, its NaN
    # member failed alone; the driver is then killed with SIGKILL and started again with --resume, which
    # must not run it again. The second has a decode limit of a microsecond, which makes every video
    # unreadable: its run has no full batch and stops, and both its members are reported failed with why at
    # once (a retry would decode the same data to the same end); the sweep ends normally.
    f = tiny_sweep(tmp_path, tiny_synth, "resume", {"data.decode_timeout_s": {"grid": [60.0, 1.0e-6]},
                                                    "method.tau": {"grid": [0.2, 1.0e-45]}},
                   retries=1, resources={"workers": 1, "cpus_per_worker": 0.5, "max_concurrent": 1})
    tree = yaml.safe_load(f.read_text())
    tree["base"]["set"]["run.max_failures"] = 0
    f.write_text(yaml.safe_dump(tree))
    results = tmp_path / "sweeps" / "resume"
    env = {**os.environ, "RAY_ADDRESS": ray_cluster["address"], "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "beray.sweep", str(f)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        finished = wait_for(lambda: any(r["status"] == "finished" for r in
                                        (_records(results) if (results / "trials").is_dir() else [])), 200)
        # Tune saves its state every second (TUNE_GLOBAL_CHECKPOINT_S): wait for a save that has the pack ended
        saved = wait_for(lambda: any(saved_an_ended_trial(p.read_text()) for p in results.glob("experiment_state-*.json")),
                         20)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    first = [r for r in _records(results) if r["status"] == "finished"]
    assert finished and saved and len(first) == 1, proc.stdout.read()[-3000:]
    done_id = first[0]["trial_id"].split("/")[0]  # TRIAL/MEMBER: the pack's trial
    checkpoints = sorted((results / "runs" / done_id).glob("checkpoint_*"))
    res = subprocess.run([sys.executable, "-m", "beray.sweep", str(f), "--resume"], env=env, capture_output=True,
                         text=True, timeout=240)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert not foreign_lines(res.stdout, res.stderr), res.stdout + res.stderr  # Ray's lines are in its log
    assert "Ray's log: " in res.stderr and (results / "ray.log").stat().st_size > 0
    assert f"started   {done_id}" not in res.stdout  # the finished pack is not run again
    assert checkpoints and sorted((results / "runs" / done_id).glob("checkpoint_*")) == checkpoints
    by_point = {(r["point"]["data.decode_timeout_s"], r["point"]["method.tau"]): r for r in _records(results)}
    assert len(by_point) == 4 and by_point[60.0, 0.2]["status"] == "finished", by_point
    assert by_point[60.0, 1.0e-45]["status"] == "failed" and "loss is nan" in by_point[60.0, 1.0e-45]["error"]
    for tau in (0.2, 1.0e-45):
        assert by_point[1.0e-6, tau]["status"] == "failed" and "no full batch" in by_point[1.0e-6, tau]["error"]
    assert "retrying" not in res.stdout and "failed    " in res.stdout
    assert "3 failed" in (results / "results.md").read_text()
    again = subprocess.run([sys.executable, "-m", "beray.sweep", str(f)], env=env, capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 2 and "--resume" in again.stderr  # the same name again: refused, nothing lost


def test_ctrl_c_stops_a_sweep_with_the_command_that_resumes_it_and_the_resume_finishes(ray_cluster, tiny_synth,
                                                                                         tmp_path):
    # Ctrl-C (SIGINT to the driver): Tune stops the trials and saves its state; the sweep must not then write a
    # report of the points that ran as if it had ended, and the command it prints must find the sweep again
    f = tiny_sweep(tmp_path, tiny_synth, "ctrlc", {"be.gamma": {"grid": [0.0, 0.3]}}, pack=False,
                   resources={"workers": 1, "cpus_per_worker": 0.5, "max_concurrent": 1})
    env = {**os.environ, "RAY_ADDRESS": ray_cluster["address"]}
    log = tmp_path / "out.txt"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "beray.sweep", str(f), "--set", "name=ctrl-c"], env=env,
                                stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            assert wait_for(lambda: "started   " in log.read_text(), 120), log.read_text()[-3000:]
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=120) == 130, log.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert f"interrupted; continue with: python -m beray.sweep {f} --set name=ctrl-c --resume" in text, text
    results = tmp_path / "sweeps" / "ctrl-c"
    assert "# Sweep" not in text and not (results / "results.md").exists()
    res = subprocess.run([sys.executable, "-m", "beray.sweep", str(f), "--set", "name=ctrl-c", "--resume"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert [r["status"] for r in _records(results)] == ["finished", "finished"]
    assert "2 finished" in (results / "results.md").read_text()


def test_a_resumed_sweep_s_progress_knows_what_ended_since_tune_pickled_it(tmp_path):
    import pickle

    from beray.sweep.progress import SweepProgress

    sweep = Sweep.model_validate({"name": "r", "space": {"be.gamma": {"grid": [0.0, 0.3]}}})
    (tmp_path / "trials").mkdir()
    progress = pickle.loads(pickle.dumps(SweepProgress(sweep, str(tmp_path))))  # as tuner.pkl keeps it: at the start
    for key, status in (("a/m", "failed"), ("b", "running")):
        (tmp_path / "trials" / f"{key.replace('/', '+')}.json").write_text(json.dumps(
            {"trial_id": key, "point": {"be.gamma": 0.0}, "seed": 0, "status": status}))
    assert progress.ended == {}
    progress.setup(total_num_samples=2)  # what Tune calls as a resumed run starts
    assert progress.ended == {"a/m": "failed"}


def test_optuna_search_keeps_its_study_in_sqlite(ray_cluster, tiny_synth, tmp_path, capsys):
    import optuna

    f = tiny_sweep(tmp_path, tiny_synth, "tpe", {"be.gamma": {"uniform": [0.0, 0.5]}},
                    search={"algorithm": "optuna", "samples": 2, "seed": 0})
    assert main([str(f)]) == 0, capsys.readouterr().err
    results = tmp_path / "sweeps" / "tpe"
    study = optuna.load_study(study_name="tpe", storage=f"sqlite:///{results / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    records = {round(r["point"]["be.gamma"], 6): r["objective"] for r in _records(results)}
    assert {round(t.params["be.gamma"], 6): t.value for t in study.trials} == pytest.approx(records)


def test_an_optuna_study_lives_on_the_drivers_disk_and_a_resume_reads_its_copy_back(tmp_path):
    import optuna

    from beray.sweep.optuna_search import StudyCopy, local_study

    results = str(tmp_path / "sweeps" / "tpe")
    local = local_study(results, resume=False)
    assert not local.startswith(str(tmp_path))  # on the driver's disk, not the (shared) results folder
    study = optuna.create_study(study_name="tpe", storage=f"sqlite:///{local}")
    study.add_trial(optuna.trial.create_trial(params={"g": 0.1}, distributions={"g": optuna.distributions.FloatDistribution(0, 1)}, value=0.5))
    StudyCopy(local, results).copy()
    os.remove(local)  # a new head node, a cleaned /tmp
    assert local_study(results, resume=True) == local
    assert [t.value for t in optuna.load_study(study_name="tpe", storage=f"sqlite:///{local}").trials] == [0.5]
    local_study(results, resume=False)  # a fresh sweep of that name starts without the old study
    assert not os.path.exists(local)
