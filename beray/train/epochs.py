"""Batches of one epoch at a time, cut from a stream of blocks that spans several epochs.

The data pipeline runs one execution over several epochs (``beray.data.pipeline``), so the
next epoch's first clips are ready when this epoch ends; every clip carries its ``epoch``.
A batch never mixes two epochs, and an epoch's last clips that do not fill a batch are
dropped, as ``drop_last`` drops them.
"""

from __future__ import annotations

from typing import Iterator

import torch

Batch = dict[str, torch.Tensor]


class EpochStream:
    """``epoch(e)`` yields epoch e's batches of ``size`` clips from ``blocks`` (dicts of equal-length
    tensors with an ``epoch`` column, epochs never decreasing). What an epoch cut short left unread is
    skipped by the next epoch's call; a block of a later epoch waits for its own call."""

    def __init__(self, blocks: Iterator[Batch], size: int):
        self.blocks, self.size = iter(blocks), size
        self.ahead: Batch | None = None

    def _next(self) -> Batch | None:
        block, self.ahead = self.ahead, None
        return block if block is not None else next(self.blocks, None)

    def epoch(self, e: int) -> Iterator[Batch]:
        rest: Batch | None = None
        while (block := self._next()) is not None:
            if not block or len(block["epoch"]) == 0:  # a task whose videos were all unreadable
                continue
            b = int(block["epoch"][0])
            if b < e:
                continue
            if b > e:
                self.ahead = block
                return
            block = {k: v for k, v in block.items() if k != "epoch"}
            rest = block if rest is None else {k: torch.cat([rest[k], v]) for k, v in block.items()}
            while len(rest["index"]) >= self.size:
                yield {k: v[:self.size] for k, v in rest.items()}
                rest = {k: v[self.size:] for k, v in rest.items()}
