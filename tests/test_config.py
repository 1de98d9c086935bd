"""One typed config: the paper's defaults, presets, YAML and --set, and errors that name the field."""

from __future__ import annotations

import pytest

from beray.config import Config, ConfigError, load_config, to_yaml


def test_defaults_are_the_papers():
    c = Config()  # Sec. 4.1
    assert (c.optim.epochs, c.optim.batch_size, c.optim.lr, c.optim.lr_step, c.optim.lr_decay) == (50, 64, 0.01, 10, 0.1)
    assert (c.optim.momentum, c.optim.weight_decay) == (0.9, 5e-4)
    assert (c.data.num_frames, c.data.stride, c.augment.size) == (16, 4, 112)
    assert (c.be.gamma, c.be.noise, c.method.beta, c.method.dim) == (0.3, "intra_frame", 1.0, 128)
    assert c.augment.rotation == 10.0 and c.method.hard_negative == "eq7"  # Eq. (7)
    assert load_config() == load_config(preset="paper") == c


def test_cpu_tiny_is_a_preset_not_the_default():
    tiny = load_config(preset="cpu-tiny")
    assert tiny.model.width < 1 and tiny.augment.size == 32 and tiny.optim.epochs == 3
    assert Config().model.width == 1.0


def test_yaml_then_set_overrides(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("preset: cpu-tiny\nbe:\n  gamma: 0.5\n  noise: fame\noptim:\n  epochs: 7\n")
    c = load_config(f, ["be.gamma=0.1", "augment.jitter=[0.1, 0.2, 0.3, 0.05]", "method.hard_negative=false"])
    assert (c.be.gamma, c.be.noise, c.optim.epochs) == (0.1, "fame", 7)
    assert c.augment.jitter == (0.1, 0.2, 0.3, 0.05) and c.method.hard_negative == "eq6"  # false: Eq. (6)
    assert c.model.width == 0.125  # from the preset
    assert load_config(f).optim.epochs == 7  # PRESETS are not mutated by earlier overrides
    round_trip = tmp_path / "again.yaml"
    round_trip.write_text(to_yaml(c))
    assert load_config(round_trip) == c


def test_a_config_saved_with_a_boolean_hard_negative_still_loads():
    from beray.config import Config

    assert Config.model_validate({"method": {"hard_negative": True}}).method.hard_negative == "eq7"  # Eq. (7)
    assert Config.model_validate({"method": {"hard_negative": False}}).method.hard_negative == "eq6"  # Eq. (6)


@pytest.mark.parametrize("override, message", [
    ("be.gamma=1.5", "be.gamma: Input should be less than or equal to 1"),
    ("be.gama=0.5", "be.gama: unknown key; allowed: noise, gamma, fg_ratio"),
    ("be.noise=salt", "be.noise: unknown noise type 'salt'; allowed: none, gaussian"),
    ("model.backbone=vgg16", "model.backbone: unknown backbone 'vgg16'; allowed: c3d"),
    ("method.name=simclr", "method.name: Input should be 'moco', 'rotnet', 'cubic_puzzle', 'cop' or 'finetune'"),
    ("method.name=finetune", "method.num_classes is required for method finetune"),
    ("method.num_classes=1", "method.num_classes: Input should be greater than or equal to 2"),
    ("optim.epochs=ten", "optim.epochs: Input should be a valid integer"),
    ("data.dataset=ucf101", "data.root is required for dataset ucf101"),
    ("data.root=/no/such/dir", "data.root /no/such/dir does not exist"),
    ("run.workers=3", "optim.batch_size (64) must be divisible by run.workers (3)"),
    ("nonsense.key=1", "nonsense: unknown key; allowed: data, augment, be, method, model, optim, run"),
    ("be.gamma", "expected KEY=VALUE"),
    ("optim.name=adam", "optim.name: Input should be 'sgd' or 'adamw'"),
    ("method.dropout=1", "method.dropout: Input should be less than 1"),
    ("method.hard_negative=none", "method.hard_negative: Input should be 'eq7', 'eq6' or 'reversed'"),
    ("data.synth.pool=4", "data.synth: unknown BackgroundBias-Synth option 'pool'; allowed: size, frames"),
    ("data.synth.camera_jitter=30", "data.synth: camera_jitter must lie in [0, size / 8 = 8] pixels, got 30"),
])
def test_bad_config_names_the_field(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[override])
    assert message in str(e.value)


def test_workers_sharing_a_gpu_are_refused_before_ray_starts():
    with pytest.raises(ConfigError, match=r"run.gpus_per_worker=0.5 with run.workers=2: .* which NCCL refuses"):
        load_config(overrides=["run.workers=2", "run.gpus_per_worker=0.5"])
    assert load_config(overrides=["run.workers=1", "run.gpus_per_worker=0.5"]).run.gpus_per_worker == 0.5


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("be: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "preset.yaml").write_text("preset: huge\n")
    with pytest.raises(ConfigError, match="preset: unknown preset 'huge'; allowed: paper, cpu-tiny"):
        load_config(tmp_path / "preset.yaml")


def test_synth_options_and_optimiser_reach_their_builders(tmp_path, monkeypatch):
    import torch

    from beray.data.datasets import index_dataset
    from beray.methods.build import build_method, make_optimizer

    monkeypatch.setenv("BERAY_CACHE", str(tmp_path))
    c = load_config(preset="cpu-tiny", overrides=["data.synth={size: 32, frames: 4, train_per_class: 1, test_per_class: 1, "
                                                  "unbiased_per_class: 2, background_pool: 2}", "optim.name=adamw"])
    index = index_dataset(c.data.dataset, c.data.root, c.data.split, c.data.synth)
    assert [len(v) for v in index.subsets.values()] == [6, 6, 6, 12]
    assert '"background_pool": 2' in (next(tmp_path.glob("synth-*")) / "synth.json").read_text()
    opt = make_optimizer(build_method(c), c)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["lr"] == c.optim.lr
    assert isinstance(make_optimizer(build_method(Config()), Config()), torch.optim.SGD)  # the paper's
    tuned = load_config(preset="cpu-synth", overrides=["method.name=finetune", "method.num_classes=6"])
    assert build_method(tuned).dropout.p == 0.0  # the preset's: dropout 0.5 keeps C3D x0.25 at chance
    assert build_method(load_config(overrides=["method.name=finetune", "method.num_classes=6"])).dropout.p == 0.5
