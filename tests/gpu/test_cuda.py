"""The GPU path, where CUDA is present: BE on the device, AMP steps, and short Ray Train runs
whose batches arrive on CUDA (images, metrics and checkpoints must leave the device)."""

from __future__ import annotations

import pytest
import torch

from beray.augment.be import NOISES, distract
from beray.config import load_config
from beray.methods.build import build_method, make_optimizer, train_step
from beray.train.launch import fit
from beray.train.monitor import Monitor
from tbevents import read_events

CUDA = torch.device("cuda")


@pytest.mark.parametrize("noise", list(NOISES))
def test_every_noise_on_cuda_matches_the_cpu(noise):
    x = torch.randint(0, 256, (4, 8, 3, 32, 32), dtype=torch.uint8)
    cpu = distract(x, noise, 0.3, torch.Generator().manual_seed(1), layout="BTCHW")
    gpu = distract(x.to(CUDA), noise, 0.3, torch.Generator().manual_seed(1), layout="BTCHW")
    assert gpu.device.type == "cuda" and gpu.dtype == torch.uint8
    assert (gpu.cpu().int() - cpu.int()).abs().max() <= 1  # float rounding may differ by one grey level


@pytest.mark.parametrize("method", ["moco", "rotnet"])
def test_amp_steps_on_cuda_are_finite_and_move_the_weights(method):
    cfg = load_config(None, [f"method.name={method}", "optim.amp=true", "optim.batch_size=4",
                             "data.num_frames=8"], preset="cpu-tiny")
    torch.manual_seed(0)
    model = build_method(cfg).to(CUDA).train()
    optimizer = make_optimizer(model, cfg)
    scaler = torch.amp.GradScaler("cuda")
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    batch = {k: torch.randint(0, 256, (4, 8, 3, 32, 32), dtype=torch.uint8, device=CUDA) for k in ("x_o", "x_d")}
    if method == "moco":
        batch.update(x_h=batch["x_o"].flip(1), h_valid=torch.tensor([True, True, False, True], device=CUDA))
    for _ in range(3):
        out = train_step(model, optimizer, scaler, batch, CUDA, amp=True)
        assert torch.isfinite(out["loss"]).item()
    assert scaler.get_scale() > 0
    after = [p.detach() for p in model.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(before, after))


def test_monitor_images_take_cuda_batches(tmp_path):
    monitor = Monitor(str(tmp_path), "gpu-images", rank=0, epochs=1, log_every=1)
    clip = torch.randint(0, 256, (2, 8, 3, 16, 16), dtype=torch.uint8, device=CUDA)
    monitor.images(0, {"x_o": clip, "x_d": clip})
    monitor.close()
    assert {"clips/x_o", "clips/x_d"} <= set(read_events(tmp_path))


@pytest.mark.parametrize("method", ["moco", "rotnet"])
def test_two_step_training_on_a_gpu_worker(ray_cluster, tiny_synth, tmp_path, overrides, method):
    name = f"gpu-{method}"
    cfg = load_config(None, overrides(tiny_synth, tmp_path, name, epochs=1) + [
        f"method.name={method}", "run.workers=1", "run.gpus_per_worker=1", "run.cpus_per_worker=1",
        "run.max_steps_per_epoch=2", "run.images_every=1", "optim.amp=true"], preset="cpu-tiny")
    info = fit(cfg, name)
    assert info.metrics["steps"] == 2 and info.metrics["loss"] > 0
    state = torch.load(f"{info.checkpoint}/state.pt", map_location="cpu", weights_only=True)
    assert "cuda" not in state["rng"] and state["scaler"]["scale"] > 0  # each epoch reseeds every device
    events = read_events(tmp_path / name / "tensorboard")
    assert "clips/x_o" in events and len(events["train/loss"]) == 2


def test_a_cpu_checkpoint_resumes_with_an_enabled_scaler(tmp_path):
    from torch import nn

    from beray.train.checkpoint import load_state, save_state

    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 10)
    save_state(tmp_path, model, opt, sched, torch.amp.GradScaler("cuda", enabled=False), 4, {})
    scaler = torch.amp.GradScaler("cuda", init_scale=1024.0, enabled=True)  # now on a GPU with AMP
    assert load_state(tmp_path, model, opt, sched, scaler)["epoch"] == 4
    assert scaler.get_scale() == 1024.0  # left as it starts, not loaded from {}


@pytest.mark.parametrize("head", ["pooled", "map", "logits"])
def test_feature_model_on_cuda_matches_the_cpu(head):
    """The extraction actor runs on CUDA with float16 autocast and hands back float32 NumPy."""
    import numpy as np

    from beray.eval.extract import FeatureModel

    name = "finetune" if head == "logits" else "moco"
    cfg = load_config(None, [f"method.name={name}", "method.num_classes=6"], preset="cpu-tiny")
    torch.manual_seed(0)
    net = build_method(cfg)
    weights = net.state_dict() if head == "logits" else net.encoder_q.backbone.state_dict()
    batch = {"x": np.random.default_rng(0).integers(0, 256, (4, 8, 3, 32, 32), dtype=np.uint8),
             "video": np.arange(4)}
    gpu = FeatureModel(cfg.model_dump(mode="json"), weights, head, (2, 7, 7), 1)
    assert gpu.device.type == "cuda"
    out_gpu = gpu(dict(batch))["feature"]
    out_cpu = FeatureModel(cfg.model_dump(mode="json"), weights, head, (2, 7, 7), 1, "cpu")(dict(batch))["feature"]
    assert out_gpu.dtype == np.float32 and out_gpu.shape == out_cpu.shape
    assert np.allclose(out_gpu, out_cpu, atol=0.05, rtol=0.05)  # float16 autocast
