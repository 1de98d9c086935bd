"""Batches of one epoch at a time, cut from a stream of blocks that spans several epochs.

The data pipeline runs one execution over several epochs (``beray.data.pipeline``), so the
next epoch's first clips are ready when this epoch ends; every clip carries its ``epoch``.
A batch never mixes two epochs, and an epoch's last clips that do not fill a batch are
dropped, as ``drop_last`` drops them.

A pipeline that delivers nothing for ``stall_timeout_s`` raises DataStalled instead of leaving the
run waiting without end (Ray Data only warns, into its log, that it cannot schedule a task).
"""

from __future__ import annotations

import queue
import threading
from typing import Iterator

import torch

Batch = dict[str, torch.Tensor]


class DataStalled(RuntimeError):
    """The data pipeline delivered no block for ``data.stall_timeout_s``."""


_END = object()


class Deadline:
    """The items of ``items``, each fetched by a thread of its own so that the wait for one can end: an item
    that takes longer than ``timeout_s`` (None: no limit) raises DataStalled. ``close`` stops the thread."""

    def __init__(self, items: Iterator, timeout_s: float | None):
        self.timeout_s, self.done, self.ended = timeout_s, threading.Event(), False
        self.queue: queue.Queue = queue.Queue(maxsize=1)  # one item ahead: the pipeline's own prefetch does the rest
        self.thread = threading.Thread(target=self._fetch, args=(iter(items),), daemon=True, name="beray-data-deadline")
        self.thread.start()

    def _fetch(self, items: Iterator) -> None:
        try:
            for item in items:
                if not self._put((item, None)):
                    return
            self._put((_END, None))
        except BaseException as e:  # the pipeline's own error, raised where the item is taken
            self._put((_END, e))

    def _put(self, entry) -> bool:
        while not self.done.is_set():
            try:
                self.queue.put(entry, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self):
        return self

    def __next__(self):
        if self.ended:
            raise StopIteration
        try:
            item, error = self.queue.get(timeout=self.timeout_s)
        except queue.Empty:
            raise DataStalled(f"the data pipeline is starved: it delivered no batch for {self.timeout_s:g} s "
                              "(data.stall_timeout_s)") from None
        if error is not None:
            self.ended = True
            raise error
        if item is _END:
            self.ended = True
            self.done.set()
            raise StopIteration
        return item

    def close(self) -> None:
        self.done.set()


class EpochStream:
    """``epoch(e)`` yields epoch e's batches of ``size`` clips from ``blocks`` (dicts of equal-length
    tensors with an ``epoch`` column, epochs never decreasing). What an epoch cut short left unread is
    skipped by the next epoch's call; a block of a later epoch waits for its own call."""

    def __init__(self, blocks: Iterator[Batch], size: int, stall_timeout_s: float | None = None):
        self.blocks, self.size = Deadline(blocks, stall_timeout_s), size
        self.ahead: Batch | None = None

    def close(self) -> None:
        self.blocks.close()

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
