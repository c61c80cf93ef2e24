"""Multi-query associative recall (MQAR), compatible with the Zoology benchmark
(Arora et al. 2023, arXiv 2312.04927).

    k1 v1 k2 v2 ... kn vn | query region of length T - 2n

Keys are drawn without replacement from ``[1, V/2)``, values from ``[V/2, V)``; token 0 is the
filler. Every key appears once more in the query region, at even offsets ``2 g`` with the
offsets ``g`` drawn without replacement from ``space = (T - 2n) / 2`` slots with probability
``p(g) ∝ (g + 1)^(a - 1)`` (queries cluster early for small ``a``). The target at a query key's
position is its value (the model emits the value right after reading the repeated key); all
other targets are ignored. With ``random_non_queries`` every remaining filler becomes a uniform
token from ``[0, V)``.

Weighted sampling without replacement is Gumbel-top-k, the same distribution as Zoology's
sequential ``np.random.choice(replace=False, p=p)``, but for all rows at once.
"""

from __future__ import annotations

import dataclasses

import torch

from .base import IGNORE, Task, register_task, sample_distinct


@register_task("assoc_recall")
@dataclasses.dataclass(frozen=True)
class AssocRecall(Task):
    seq_len: int = 64
    vocab_size: int = 8192
    num_kv_pairs: int = 4
    power_a: float = 0.01
    random_non_queries: bool = True

    def validate(self) -> None:
        T, V, n = self.seq_len, self.vocab_size, self.num_kv_pairs
        if T <= 0 or T % 2:
            raise ValueError(f"assoc_recall: seq_len must be even and positive, got seq_len={T}")
        if n < 1:
            raise ValueError(f"assoc_recall: num_kv_pairs must be >= 1, got {n}")
        if 4 * n > T:
            raise ValueError(f"assoc_recall: 4 * num_kv_pairs must be <= seq_len, got "
                             f"num_kv_pairs={n} with seq_len={T}")
        if V <= T:
            raise ValueError(f"assoc_recall: vocab_size must exceed seq_len, got vocab_size={V} "
                             f"with seq_len={T}")
        if not 0 < self.power_a <= 1:
            raise ValueError(f"assoc_recall: power_a must be in (0, 1], got {self.power_a}")

    def at_length(self, seq_len: int) -> "AssocRecall":
        """Keeps the density of pairs: ``num_kv_pairs`` scales with ``seq_len``."""
        n = max(1, self.num_kv_pairs * seq_len // self.seq_len)
        return dataclasses.replace(self, seq_len=seq_len, num_kv_pairs=n)

    def generate(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        T, V, k = self.seq_len, self.vocab_size, self.num_kv_pairs
        keys = sample_distinct(n, k, 1, V // 2, generator)  # [N, k]
        values = sample_distinct(n, k, V // 2, V, generator)  # [N, k]
        space = (T - 2 * k) // 2
        log_p = (self.power_a - 1) * torch.log(torch.arange(1, space + 1, dtype=torch.float32))
        u = torch.rand(n, space, generator=generator).clamp_min(1e-30)
        gumbel = -torch.log(-torch.log(u))  # [N, space]
        gaps = (log_p + gumbel).topk(k, dim=1).indices  # [N, k] distinct offsets
        query_pos = 2 * k + 2 * gaps  # [N, k]

        inputs = torch.zeros(n, T, dtype=torch.long)
        inputs[:, 0:2 * k:2] = keys
        inputs[:, 1:2 * k:2] = values
        inputs.scatter_(1, query_pos, keys)
        targets = torch.full((n, T), IGNORE, dtype=torch.long)
        targets.scatter_(1, query_pos, values)
        if self.random_non_queries:
            noise = torch.randint(0, V, (n, T), generator=generator)
            inputs = torch.where(inputs == 0, noise, inputs)
        return inputs, targets

    def oracle(self, inputs: torch.Tensor) -> torch.Tensor:
        k = self.num_kv_pairs
        keys, values = inputs[:, 0:2 * k:2], inputs[:, 1:2 * k:2]  # [N, k]
        hit = inputs[:, :, None] == keys[:, None, :]  # [N, T, k]
        found = hit.any(-1)
        preds = values.gather(1, hit.float().argmax(-1))  # value of the matching key
        return torch.where(found, preds, torch.zeros_like(preds))
