"""MoCo + BE, Eq. (6)/(7): hand-checked logits and loss, momentum, queue, and two gloo ranks."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from beray.methods.moco import MoCoBE


class Identity2(nn.Module):
    """A 'backbone' whose feature map is its input (B, 2, 1, 1, 1): z can be set by hand."""

    out_channels = 2

    def forward(self, x):
        return x, x.flatten(1)


class TinyConv(nn.Module):
    """No BatchNorm: keys do not depend on how the batch is split or shuffled."""

    out_channels = 4

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(3, 4, 3, padding=1)

    def forward(self, x):
        f = torch.relu(self.conv(x))
        return f, f.amax(dim=(2, 3, 4))


def _hand_model(hard_negative="eq7"):
    model = MoCoBE(Identity2(), dim=2, queue_size=3, momentum=0.5, tau=0.5, hard_negative=hard_negative)
    with torch.no_grad():
        for enc in (model.encoder_q, model.encoder_k):
            enc.fc.weight.copy_(torch.eye(2))
            enc.fc.bias.zero_()
        model.queue.copy_(torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0]]))  # keys (1,0), (0,1), (-1,0)
    return model


def _vec(a, b):
    return torch.tensor([[a, b]]).view(1, 2, 1, 1, 1)


def test_logits_labels_and_loss_by_hand():
    model = _hand_model()
    # z_o = (1, 0); z_d = (3, 4) / 5; hard negative z_h = (0, 1)
    logits, labels = model.logits(_vec(2.0, 0.0), _vec(3.0, 4.0), _vec(0.0, 7.0))
    # [z_o.z_d, z_o.z_h, z_o.queue...] / tau = [0.6, 0, 1, 0, -1] / 0.5
    assert torch.allclose(logits, torch.tensor([[1.2, 0.0, 2.0, 0.0, -2.0]]))
    assert labels.tolist() == [0]
    loss = F.cross_entropy(logits, labels)
    by_hand = -math.log(math.exp(1.2) / (math.exp(1.2) + 1 + math.exp(2) + 1 + math.exp(-2)))
    assert loss.item() == pytest.approx(by_hand, rel=1e-6)


def test_hard_negative_is_in_the_denominator():
    with_h, _ = _hand_model("eq7").logits(_vec(2.0, 0.0), _vec(3.0, 4.0), _vec(0.0, 7.0))
    without, _ = _hand_model("eq6").logits(_vec(2.0, 0.0), _vec(3.0, 4.0), _vec(0.0, 7.0))  # Eq. (6)
    assert without.shape == (1, 4) and with_h.shape == (1, 5)
    assert torch.allclose(without, with_h[:, [0, 2, 3, 4]])
    labels = torch.zeros(1, dtype=torch.long)
    # the extra exp(z_o . z_h / tau) = e^0 term makes Eq. (7)'s loss larger
    assert F.cross_entropy(with_h, labels) > F.cross_entropy(without, labels)


def test_a_hard_negative_that_is_not_distinct_is_left_out():
    """h_valid False (x_h would be x_o itself): that sample's term is Eq. (6); the other keeps Eq. (7)."""
    x_o = torch.cat([_vec(2.0, 0.0), _vec(0.0, 2.0)])
    x_d = torch.cat([_vec(3.0, 4.0), _vec(4.0, 3.0)])
    x_h = torch.cat([_vec(2.0, 0.0), _vec(1.0, 0.0)])  # sample 0's x_h is its x_o
    h_valid = torch.tensor([False, True])
    model = _hand_model("eq7")
    out = model(x_o, x_d, x_h, h_valid)
    eq6 = F.cross_entropy(_hand_model("eq6").logits(x_o, x_d)[0], torch.zeros(2, dtype=torch.long), reduction="none")
    eq7 = F.cross_entropy(_hand_model("eq7").logits(x_o, x_d, x_h)[0], torch.zeros(2, dtype=torch.long),
                          reduction="none")
    assert out["loss"].item() == pytest.approx((eq6[0] + eq7[1]).item() / 2, rel=1e-6)
    assert eq7[0] > eq6[0]  # unmasked, x_o's own copy would have pushed the loss up
    assert out["hard_negative_masked"].item() == 1.0
    assert torch.isfinite(out["loss"])
    out["loss"].backward()  # a -inf logit gives a zero, not a NaN, gradient
    grad = model.encoder_q.fc.weight.grad
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_the_reversed_hard_negative_is_x_o_backwards_in_time_whatever_the_pipeline_shipped():
    import copy

    torch.manual_seed(0)
    b, t = 2, 5
    x_o, x_d, x_h = (torch.rand(b, 3, t, 6, 6) for _ in range(3))  # (B, C, T, H, W), x_o after a^1
    nobody = torch.zeros(b, dtype=torch.bool)  # the pipeline found no distinct clip: ignored here
    reversed_ = MoCoBE(TinyConv(), dim=3, queue_size=8, hard_negative="reversed")
    clip, off = copy.deepcopy(reversed_), copy.deepcopy(reversed_)
    clip.hard_negative, off.hard_negative = "eq7", "eq6"
    h, valid = reversed_.hard_negative_clip(x_o, x_h, nobody)
    assert valid is None and all(torch.equal(h[:, :, i], x_o[:, :, t - 1 - i]) for i in range(t))
    logits, _ = reversed_.logits(x_o, x_d, x_h, nobody)
    by_hand, _ = clip.logits(x_o, x_d, x_o.flip(2))  # Eq. (7) with x_o's reverse as x_h
    assert logits.shape == (b, 2 + 8) and torch.allclose(logits, by_hand)
    assert torch.allclose(off.logits(x_o, x_d, x_h, nobody)[0], logits[:, [0, *range(2, 10)]])  # Eq. (6): no N2
    assert "hard_negative_masked" not in reversed_(x_o, x_d, x_h, nobody)  # nothing left out


def test_momentum_update():
    model = MoCoBE(TinyConv(), dim=3, queue_size=8, momentum=0.9)
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.fill_(1.0)
        for p in model.encoder_k.parameters():
            p.fill_(0.0)
    model._momentum_update_key_encoder()
    assert all(torch.allclose(p, torch.full_like(p, 0.1)) for p in model.encoder_k.parameters())
    assert all(not p.requires_grad for p in model.encoder_k.parameters())


def test_queue_pointer_wraps_and_keeps_the_newest_keys():
    torch.manual_seed(0)
    model = MoCoBE(TinyConv(), dim=3, queue_size=5)
    keys = [F.normalize(torch.randn(2, 3), dim=1) for _ in range(3)]
    ptrs = []
    for k in keys:
        model._dequeue_and_enqueue(k)
        ptrs.append(int(model.queue_ptr))
    assert ptrs == [2, 4, 1]
    # slots 0..4 now hold: k3[1], k1[1], k2[0], k2[1], k3[0]  (k1[0] was overwritten by k3[1])
    expected = torch.stack([keys[2][1], keys[0][1], keys[1][0], keys[1][1], keys[2][0]], dim=1)
    assert torch.allclose(model.queue, expected)


def test_gradients_flow_to_the_query_encoder_only():
    torch.manual_seed(0)
    model = MoCoBE(TinyConv(), dim=3, queue_size=8)
    x = torch.rand(2, 3, 4, 8, 8)
    model(x, x.flip(-1), x.flip(-2))["loss"].backward()
    assert model.encoder_q.backbone.conv.weight.grad.abs().sum() > 0
    assert model.encoder_k.backbone.conv.weight.grad is None


def test_a_distracted_query_sends_x_d_and_x_h_through_the_query_encoder_and_enqueues_x_o():
    model = _hand_model()
    model.distracted_query = True
    x_o, x_d, x_h = _vec(2.0, 0.0), _vec(3.0, 4.0), _vec(0.0, 7.0)
    for x in (x_o, x_d, x_h):
        x.requires_grad_(True)
    logits, _ = model.logits(x_o, x_d, x_h)
    # the positive z_o . z_d is the same; the hard negative and the queue now meet z_d = (0.6, 0.8), not z_o
    assert torch.allclose(logits, torch.tensor([[1.2, 1.6, 1.2, 1.6, -1.2]]))
    logits[0, 0].backward(retain_graph=True)
    assert x_o.grad is None and x_d.grad.abs().sum() > 0  # the gradient reaches x_d, not the key x_o
    logits[0, 1].backward()
    assert x_h.grad.abs().sum() > 0  # the hard negative is the query encoder's too (as in the authors' code)
    assert torch.allclose(model.queue[:, 0], torch.tensor([1.0, 0.0]))  # z_o enqueued (over the oldest slot)
    unswapped = _hand_model()
    unswapped.logits(x_o.detach(), x_d.detach(), x_h.detach())
    assert torch.allclose(unswapped.queue[:, 0], torch.tensor([0.6, 0.8]))  # by default z_d is the key


def _rank(rank: int, world: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(100 + rank)  # different initial weights and queues: DDP must broadcast rank 0's
    model = nn.parallel.DistributedDataParallel(MoCoBE(TinyConv(), dim=3, queue_size=16))
    x_o, x_d, x_h = (torch.rand(2, 3, 4, 8, 8) for _ in range(3))
    model(x_o, x_d, x_h)["loss"].backward()
    m = model.module
    with torch.no_grad():
        own_keys = m.encoder_k(x_d)  # the key encoder has not moved since forward
    queues = [torch.empty_like(m.queue) for _ in range(world)]
    keys = [torch.empty_like(own_keys) for _ in range(world)]
    dist.all_gather(queues, m.queue)
    dist.all_gather(keys, own_keys)
    if rank == 0:
        torch.save({"queues": queues, "keys": keys, "ptr": int(m.queue_ptr)}, out)
    del model
    dist.barrier()  # leave together: a rank tearing down gloo while its peer still talks aborts
    dist.destroy_process_group()


@pytest.mark.ray
def test_two_gloo_ranks_share_one_queue_with_both_ranks_keys(tmp_path):
    out = str(tmp_path / "result.pt")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_rank, args=(2, str(tmp_path / "init"), out), nprocs=2, join=True)
    res = torch.load(out)
    q0, q1 = res["queues"]
    assert torch.equal(q0, q1)  # identical on every rank
    assert res["ptr"] == 4
    # slots 0-3 hold rank 0's two keys then rank 1's two keys (batch-shuffled and unshuffled back)
    assert torch.allclose(q0[:, :4], torch.cat(res["keys"]).T, atol=1e-6)
