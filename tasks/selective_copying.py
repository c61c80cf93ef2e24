"""Selective copying, as in the Mamba paper (Gu & Dao 2023, arXiv 2312.00752) and the MAD suite
(Poli et al. 2024, arXiv 2403.17844), whose layout this follows.

    [ n tokens scattered among blanks ] COPY [ n answer slots ]
     <------ T - n - 1 positions ----->  1    <---- n ----->

The ``n`` (``num_tokens``) tokens are drawn with replacement from ``[0, V-2)`` and sit at a
uniformly random set of ``n`` distinct positions of the context; every other context position
holds the blank ``V-2``. The copy marker ``V-1`` follows, then ``n`` answer slots that hold
blanks: the inputs never reveal an answer (no teacher forcing), and the target at the i-th slot
is the i-th token of the context, in order. All other targets are ignored.

MAD inserts each blank before a uniformly chosen token, so its last context position always
holds a token; here the positions are a uniform random subset instead.

Length generalisation: ``at_length(T)`` keeps ``num_tokens`` and lengthens the context, so the
tokens are sparser and further from the answer.
"""

from __future__ import annotations

import dataclasses

import torch

from .base import IGNORE, Task, register_task, sample_distinct


@register_task("selective_copying")
@dataclasses.dataclass(frozen=True)
class SelectiveCopying(Task):
    seq_len: int = 256
    vocab_size: int = 16
    num_tokens: int = 16

    @property
    def blank(self) -> int:
        return self.vocab_size - 2

    @property
    def marker(self) -> int:
        return self.vocab_size - 1

    @property
    def context(self) -> int:
        """Positions before the copy marker."""
        return self.seq_len - self.num_tokens - 1

    def validate(self) -> None:
        T, V, n = self.seq_len, self.vocab_size, self.num_tokens
        if V < 3:
            raise ValueError(f"selective_copying: vocab_size must be >= 3 (tokens, blank, copy "
                             f"marker), got vocab_size={V}")
        if n < 1:
            raise ValueError(f"selective_copying: num_tokens must be >= 1, got num_tokens={n}")
        if T < 2 * n + 2:
            raise ValueError(f"selective_copying: seq_len must be >= 2 * num_tokens + 2 (tokens, "
                             f"a blank, the marker and the answer slots), got seq_len={T} with "
                             f"num_tokens={n}")

    def generate(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        T, k, C = self.seq_len, self.num_tokens, self.context
        where = sample_distinct(n, k, 0, C, generator, ordered=True)  # [N, k] increasing
        tokens = torch.randint(0, self.vocab_size - 2, (n, k), generator=generator)  # [N, k]
        inputs = torch.full((n, T), self.blank, dtype=torch.long)
        inputs.scatter_(1, where, tokens)
        inputs[:, C] = self.marker
        targets = torch.full((n, T), IGNORE, dtype=torch.long)
        targets[:, C + 1:] = tokens
        return inputs, targets

    def oracle(self, inputs: torch.Tensor) -> torch.Tensor:
        """Reads the context's non-blank tokens in order; answers the i-th at the i-th slot."""
        C, k = self.context, self.num_tokens
        ctx = inputs[:, :C]
        t = torch.arange(C)
        first = torch.where(ctx != self.blank, t, C + t).argsort(1)[:, :k]  # token positions
        preds = inputs.clone()
        preds[:, C + 1:] = ctx.gather(1, first)
        return preds
