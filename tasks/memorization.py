"""Fact memorisation: answers that must be stored in the weights, not read from context
(the setting of "Mixture of Parrots: experts improve memorization more than reasoning",
Jelassi et al. 2024, arXiv 2410.19034).

A fixed global table ``f: (a, b) -> value`` over ordered pairs of subject tokens
``a, b in [0, num_keys)`` is drawn once from ``map_seed`` (the same table for every split).
A sequence is a run of triples

    a_1 b_1 f(a_1, b_1)   a_2 b_2 f(a_2, b_2)   ...

with distinct pairs within a sequence; the target at each ``b`` position is ``f(a, b)``, and the
answer token in the input is the teacher-forced value (it never reveals a later answer).
Facts are pairs rather than single keys so that a per-token embedding cannot hold them:
``num_keys^2`` facts of ``log2(num_values)`` bits each must live in the mixers and channel
mixers (the MLP or the experts). Values occupy ``[num_keys, num_keys + num_values)``; the
vocabulary is exactly that. Trailing positions that do not fit a triple are ``pad`` (token 0,
no target).
"""

from __future__ import annotations

import dataclasses
import functools

import torch

from .base import IGNORE, Task, register_task, sample_distinct


@functools.lru_cache(maxsize=8)
def fact_table(num_keys: int, num_values: int, map_seed: int) -> torch.Tensor:
    """``[num_keys, num_keys]`` values, uniform over ``[num_keys, num_keys + num_values)``."""
    g = torch.Generator().manual_seed(map_seed)
    return torch.randint(num_keys, num_keys + num_values, (num_keys, num_keys), generator=g)


@register_task("memorization")
@dataclasses.dataclass(frozen=True)
class Memorization(Task):
    seq_len: int = 64
    vocab_size: int = 256
    num_keys: int = 128
    map_seed: int = 0

    def validate(self) -> None:
        if self.seq_len < 3:
            raise ValueError(f"memorization: seq_len must be >= 3 (one triple), got {self.seq_len}")
        if self.num_keys < 2:
            raise ValueError(f"memorization: num_keys must be >= 2, got {self.num_keys}")
        if self.vocab_size <= self.num_keys + 1:
            raise ValueError(f"memorization: vocab_size must exceed num_keys + 1 (room for values),"
                             f" got vocab_size={self.vocab_size} with num_keys={self.num_keys}")
        if self.seq_len // 3 > self.num_keys ** 2:
            raise ValueError(f"memorization: seq_len={self.seq_len} holds more triples than the "
                             f"{self.num_keys ** 2} facts of num_keys={self.num_keys}")

    @property
    def num_values(self) -> int:
        return self.vocab_size - self.num_keys

    @property
    def table(self) -> torch.Tensor:
        return fact_table(self.num_keys, self.num_values, self.map_seed)

    def generate(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        K, m = self.num_keys, self.seq_len // 3
        pairs = sample_distinct(n, m, 0, K * K, generator)  # [N, m] fact ids, distinct per row
        a, b = pairs // K, pairs % K
        answers = self.table[a, b]  # [N, m]
        inputs = torch.zeros(n, self.seq_len, dtype=torch.long)
        targets = torch.full((n, self.seq_len), IGNORE, dtype=torch.long)
        inputs[:, 0:3 * m:3], inputs[:, 1:3 * m:3], inputs[:, 2:3 * m:3] = a, b, answers
        targets[:, 1:3 * m:3] = answers
        return inputs, targets

    def oracle(self, inputs: torch.Tensor) -> torch.Tensor:
        prev = torch.roll(inputs, 1, dims=1).clamp(max=self.num_keys - 1)
        cur = inputs.clamp(max=self.num_keys - 1)
        return self.table[prev, cur]
