"""MoCo with Background Erasing positives and hard negatives: Eq. (6) and (7).

Shaped after MoCo's reference ``builder.py``: a query encoder, a momentum key
encoder, a queue of keys, batch-shuffle BN across ranks. BE changes what the
positive is and adds one negative:

- query  z_o = phi(f(x_o))            (query encoder, with gradients)
- positive z_d = phi(f(x_d))          (key encoder; x_d = BE(x_v), Eq. 1)
- negatives: the queue (other videos, N1 of Eq. 6) and, for Eq. (7), one hard
  negative per video, z_h = phi(f(x_h)), x_h another clip of the same video with
  augmentation a^1, through the key encoder (N2). Eq. (7) asks x_h != x_o: where a
  video holds no clip distinct from x_o (``h_valid`` False), its hard-negative logit
  is left out (-inf), and that sample's term is Eq. (6).

Eq. (7) is symmetric in z_o and z_d and the paper does not say which encoder sees
which view. ``distracted_query`` swaps them as the authors' code does (FingerRec/BE
``pt.py``, ``train_be``): x_d through the query encoder (with gradients), x_o the key
(and what is enqueued), x_h through the query encoder too, so that the trained
encoder itself sees the distracting video.

phi is spatio-temporal max pooling (done by the backbone) and a fully connected
layer to D = 128, L2-normalised. The paper does not give the temperature, the
queue size or the momentum: the defaults are MoCo v1's tau = 0.07 and m = 0.999,
with a 16384-key queue (MoCo's 65536 would hold several keys of each video of a
UCF101-size dataset).
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from beray.batch import Views


class Projection(nn.Module):
    """phi: the backbone's max-pooled vector -> FC to ``dim`` -> L2-normalised z."""

    def __init__(self, backbone: nn.Module, dim: int = 128):
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(backbone.out_channels, dim)

    def forward(self, x: Tensor) -> Tensor:
        _, v = self.backbone(x)
        return F.normalize(self.fc(v), dim=1)


class MoCoBE(nn.Module):
    """MoCo + BE. ``logits(x_o, x_d, x_h, h_valid)`` gives logits (B, 1 [+ 1] + K) and labels
    (all 0), whose cross-entropy is Eq. (7) with temperature ``tau``; ``forward`` returns that loss.
    ``hard_negative`` chooses the negative terms: ``eq7`` (N2 is ``x_h``, another clip of the video;
    Eq. 6 where it is None), ``eq6`` (Eq. 6) or ``reversed`` (N2 is x_o played backwards, a positive
    control: only the direction of motion tells it from x_o).
    """

    inputs = ("x_o", "x_d", "x_h", "h_valid")  # what ``forward`` takes from a batch

    @classmethod
    def views_for(cls, **_) -> Views:
        """x_o, x_v and x_h, whatever the hard negative: every MoCo run reads one stream, so that runs
        that differ in it train side by side in a pack (``eq6`` and ``reversed`` leave x_h unused)."""
        return Views(hard_negative=True)

    def __init__(self, backbone: nn.Module, dim: int = 128, queue_size: int = 16384, momentum: float = 0.999,
                 tau: float = 0.07, hard_negative: str = "eq7", distracted_query: bool = False,
                 shuffle_bn: bool = True):
        super().__init__()
        self.queue_size, self.momentum, self.tau = queue_size, momentum, tau
        self.hard_negative, self.distracted_query, self.shuffle_bn = hard_negative, distracted_query, shuffle_bn
        self.encoder_q = Projection(backbone, dim)
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for p in self.encoder_k.parameters():
            p.requires_grad = False
        self.register_buffer("queue", F.normalize(torch.randn(dim, queue_size), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def _momentum_update_key_encoder(self) -> None:
        """theta_k <- m * theta_k + (1 - m) * theta_q."""
        for p_q, p_k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            p_k.mul_(self.momentum).add_(p_q.detach(), alpha=1.0 - self.momentum)

    @torch.no_grad()
    def _dequeue_and_enqueue(self, keys: Tensor) -> None:
        """Write the keys of every rank (gathered, in rank order) over the oldest ones."""
        keys = concat_all_gather(keys)
        n, ptr = keys.shape[0], int(self.queue_ptr)
        slots = (ptr + torch.arange(n, device=keys.device)) % self.queue_size
        self.queue[:, slots] = keys.T.to(self.queue.dtype)
        self.queue_ptr[0] = (ptr + n) % self.queue_size

    @torch.no_grad()
    def _keys(self, x: Tensor) -> Tensor:
        """Key-encoder embeddings, BN statistics decorrelated from the query's by a
        shuffle of the global batch across ranks (a no-op in one process)."""
        if not (self.shuffle_bn and _world_size() > 1):
            return self.encoder_k(x)
        x, idx_unshuffle = _batch_shuffle_ddp(x)
        return _batch_unshuffle_ddp(self.encoder_k(x), idx_unshuffle)

    def hard_negative_clip(self, x_o: Tensor, x_h: Tensor | None, h_valid: Tensor | None
                           ) -> tuple[Tensor | None, Tensor | None]:
        """N2's clip and its mask as ``hard_negative`` chooses them: (None, None) for Eq. 6; x_o (B, C, T, H, W)
        reversed in time for ``reversed``, never masked."""
        if self.hard_negative == "eq6" or (self.hard_negative == "eq7" and x_h is None):
            return None, None
        if self.hard_negative == "reversed":
            return x_o.flip(2), None
        return x_h, h_valid

    def logits(self, x_o: Tensor, x_d: Tensor, x_h: Tensor | None = None,
               h_valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Logits [z_o.z_d, (z_o.z_h), z_o.queue] / tau and labels; ``h_valid`` (B,) bool masks x_h.
        The query is z_o (z_d with ``distracted_query``), the key the other one."""
        x_q, x_k = (x_d, x_o) if self.distracted_query else (x_o, x_d)
        x_h, h_valid = self.hard_negative_clip(x_o, x_h, h_valid)
        use_h = x_h is not None
        q = self.encoder_q(x_q)
        h = self.encoder_q(x_h) if use_h and self.distracted_query else None
        with torch.no_grad():
            self._momentum_update_key_encoder()
            k = self._keys(x_k)
            if use_h and not self.distracted_query:
                h = self._keys(x_h)
        l_pos = (q * k).sum(dim=1, keepdim=True)  # z_o . z_d
        l_neg = q @ self.queue.clone().detach().to(q.dtype)  # N1: the queue
        parts = [l_pos, l_neg]
        if h is not None:  # N2: one hard negative, left out where it is not distinct from x_o
            l_hard = (q * h).sum(dim=1, keepdim=True)
            if h_valid is not None:
                l_hard = l_hard.masked_fill(~h_valid.view(-1, 1).to(torch.bool), float("-inf"))
            parts.insert(1, l_hard)
        logits = torch.cat(parts, dim=1) / self.tau
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        self._dequeue_and_enqueue(k)
        return logits, labels

    def forward(self, x_o: Tensor, x_d: Tensor, x_h: Tensor | None = None,
                h_valid: Tensor | None = None) -> dict[str, Tensor]:
        """Eq. (7): ``loss`` to minimise, ``acc`` (the positive ranked first, detached) and, with
        ``h_valid``, ``hard_negative_masked``: how many samples of the batch had no hard negative."""
        logits, labels = self.logits(x_o, x_d, x_h, h_valid)
        out = {"loss": F.cross_entropy(logits, labels), "acc": (logits.detach().argmax(1) == labels).float().mean()}
        if h_valid is not None and x_h is not None and self.hard_negative == "eq7":
            out["hard_negative_masked"] = (~h_valid.to(torch.bool)).sum().float()
        return out


# -- distributed helpers (MoCo's, made device-agnostic so gloo on CPU runs them) ------------


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@torch.no_grad()
def concat_all_gather(x: Tensor) -> Tensor:
    """``x`` of every rank, concatenated in rank order (no gradient flows through)."""
    if _world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


@torch.no_grad()
def _batch_shuffle_ddp(x: Tensor) -> tuple[Tensor, Tensor]:
    """Shuffle the global batch (equal per-rank batches); returns this rank's part and the unshuffle index."""
    b = x.shape[0]
    x_all = concat_all_gather(x)
    idx_shuffle = torch.randperm(x_all.shape[0], device=x.device)
    dist.broadcast(idx_shuffle, src=0)
    idx_unshuffle = torch.argsort(idx_shuffle)
    rank = dist.get_rank()
    return x_all[idx_shuffle.view(-1, b)[rank]], idx_unshuffle


@torch.no_grad()
def _batch_unshuffle_ddp(x: Tensor, idx_unshuffle: Tensor) -> Tensor:
    b = x.shape[0]
    x_all = concat_all_gather(x)
    return x_all[idx_unshuffle.view(-1, b)[dist.get_rank()]]
