"""Handcrafted pretext tasks with the BE consistency term: Eq. (3)-(5) of the paper.

Each task wraps a backbone ``f, v = backbone(x)`` (``f``: (B, C, T', H', W') feature
map, ``v``: (B, C) its max over (T', H', W'), ``backbone.out_channels == C``) and a head:

    rotnet        3D RotNet (Jing & Tian 2018): 4 spatial rotations, 4-way.
    cubic_puzzle  Space-Time Cubic Puzzles (Kim et al. 2019): 4 pieces, 4! = 24-way.
    cop           Clip Order Prediction (VCOP, Xu et al. 2019): 3 clips, 3! = 6-way.

Calling a task is Eq. (5), ``L = L_p + beta * L_be``; ``forward`` computes it (not a side
method) so DDP, and so Ray Train's ``prepare_model``, sees one forward per step.

Eq. (3), L_p. The paper averages the cross-entropy over all M = |R| transformations
r(x) of each clip (its leading minus sign is a typo: L_ce is already a negative
log-likelihood). Here each sample gets ONE r drawn uniformly from R and L_p is the
usual mean cross-entropy over the batch: an unbiased estimate of Eq. (3) at 1/M of its
cost. ``RotNet(all_transforms=True)`` applies every r in R to every clip and matches
Eq. (3) literally. Permutation labels: label k names row k of ``permutations(n)``
(lexicographic ``itertools.permutations``), and position i of the shuffled sequence
holds original piece/clip ``perm[i]``, so ``shuffled[:, argsort(perm)]`` undoes it.

Eq. (4), L_be. ``psi`` is spatial global max pooling, (B, C, T', H', W') -> (B, C, T');
``L_be`` is the squared difference of ``psi(f_o)`` and ``psi(f_d)``, averaged over C x T' and
the batch (for COP, the B x 3 clip pairs); ``be_loss(..., reduction="sum")`` is the literal
squared norm (see ``be_loss``). ``f_o`` and ``f_d`` are the backbone feature
maps of the UN-transformed clips ``x_o`` and ``x_d``, as in Fig. 2, where both enter the
backbone as they are, and Eq. (4), written on f_{x^o}, not on f_{r(x^o)}: r carries the
pretext label, and pulling r(x_o) towards an x_d rotated differently would penalise the
very information the pretext asks for. ``x_o`` and ``x_d`` go through the backbone in one
call, so BatchNorm normalises both with the same batch statistics. Separate calls
would let BN absorb part of BE's global shift (the lam-weighted static frame of Eq. 1)
and hide the difference Eq. (4) is meant to penalise. Cost: one extra backbone pass
over ``x_o`` for RotNet and puzzles. COP does not need it: it only reorders clips and
never alters them, and batch statistics do not depend on order. So COP runs the
backbone once over [clips of x_o, clips of x_d] and applies the order to the pooled
features.
"""

from __future__ import annotations

import abc
import functools
import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from beray.batch import Views

__all__ = [
    "PRETEXTS", "Pretext", "RotNet", "CubicPuzzle", "ClipOrder", "build_pretext",
    "psi", "be_loss", "permutations", "sample_labels", "permute",
    "rotate", "rotnet_inputs", "cut_pieces", "cubic_puzzle_inputs", "cop_inputs",
]


# -- Eq. (4) ----------------------------------------------------------------------------

def psi(f: Tensor) -> Tensor:
    """Eq. (4)'s psi: spatial global max pooling, (B, C, T, H, W) -> (B, C, T)."""
    return f.amax(dim=(-2, -1))


def be_loss(f_o: Tensor, f_d: Tensor, reduction: str = "mean") -> Tensor:
    """Eq. (4): ``L_be = ||psi(f_o) - psi(f_d)||^2``, exactly 0 when f_o == f_d.

    ``reduction="mean"`` (default) averages the squared difference over C x T' and
    the batch, as ``nn.MSELoss`` does in BE implementations; the literal squared
    norm (``"sum"``: summed over C x T', averaged over the batch) is C x T' times
    larger (about 100x the pretext loss for a 512-channel backbone) and would
    drown L_p at the paper's beta = 1.
    """
    if f_o.shape != f_d.shape:
        raise ValueError(f"f_o and f_d differ in shape: {tuple(f_o.shape)} vs {tuple(f_d.shape)}")
    sq = (psi(f_o) - psi(f_d)).pow(2).flatten(1)
    if reduction == "mean":
        return sq.mean()
    if reduction == "sum":
        return sq.sum(1).mean()
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


# -- transformations and their labels ---------------------------------------------------

@functools.lru_cache(maxsize=None)
def _perms(n: int) -> Tensor:
    return torch.tensor(list(itertools.permutations(range(n))), dtype=torch.long)


def permutations(n: int) -> Tensor:
    """All n! permutations of range(n), lexicographic, (n!, n) long: label k names row k."""
    return _perms(n).clone()


def sample_labels(n: int, num_classes: int, device: torch.device | str,
                  generator: torch.Generator | None = None) -> Tensor:
    """``n`` labels drawn uniformly from [0, num_classes), from ``generator`` or torch's global RNG."""
    where = generator.device if generator is not None else device
    return torch.randint(num_classes, (n,), generator=generator, device=where).to(device)


def _labels(x: Tensor, num_classes: int, generator: torch.Generator | None, labels: Tensor | None) -> Tensor:
    if labels is None:
        return sample_labels(x.shape[0], num_classes, x.device, generator)
    labels = torch.as_tensor(labels, dtype=torch.long, device=x.device).reshape(-1)
    if labels.numel() != x.shape[0] or labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must be {x.shape[0]} integers in [0, {num_classes}), got {labels.tolist()}")
    return labels


def permute(x: Tensor, labels: Tensor, perms: Tensor) -> Tensor:
    """Per-sample reordering of dim 1: ``out[b, i] = x[b, perms[labels[b], i]]``."""
    idx = perms.to(x.device)[labels]                                   # (B, N)
    return x[torch.arange(x.shape[0], device=x.device)[:, None], idx]


def rotate(x: Tensor, k: Tensor) -> Tensor:
    """Rotate clip b of (B, 3, T, H, W) by ``k[b]`` x 90 degrees in (H, W), every frame alike
    (``torch.rot90(x[b], k[b], dims=(-2, -1))``). Needs H == W."""
    k = k.view(-1, *([1] * (x.dim() - 1)))
    out = x
    for r in range(1, 4):
        out = torch.where(k == r, torch.rot90(x, r, dims=(-2, -1)), out)
    return out


def _check_clips(x: Tensor, dims: int, what: str) -> None:
    if x.dim() != dims or x.shape[-4] != 3:
        shape = "(B, 3, T, H, W)" if dims == 5 else "(B, N, 3, T, H, W)"
        raise ValueError(f"{what} expects clips shaped {shape}, got {tuple(x.shape)}")


def rotnet_inputs(x: Tensor, generator: torch.Generator | None = None, labels: Tensor | None = None,
                  all_transforms: bool = False) -> tuple[Tensor, Tensor]:
    """3D RotNet's r(x): each clip rotated by label x 90 degrees. It returns (rotated clips, labels).

    With ``all_transforms`` every clip appears 4 times, once per rotation. The output is
    (4B, 3, T, H, W) with labels ``[0]*B + [1]*B + [2]*B + [3]*B``, which is Eq. (3) taken
    literally.
    """
    _check_clips(x, 5, "RotNet")
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"RotNet needs square frames so rotations keep the shape, got H, W = {tuple(x.shape[-2:])}")
    if all_transforms:
        if labels is not None:
            raise ValueError("all_transforms applies every rotation: do not pass labels")
        rot = torch.arange(4, device=x.device).repeat_interleave(x.shape[0])
        return rotate(x.repeat(4, 1, 1, 1, 1), rot), rot
    labels = _labels(x, 4, generator, labels)
    return rotate(x, labels), labels


def cut_pieces(x: Tensor, gap: int = 0) -> Tensor:
    """Cut (B, 3, T, H, W) into a 2 x 2 spatial grid. The result is (B, 4, 3, T, h, w) with
    pieces in raster order: top-left, top-right, bottom-left, bottom-right. Every piece keeps
    all T frames. A cell is (H // 2, W // 2). With ``gap`` > 0, each piece is the centred
    (H // 2 - gap, W // 2 - gap) crop of its cell, so neighbours are ``gap`` px apart and
    cannot be matched by their shared edges (Kim et al. jitter crops for the same reason)."""
    _check_clips(x, 5, "the cubic puzzle")
    ch, cw = x.shape[-2] // 2, x.shape[-1] // 2
    if not 0 <= gap < min(ch, cw):
        raise ValueError(f"gap must be in [0, {min(ch, cw)}) for cells of {ch} x {cw}, got {gap}")
    o, h, w = gap // 2, ch - gap, cw - gap
    return torch.stack([x[..., i * ch + o:i * ch + o + h, j * cw + o:j * cw + o + w]
                        for i in range(2) for j in range(2)], dim=1)


def cubic_puzzle_inputs(x: Tensor, generator: torch.Generator | None = None, labels: Tensor | None = None,
                        gap: int = 0) -> tuple[Tensor, Tensor]:
    """Space-time cubic puzzle: the 4 pieces of ``cut_pieces`` shuffled by permutation ``labels``
    (one of 24). It returns the (B, 4, 3, T, h, w) shuffled pieces and the labels."""
    labels = _labels(x, 24, generator, labels)
    return permute(cut_pieces(x, gap), labels, _perms(4)), labels


def cop_inputs(clips: Tensor, generator: torch.Generator | None = None,
               labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """VCOP: the N clips of (B, N, 3, T, H, W), in temporal order, reordered by permutation
    ``labels`` (one of N!). It returns the reordered clips and the labels."""
    _check_clips(clips, 6, "clip order prediction")
    n = clips.shape[1]
    labels = _labels(clips, math.factorial(n), generator, labels)
    return permute(clips, labels, _perms(n)), labels


# -- tasks ------------------------------------------------------------------------------

class Pretext(nn.Module, abc.ABC):
    """A backbone, a head, and a transformation set R of ``num_classes`` operations (Eq. 3),
    trained with the BE term (Eq. 4) as ``L = L_p + beta * L_be`` (Eq. 5).

    Subclasses define ``make_inputs`` (r(x) and its labels) and ``classify`` (F(r(x); theta)).
    """

    num_classes: int
    inputs = ("x_o", "x_d")  # what ``forward`` takes from a batch

    def __init__(self, backbone: nn.Module, beta: float = 1.0):
        super().__init__()
        self.backbone, self.beta = backbone, beta

    @classmethod
    def views_for(cls, **_) -> Views:
        """x_o and x_v of one clip (x_d = BE(x_v), Fig. 2)."""
        return Views()

    @abc.abstractmethod
    def make_inputs(self, x: Tensor, generator: torch.Generator | None = None,
                    labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """r(x) for one r in R per sample, and the labels of the r applied."""

    @abc.abstractmethod
    def classify(self, inputs: Tensor) -> Tensor:
        """F(r(x); theta): the pretext logits."""

    def predict(self, x: Tensor, generator: torch.Generator | None = None,
                labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """F(r(x); theta) of Eq. (3): the pretext logits and the labels of the r applied."""
        inputs, labels = self.make_inputs(x, generator, labels)
        return self.classify(inputs), labels

    def _pretext_and_be(self, x_o: Tensor, x_d: Tensor,
                        generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        logits, labels = self.predict(x_o, generator)
        f_o, f_d = self.backbone(torch.cat([x_o, x_d]))[0].chunk(2)  # one call: shared BN statistics
        return logits, labels, f_o, f_d

    def forward(self, x_o: Tensor, x_d: Tensor | None = None, *, beta: float | None = None,
                generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Eq. (5): ``loss = loss_pretext + beta * loss_be``.

        ``x_o`` is the original clip(s). It gets the pretext transformation (Eq. 3), and
        untransformed it gives f_o. ``x_d`` is the distracting clip(s), BE(x_v), shaped like
        ``x_o``, and gives f_d (Eq. 4). Without ``x_d`` the result is the plain pretext
        baseline, with loss_be = 0. ``beta`` defaults to ``self.beta`` (1.0, as in the paper).
        It returns ``loss``, ``loss_pretext`` and ``loss_be``, all differentiable, and ``acc``,
        the pretext top-1 accuracy, detached.
        """
        beta = self.beta if beta is None else beta
        if x_d is None:
            logits, labels = self.predict(x_o, generator)
            loss_be = logits.new_zeros(())
        else:
            if x_d.shape != x_o.shape:
                raise ValueError(f"x_d must be shaped like x_o: {tuple(x_d.shape)} vs {tuple(x_o.shape)}")
            logits, labels, f_o, f_d = self._pretext_and_be(x_o, x_d, generator)
            loss_be = be_loss(f_o, f_d)
        loss_pretext = F.cross_entropy(logits, labels)                    # Eq. (3)
        acc = (logits.detach().argmax(1) == labels).float().mean()
        return {"loss": loss_pretext + beta * loss_be, "loss_pretext": loss_pretext,
                "loss_be": loss_be, "acc": acc}


class RotNet(Pretext):
    """3D RotNet (Jing & Tian 2018). R contains rotations by 0, 90, 180 and 270 degrees,
    applied in (H, W) to every frame alike. A linear head on the pooled feature predicts
    which one (4-way). ``all_transforms=True`` feeds all 4 rotations of each clip, which
    is Eq. (3) literally, at 4x the cost."""

    num_classes = 4

    def __init__(self, backbone: nn.Module, beta: float = 1.0, all_transforms: bool = False):
        super().__init__(backbone, beta)
        self.all_transforms = all_transforms
        self.head = nn.Linear(backbone.out_channels, 4)

    def make_inputs(self, x: Tensor, generator: torch.Generator | None = None,
                    labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return rotnet_inputs(x, generator, labels, self.all_transforms and labels is None)

    def classify(self, inputs: Tensor) -> Tensor:
        return self.head(self.backbone(inputs)[1])


class CubicPuzzle(Pretext):
    """Space-Time Cubic Puzzles (Kim et al. 2019), spatial variant.

    The clip is cut into a 2 x 2 spatial grid of 4 pieces, and each piece spans the whole
    temporal extent. The pieces are shuffled by one of the 4! = 24 permutations. Each
    piece goes through the shared backbone (a Siamese network with late fusion). The 4
    pooled features are concatenated in shuffled order, and an MLP predicts the
    permutation (24-way).

    Why the spatial grid, rather than 2 spatial x 2 temporal: it is Kim et al.'s spatial
    2 x 2 puzzle. Kim et al. draw either that or a 4 x 1 temporal one; no mixed
    2 x 2 x 2 cut exists there. Pieces also keep all T frames, so a backbone that
    down-samples time by 8 (C3D, R3D at 16 frames -> T' = 2) still gives psi a temporal
    axis. Halving T would leave T' = 1. ``gap`` leaves px between neighbouring pieces
    (see ``cut_pieces``). Kim et al.'s random jitter and channel replication are not
    implemented.
    """

    num_classes = 24

    def __init__(self, backbone: nn.Module, beta: float = 1.0, gap: int = 0,
                 hidden: int = 512, dropout: float = 0.5):
        super().__init__(backbone, beta)
        self.gap = gap
        self.head = nn.Sequential(nn.Linear(4 * backbone.out_channels, hidden), nn.ReLU(inplace=True),
                                  nn.Dropout(dropout), nn.Linear(hidden, 24))

    def make_inputs(self, x: Tensor, generator: torch.Generator | None = None,
                    labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return cubic_puzzle_inputs(x, generator, labels, self.gap)

    def classify(self, inputs: Tensor) -> Tensor:                       # (B, 4, 3, T, h, w)
        v = self.backbone(inputs.flatten(0, 1))[1]                      # (4B, C)
        return self.head(v.view(inputs.shape[0], -1))                   # pieces in shuffled order


class ClipOrder(Pretext):
    """Clip Order Prediction (VCOP, Xu et al. 2019). ``x_o`` holds N = ``tuple_len`` (3)
    clips of one video in temporal order, shaped (B, N, 3, T, H, W). They are shuffled
    by one of N! permutations (6-way for N = 3). Each clip is pooled to ``v_i`` by the
    shared backbone. For every pair i < j, ``relu(fc([v_i, v_j]))`` is computed, the
    pairs are concatenated, and dropout and fc give the order. ``x_d`` has the same
    shape: the distracting version of each clip. L_be is averaged over the B x N clip pairs.
    """

    def __init__(self, backbone: nn.Module, beta: float = 1.0, tuple_len: int = 3,
                 hidden: int = 512, dropout: float = 0.5):
        super().__init__(backbone, beta)
        self.tuple_len, self.num_classes = tuple_len, math.factorial(tuple_len)
        self.register_buffer("perms", _perms(tuple_len).clone(), persistent=False)
        self.pairs = list(itertools.combinations(range(tuple_len), 2))
        self.fc_pair = nn.Linear(2 * backbone.out_channels, hidden)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden * len(self.pairs), self.num_classes))

    @classmethod
    def views_for(cls, tuple_len: int = 3, **_) -> Views:
        """x_o and x_v of ``tuple_len`` consecutive clips, one draw of A shared by them."""
        return Views(clips=tuple_len)

    def _check(self, x: Tensor) -> None:
        _check_clips(x, 6, "clip order prediction")
        if x.shape[1] != self.tuple_len:
            raise ValueError(f"expected {self.tuple_len} clips per sample, got {x.shape[1]}")

    def make_inputs(self, x: Tensor, generator: torch.Generator | None = None,
                    labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(x)
        return cop_inputs(x, generator, labels)

    def order_logits(self, v: Tensor) -> Tensor:
        """Logits from the pooled features of the clips in presented order, (B, N, C)."""
        return self.head(torch.cat([F.relu(self.fc_pair(torch.cat([v[:, i], v[:, j]], 1)))
                                    for i, j in self.pairs], 1))

    def classify(self, inputs: Tensor) -> Tensor:                       # (B, N, 3, T, H, W)
        v = self.backbone(inputs.flatten(0, 1))[1]
        return self.order_logits(v.view(*inputs.shape[:2], -1))

    def _pretext_and_be(self, x_o: Tensor, x_d: Tensor,
                        generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        self._check(x_o)
        b, n = x_o.shape[:2]
        labels = sample_labels(b, self.num_classes, x_o.device, generator)
        f, v = self.backbone(torch.cat([x_o, x_d]).flatten(0, 1))      # [x_o clips, x_d clips]: one pass
        logits = self.order_logits(permute(v[:b * n].view(b, n, -1), labels, self.perms))
        f_o, f_d = f.chunk(2)
        return logits, labels, f_o, f_d


PRETEXTS: dict[str, type[Pretext]] = {"rotnet": RotNet, "cubic_puzzle": CubicPuzzle, "cop": ClipOrder}


def build_pretext(name: str, backbone: nn.Module, **kw) -> Pretext:
    """``PRETEXTS[name](backbone, **kw)``, e.g. ``build_pretext("cop", c3d, beta=0.5)``."""
    if name not in PRETEXTS:
        raise ValueError(f"unknown pretext task {name!r}; choose one of {sorted(PRETEXTS)}")
    return PRETEXTS[name](backbone, **kw)
