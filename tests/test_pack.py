"""Packs: several members trained by one Ray Train job on one decoded stream, each as its solo run would be."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_overrides

from beray.config import ConfigError, load_config
from beray.train.checkpoint import STATE_FILE, CheckpointError, carry_state, find_state
from beray.train.launch import fit
from beray.train.pack import make_pack, member_name, parse_member

NONE, BE = ["be.noise=none"], ["be.noise=intra_frame", "be.gamma=0.5"]
# Eq. (6) ignores the x_h that the stream carries for the others; reversed makes its own from x_o
EQ6, REVERSED = [*NONE, "method.hard_negative=eq6"], [*BE, "method.hard_negative=reversed"]
FAILING = ["method.tau=1e-45"]  # logits / tau overflow to inf: the loss is NaN at the first step


def _cfg(tiny_synth, storage, name, epochs, extra=()):
    overrides = tiny_overrides(tiny_synth, storage, name, epochs) + [
        "run.workers=1", "run.cpus_per_worker=1", "run.images_every=0", *extra]
    return load_config(None, overrides, preset="cpu-tiny")


def _losses(history, member=None) -> list[float]:
    return [(h["members"][member] if member else h)["loss"] for h in history]


def test_a_pack_trains_each_member_as_its_solo_run_resumes_all_and_outlives_a_failing_one(
        ray_cluster, tiny_synth, tmp_path):
    members = [EQ6, REVERSED, FAILING]
    first = fit(_cfg(tiny_synth, tmp_path, "pack", 1), members=members)  # stopped after epoch 1 ...
    last = fit(_cfg(tiny_synth, tmp_path, "pack", 2), members=members)  # ... and resumed for epoch 2
    history = first.metrics["history"] + last.metrics["history"]
    assert [h["epoch"] for h in history] == [1, 2] and last.metrics["history"][0]["resumed_from_epoch"] == 1
    failing = member_name(FAILING)
    for h in history:  # failed at its first step, reported with why, and never trained again
        assert failing not in h["members"] and "loss is nan" in h["failed"][failing]
    for overrides in (EQ6, REVERSED):
        solo = fit(_cfg(tiny_synth, tmp_path, f"solo-{member_name(overrides)}", 2, overrides))
        # the same seed, the same stream, the same draws: the same losses to every digit
        assert _losses(history, member_name(overrides)) == _losses(solo.metrics["history"])
        # ... from one decoding of each clip for all three members: as many as one run decodes
        assert first.metrics["decode_clips"] + last.metrics["decode_clips"] == solo.metrics["decode_clips"] == 24
    folder = tmp_path / "pack" / member_name(REVERSED)
    assert load_config(folder / "config.yaml").be.gamma == 0.5
    state = Path(find_state(folder))  # a member's folder reads as a run's: its last checkpoint
    assert state.parent.name == member_name(REVERSED) and Path(last.checkpoint) == state.parent.parent
    assert json.loads((state.parent.parent / "pack.json").read_text())["failed"].keys() == {failing}
    with pytest.raises(CheckpointError, match=r"failed before its first checkpoint \(loss is nan at epoch 1"):
        find_state(tmp_path / "pack" / failing)  # it never had a good state


def test_a_failed_members_last_good_state_is_carried_into_the_next_checkpoint(tmp_path):
    import ray.train

    (tmp_path / "old" / "a").mkdir(parents=True)
    (tmp_path / "old" / "a" / STATE_FILE).write_bytes(b"epoch 3's state")
    previous = ray.train.Checkpoint.from_directory(str(tmp_path / "old"))
    assert carry_state(previous, "a", tmp_path / "new") and not carry_state(previous, "b", tmp_path / "new")
    assert (tmp_path / "new" / "a" / STATE_FILE).read_bytes() == b"epoch 3's state"
    assert not (tmp_path / "new" / "b").exists()


def test_members_that_would_change_the_shared_stream_are_refused_naming_the_setting(tiny_synth, tmp_path):
    cfg = _cfg(tiny_synth, tmp_path, "refused", 1)
    assert parse_member("be.noise=none, be.gamma=0.5") == ["be.noise=none", "be.gamma=0.5"]
    assert [m.name for m in make_pack(cfg, [NONE, BE])] == ["noise-none", "noise-intra_frame_gamma-0.5"]
    for bad, field in ((["data.num_frames=8"], "data.num_frames"), (["optim.batch_size=8"], "optim.batch_size"),
                       (["run.seed=3"], "run.seed"), (["method.name=rotnet"], "views"),
                       (["be.gamma=7"], "be.gamma")):
        with pytest.raises(ConfigError, match=field):
            make_pack(cfg, [NONE, bad])
    with pytest.raises(ConfigError, match="given twice"):
        make_pack(cfg, [NONE, NONE])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_member("intra_frame")


def test_a_run_config_lists_its_members_and_the_command_line_replaces_them(tmp_path):
    from beray.train.__main__ import parse

    f = tmp_path / "pack.yaml"
    f.write_text("preset: cpu-tiny\nmembers:\n  - {be.noise: none}\n  - {be: {noise: intra_frame, gamma: 0.5}}\n")
    assert parse([str(f)])[3] == [NONE, BE]
    assert parse([str(f), "--member", "be.gamma=0.1", "--member", "be.gamma=0.2"])[3] == [["be.gamma=0.1"],
                                                                                           ["be.gamma=0.2"]]
    f.write_text("members: {be.noise: none}\n")
    with pytest.raises(ConfigError, match="members: expected a list"):
        parse([str(f)])
