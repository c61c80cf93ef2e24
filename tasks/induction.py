"""Induction head / trigger-output: the token after a trigger's first occurrence is recalled at
its second (Olsson et al. 2022; the synthetic form of H3 and Mamba, arXiv 2212.14052, 2312.00752).

    ... TRIG o ... TRIG ...        target at the second TRIG: o
        a    a+1   b = a + d

Every position holds a uniform token from ``[0, V-1)`` except two, which hold the trigger
``V-1``; so the trigger occurs exactly twice and the token ``o`` after its first occurrence is
an ordinary token (the distance ``d >= 2`` keeps ``o`` before the second trigger). The only
supervised position is the second trigger.

The distance ``d`` is the knob that separates an induction head from a positional shortcut: it
is uniform over ``distances`` when given, else over ``[min_distance, max_distance]``
(``max_distance = None`` means ``seq_len - 1``). The first trigger is then uniform over the
positions that leave room for ``d``. ``out_of_distribution()`` gives the same task with every
other distance the sequence allows, for evaluation on distances never trained on.

Length generalisation: ``at_length(T)`` keeps explicit distances (``distances``,
``max_distance``) as they are, so a longer sequence adds context, not distance; with
``max_distance = None`` the range grows to ``T - 1``, which adds distances unseen in training.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from .base import IGNORE, Task, last_position, register_task


@register_task("induction")
@dataclasses.dataclass(frozen=True)
class Induction(Task):
    seq_len: int = 64
    vocab_size: int = 16
    min_distance: int = 2
    max_distance: int | None = None
    distances: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.distances is not None:  # configs give lists; a frozen task wants a tuple
            object.__setattr__(self, "distances", tuple(int(d) for d in self.distances))
        super().__post_init__()

    @property
    def trigger(self) -> int:
        return self.vocab_size - 1

    @property
    def support(self) -> tuple[int, ...]:
        """The distances this task draws from, uniformly."""
        if self.distances is not None:
            return tuple(sorted(set(self.distances)))
        hi = self.seq_len - 1 if self.max_distance is None else self.max_distance
        return tuple(range(self.min_distance, hi + 1))

    def validate(self) -> None:
        T, V = self.seq_len, self.vocab_size
        if V < 2:
            raise ValueError(f"induction: vocab_size must be >= 2 (tokens and the trigger), got "
                             f"vocab_size={V}")
        if T < 3:
            raise ValueError(f"induction: seq_len must be >= 3, got seq_len={T}")
        if self.distances is not None:
            bad = [d for d in self.distances if not 2 <= d <= T - 1]
            if bad or not self.distances:
                raise ValueError(f"induction: distances must be a non-empty list within "
                                 f"[2, seq_len - 1] = [2, {T - 1}], got distances="
                                 f"{list(self.distances)}")
            return
        if self.min_distance < 2:
            raise ValueError(f"induction: min_distance must be >= 2 (the output token sits "
                             f"between the triggers), got min_distance={self.min_distance}")
        hi = T - 1 if self.max_distance is None else self.max_distance
        if not self.min_distance <= hi <= T - 1:
            raise ValueError(f"induction: max_distance must be in [min_distance, seq_len - 1] = "
                             f"[{self.min_distance}, {T - 1}], got max_distance={hi}")

    def out_of_distribution(self) -> "Induction":
        """The distances in ``[2, seq_len - 1]`` that this task never draws."""
        seen = set(self.support)
        rest = [d for d in range(2, self.seq_len) if d not in seen]
        if not rest:
            raise ValueError("induction: every distance the sequence allows is in distribution; "
                             "narrow distances or min_distance/max_distance to leave some out")
        return dataclasses.replace(self, distances=tuple(rest))

    def eval_variants(self) -> dict[str, "Induction"]:
        """``ood``: the same length with only the distances training never draws (if any)."""
        try:
            return {"ood": self.out_of_distribution()}
        except ValueError:
            return {}

    def generate(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        T = self.seq_len
        support = torch.tensor(self.support)
        d = support[torch.randint(0, len(support), (n,), generator=generator)]  # [N]
        a = (torch.rand(n, generator=generator) * (T - d)).long().clamp_(max=T - 1 - d)  # [N]
        b = a + d
        inputs = torch.randint(0, self.trigger, (n, T), generator=generator)
        rows = torch.arange(n)
        inputs[rows, a] = self.trigger
        inputs[rows, b] = self.trigger
        targets = torch.full((n, T), IGNORE, dtype=torch.long)
        targets[rows, b] = inputs[rows, a + 1]
        return inputs, targets

    def oracle(self, inputs: torch.Tensor) -> torch.Tensor:
        """Causal: at a trigger with an earlier trigger, the token after that earlier one."""
        after_trigger = F.pad(inputs[:, :-1] == self.trigger, (1, 0))  # [N, T]
        src = last_position(after_trigger)  # the latest position right after a trigger
        return inputs.gather(1, src.clamp(min=0))
