"""Shuffled epochs of batches: every item once per epoch, never sampled with replacement."""

from __future__ import annotations

import random

from sleepcore.validation import integer


class EpochBatches:
    """Batches of indices into ``size`` items.

    Epoch ``e`` is a permutation of ``range(size)`` drawn from ``random.Random(f"{seed}/{e}")``, cut
    into consecutive batches of ``batch_size`` (the epoch's last batch may be shorter; with fewer
    items than ``batch_size`` every batch is the whole set). The position (epoch, batch) is the
    whole state, so a resumed run draws the same batches as an uninterrupted one.
    """

    def __init__(self, size: int, batch_size: int, seed: int = 0):
        self.size = integer("size", size, minimum=1)
        self.batch_size = integer("batch_size", batch_size, minimum=1)
        self.seed = integer("seed", seed)
        self.epoch, self.batch = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(self.size))
        random.Random(f"{self.seed}/{epoch}").shuffle(order)
        return order

    @property
    def batches_per_epoch(self) -> int:
        return -(-self.size // self.batch_size)

    @property
    def completed_epochs(self) -> int:
        """Epochs whose every batch has been drawn."""
        return self.epoch + (self.batch == self.batches_per_epoch)

    def next(self) -> list[int]:
        """The next batch of indices (moving to a new epoch when the current one is used up)."""
        if self.batch == self.batches_per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0
            self._order = self._permutation(self.epoch)
        start = self.batch * self.batch_size
        self.batch += 1
        return self._order[start:start + self.batch_size]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        self._order = self._permutation(self.epoch)
