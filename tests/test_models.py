"""Backbones: output shapes, gradient flow, one SGD step, published parameter counts."""

import pytest
import torch
import torch.nn as nn
from torchvision.models.video import r2plus1d_18, r3d_18

from beray.models import BACKBONES, build_backbone

NAMES = ["c3d", "r3d_18", "r3d_34", "i3d", "r2plus1d_18"]
TINY = 0.125  # width of the CPU-sized variants

# f at 16 x 112 x 112: C3D ends at conv5b (4 pools: T/8, H/16); the ResNets at layer4 (T/8, H/16);
# I3D at Mixed_5c (T/8, H/32, "same" padding rounding 3.5 up to 4).
FULL_SHAPES = {
    "c3d": (512, 2, 7, 7),
    "r3d_18": (512, 2, 7, 7),
    "r3d_34": (512, 2, 7, 7),
    "i3d": (1024, 2, 4, 4),
    "r2plus1d_18": (512, 2, 7, 7),
}

FC400 = 512 * 400 + 400  # a 400-way Kinetics classifier on 512 features
# (published count, what it includes beyond our backbone, relative tolerance)
PUBLISHED = {
    # torchvision R3D_18_Weights / R2Plus1D_18_Weights meta["num_params"] (Tran et al. 2018 nets), incl. fc:
    # same architecture, so the count must match exactly.
    "r3d_18": (33_371_472, FC400, 0.0),
    "r2plus1d_18": (31_505_325, FC400, 0.0),
    # Hara et al., CVPR 2018, ResNet-34: 63.5M incl. fc. Their stem is 7x7x7 and their shortcuts are
    # parameter-free (type A); torchvision's 3x7x7 stem and 1x1 projections give 0.3% more.
    "r3d_34": (63_500_000, FC400, 0.01),
    # Carreira & Zisserman 2017, Table 1: Two-Stream I3D 25M (to the nearest million), i.e. 12.5M a
    # stream incl. its 1x1x1 logits conv (1024 -> 400 with bias).
    "i3d": (12_500_000, 1024 * 400 + 400, 0.03),
    # Tran et al. 2015: 78M quoted with fc6-fc8; the 8 convs alone are 27.7M (plus 5.5k BN params here).
    "c3d": (27_700_000, 0, 0.005),
}


def tiny_batch(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, 8, 32, 32, generator=torch.Generator().manual_seed(seed))


def first_conv(net: nn.Module) -> nn.Conv3d:
    return next(m for m in net.modules() if isinstance(m, nn.Conv3d))


def test_registry_and_unknown_name():
    assert sorted(BACKBONES) == sorted(NAMES)
    with pytest.raises(ValueError, match="unknown backbone 'vgg16'") as err:
        build_backbone("vgg16")
    assert all(name in str(err.value) for name in NAMES)
    with pytest.raises(ValueError, match="width"):
        build_backbone("c3d", width=0)


@pytest.mark.parametrize("name", NAMES)
def test_full_size_shapes_at_112(name):
    torch.manual_seed(0)
    net = build_backbone(name).eval()
    with torch.no_grad():
        f, v = net(torch.randn(1, 3, 16, 112, 112))
    assert f.shape == (1, *FULL_SHAPES[name])
    assert v.shape == (1, net.out_channels) and net.out_channels == FULL_SHAPES[name][0]
    assert torch.equal(v, f.flatten(2).max(dim=2).values)


@pytest.mark.parametrize("name", NAMES)
def test_tiny_variant_shapes_and_size(name):
    torch.manual_seed(0)
    net = build_backbone(name, width=TINY)
    f, v = net(tiny_batch())
    c = 128 if name == "i3d" else 64  # 1024 / 8, 512 / 8
    assert net.out_channels == c and f.shape[:2] == (2, c) and f.shape[2:].numel() >= 1
    assert v.shape == (2, c) and torch.equal(v, f.flatten(2).max(dim=2).values)
    assert sum(p.numel() for p in net.parameters()) < 1_100_000  # ~1/64 of the full net


@pytest.mark.parametrize("name", NAMES)
def test_gradient_reaches_first_conv(name):
    torch.manual_seed(0)
    net = build_backbone(name, width=TINY)
    _, v = net(tiny_batch())
    v.square().mean().backward()
    grad = first_conv(net).weight.grad
    assert grad is not None and torch.isfinite(grad).all()
    assert grad.abs().sum() > 0 and (grad != 0).float().mean() > 0.5


@pytest.mark.parametrize("name", NAMES)
def test_one_sgd_step_lowers_loss(name):
    """A step sized to lower the loss by 1% to first order (lr = 0.01 * L / |g|^2) does so within 20%.

    64 px, not 32: at 32 px I3D's last map is 1x1x1 and its final BNs normalise 2 numbers a channel.
    """
    torch.manual_seed(0)
    net = build_backbone(name, width=TINY)
    x = torch.randn(2, 3, 8, 64, 64, generator=torch.Generator().manual_seed(0))
    target = torch.randn(2, net.out_channels, generator=torch.Generator().manual_seed(1))
    loss = lambda: (net(x)[1] - target).square().mean()  # noqa: E731
    before = loss()
    before.backward()
    g2 = sum(p.grad.square().sum() for p in net.parameters()).item()
    torch.optim.SGD(net.parameters(), lr=0.01 * before.item() / g2).step()
    with torch.no_grad():
        after = loss()
    assert after < before
    assert 0.8 < (before - after).item() / (0.01 * before.item()) < 1.2


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_matches_published(name):
    with torch.device("meta"):
        net = build_backbone(name)
    ours = sum(p.numel() for p in net.parameters())
    published, head, tol = PUBLISHED[name]
    assert abs(ours - (published - head)) <= tol * published, (ours, published - head)


@pytest.mark.parametrize("name, reference", [("r3d_18", r3d_18), ("r2plus1d_18", r2plus1d_18)])
def test_width_one_is_torchvision_net(name, reference):
    """At width 1 the ResNets are torchvision's nets minus avgpool/fc: same state dict, same f."""
    torch.manual_seed(0)
    ref, net = reference().eval(), build_backbone(name).eval()
    state = {k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")}
    net.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 8, 32, 32)
    with torch.no_grad():
        f_ref = ref.layer4(ref.layer3(ref.layer2(ref.layer1(ref.stem(x)))))
        f, _ = net(x)
    torch.testing.assert_close(f, f_ref, rtol=0, atol=0)
