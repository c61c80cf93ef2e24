"""The effective state-size task: MQAR at one length over slices of increasing numbers of
key-value pairs, the setting in which arXiv 2504.19561 relates memory use to recall.

Each slice ``kv=k`` is multi-query associative recall (``tasks/assoc_recall.py``) with ``k``
pairs at ``seq_len``; training draws equal shares of every slice, shuffled together. Each slice
is also a test variant (``eval_variants``), so one run reports ``test/acc@kv=<k>`` per slice,
and ``zoo.train`` records the ESS measured on each slice's own test inputs beside it
(``record["ess"]["slices"]["kv=<k>"]``, see ``zoo/ess.py``): accuracy and ESS per key-value
pair, slice by slice, from a single model.

Length generalisation: ``at_length(T)`` keeps ``kv_pairs`` (a longer sequence adds context,
not pairs), unlike ``assoc_recall`` which keeps the density of pairs.
"""

from __future__ import annotations

import dataclasses

import torch

from .assoc_recall import AssocRecall
from .base import Task, register_task


@register_task("state_size")
@dataclasses.dataclass(frozen=True)
class StateSize(Task):
    seq_len: int = 64
    vocab_size: int = 8192
    kv_pairs: tuple[int, ...] = (2, 4, 8, 16)
    power_a: float = 0.01
    random_non_queries: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.kv_pairs, (list, tuple)):  # configs give lists; frozen wants tuples
            object.__setattr__(self, "kv_pairs", tuple(self.kv_pairs))
        super().__post_init__()

    def validate(self) -> None:
        T, kv = self.seq_len, self.kv_pairs
        if (not isinstance(kv, tuple) or not kv
                or not all(isinstance(k, int) and k >= 1 for k in kv) or len(set(kv)) < len(kv)):
            raise ValueError(f"state_size: kv_pairs must be a non-empty list of distinct "
                             f"positive ints, got kv_pairs={kv!r}")
        if 4 * max(kv) > T:
            raise ValueError(f"state_size: 4 * max(kv_pairs) must be <= seq_len (room for the "
                             f"pairs and one query per key), got kv_pairs={list(kv)} with "
                             f"seq_len={T}")
        try:  # the rest (seq_len even, vocab_size > seq_len, power_a) as MQAR checks it
            self.slices()
        except ValueError as e:
            raise ValueError(str(e).replace("assoc_recall:", "state_size:", 1)) from None

    def slices(self) -> dict[str, AssocRecall]:
        """``{"kv=<k>": MQAR with k pairs}`` in increasing ``k``."""
        return {f"kv={k}": AssocRecall(seq_len=self.seq_len, vocab_size=self.vocab_size,
                                       num_kv_pairs=k, power_a=self.power_a,
                                       random_non_queries=self.random_non_queries)
                for k in sorted(self.kv_pairs)}

    def eval_variants(self) -> dict[str, AssocRecall]:
        """Every slice, reported as ``test/acc@kv=<k>``."""
        return self.slices()

    def generate(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        parts = list(self.slices().values())
        sizes = [n // len(parts) + (i < n % len(parts)) for i in range(len(parts))]
        made = [task.generate(m, generator) for task, m in zip(parts, sizes) if m]
        order = torch.randperm(n, generator=generator)  # interleave the slices
        inputs = torch.cat([x for x, _ in made])[order]  # [N, T]
        targets = torch.cat([y for _, y in made])[order]  # [N, T]
        return inputs, targets

    def oracle(self, inputs: torch.Tensor) -> torch.Tensor:
        """MQAR's oracle reading the largest slice's prefix: in a row with fewer pairs the
        extra 'pairs' are filler, and a query key matches its true pair first (earlier)."""
        return self.slices()[f"kv={max(self.kv_pairs)}"].oracle(inputs)
