"""The counts a split's metrics are computed from, summed over its batches and over DDP ranks.

Every metric the zoo reports is a micro average: summed counts first (``correct`` and
``total`` supervised positions, ``exact`` and ``examples`` rows, the summed token ``nll``, a
continuous task's ``sse`` and ``count`` ...), the ratio last, so a metric does not depend on
how a split was cut into batches or ranks. Positions at ``tasks.IGNORE`` are counted by
nobody (``tasks.accuracy_counts``); what is counted is the scorers' business, and ``Sums``
adds whatever names they give.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric


class Sums(Metric):
    """Named sums, in float64, over every ``update`` and then over DDP ranks (``compute``).

    The names are those the updates bring (a subset's ``string_correct``, a continuous task's
    ``sse@n=3``), kept sorted in one float64 vector state reduced by ``sum``, so a rank's sums
    cross the ranks in one collective. Every rank must see the same names (the same tasks
    made its batches). Summed as Python floats would be: one float64 addition per update.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("sums", default=torch.zeros(0, dtype=torch.float64),
                       dist_reduce_fx="sum")
        self.names: list[str] = []

    def update(self, counts: dict[str, float]) -> None:
        names = sorted({*self.names, *counts})
        if names != self.names:
            grown = self.sums.new_zeros(len(names))
            grown[[names.index(n) for n in self.names]] = self.sums
            self.sums, self.names = grown, names
        self.sums += torch.tensor([counts.get(n, 0.0) for n in names], dtype=torch.float64,
                                  device=self.sums.device)

    def compute(self) -> dict[str, float]:
        return dict(zip(self.names, self.sums.tolist()))

    def reset(self) -> None:
        super().reset()
        self.names = []
