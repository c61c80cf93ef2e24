"""Copying, as in "Repeat After Me: Transformers are Better than State Space Models at Copying"
(Jelassi et al. 2024, arXiv 2402.01032), with its n-gram lookup variant.

Tokens: an alphabet of ``A = vocab_size - 4`` symbols ``0 .. A-1`` (26 by default), then
``BOS = A``, ``SEP = A+1``, ``EOS = A+2``, ``PAD = A+3`` (the paper's ``$ | . *``).

    copy:    BOS s SEP s EOS            s uniform over the alphabet, |s| = L
    lookup:  BOS g SEP s SEP a EOS      g: an n-gram (ngram_len) occurring exactly once in s,
                                        a: the answer_len symbols that follow g in s

``L`` is uniform in ``[min_len, max_len]``, per example. In ``lookup`` the n-gram is uniform
among those that occur once in ``s`` and have ``answer_len`` symbols after them; a string with
none is redrawn (a loop over the failing strings only).

Targets are next-token targets, given only where the next token is part of the answer (EOS
included); everything else is ``IGNORE``:
- copy: the target at SEP is ``s[0]``, at the i-th answer symbol ``s[i+1]``, at the last answer
  symbol EOS: ``L + 1`` supervised positions per example;
- lookup: the target at the second SEP is ``a[0]``, ..., at the last answer symbol EOS:
  ``answer_len + 1`` supervised positions.
So accuracy is teacher-forced (one forward pass, argmax at each answer position): token
accuracy is character accuracy; exact match is string accuracy when a row holds one example.

Scoring. ``acc`` and ``exact_match`` score every supervised position, EOS included (``L + 1``
per copy). The reference's evaluation code (github.com/sjelassi/transformers_ssm_copy,
``synthetic_exps/test_utils.py``) scores the ``L`` string symbols only: its ``char_acc`` and
``str_acc`` are our ``string_acc`` and ``string_exact_match`` (the ``string`` subset below:
supervised positions whose target is not EOS; for ``lookup``, the answer's symbols). Both are
reported. An unpacked row is one example whose answer continues its prompt, so it is also
scored free-running (``generative``): the model reads the prompt (up to the first supervised
position), writes the answer greedily from its own outputs, and ``gen_exact_match`` (the
string and its EOS generated right: what "copies the string" means), ``gen_acc``,
``gen_string_acc`` and ``gen_string_exact_match`` score what it wrote (``zoo.module``).

Training packs (``packed=True``): each row starts with a fresh example and is filled with
examples back to back; the one that does not fit is cut at the row's end and carries no
targets, as in the paper's code. ``seq_len`` must hold the longest example, so every row holds
at least one whole one. Evaluation (``packed=False``) puts one example per row, padded with PAD.

Length generalisation counts string length: ``length`` is ``max_len``, and ``at_length(L)`` is
the unpacked task whose strings all have length exactly ``L`` (rows exactly one example long).
So ``eval_lengths: [20, 40, 80]`` tests strings of 20, 40 and 80 symbols, and the default test
length is the longest trained one.

Generation never loops over examples: the examples a row holds are placed with a cumulative
sum of their lengths, built per string length (a loop over lengths, not examples) and
written into the rows in one pass per length, as runs addressed by one flat offset per
example (no per-token index tensors). For 100k packed rows about a third of the time is
writing the two int64 outputs (352 MB) and a fifth drawing the symbols.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from .base import IGNORE, Task, last_position, register_task

VARIANTS = ("copy", "lookup")
_MAX_REDRAWS = 100


@register_task("copying")
@dataclasses.dataclass(frozen=True)
class Copying(Task):
    seq_len: int = 220
    vocab_size: int = 30
    min_len: int = 5
    max_len: int = 20
    packed: bool = True
    variant: str = "copy"
    ngram_len: int = 3
    answer_len: int = 2

    metrics: ClassVar[tuple[str, ...]] = ("acc", "exact_match", "loss", "string_acc",
                                          "string_exact_match")

    @property
    def generative(self) -> bool:
        """Whether a row is one example whose answer can be generated from its prompt: a
        packed row's later examples start after an answer, not at a prompt."""
        return not self.packed

    def subsets(self, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Supervised positions also scored on their own (``<name>_acc``,
        ``<name>_exact_match``): ``string``, every answer symbol but EOS, as the reference
        scores."""
        return {"string": targets != self.eos}

    @property
    def alphabet(self) -> int:
        return self.vocab_size - 4

    @property
    def bos(self) -> int:
        return self.vocab_size - 4

    @property
    def sep(self) -> int:
        return self.vocab_size - 3

    @property
    def eos(self) -> int:
        return self.vocab_size - 2

    @property
    def pad(self) -> int:
        return self.vocab_size - 1

    def example_len(self, L):
        """Tokens in one example with a string of length ``L`` (an int or a tensor)."""
        if self.variant == "copy":
            return 2 * L + 3
        return self.ngram_len + L + self.answer_len + 4

    def validate(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"copying: variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.vocab_size < 5:
            raise ValueError(f"copying: vocab_size must be >= 5 (an alphabet and BOS, SEP, EOS, "
                             f"PAD), got vocab_size={self.vocab_size}")
        if self.min_len < 1:
            raise ValueError(f"copying: min_len must be >= 1, got min_len={self.min_len}")
        if self.max_len < self.min_len:
            raise ValueError(f"copying: max_len must be >= min_len, got max_len={self.max_len} "
                             f"with min_len={self.min_len}")
        if self.variant == "lookup":
            n, k = self.ngram_len, self.answer_len
            if n < 1 or k < 1:
                raise ValueError(f"copying: ngram_len and answer_len must be >= 1, got "
                                 f"ngram_len={n}, answer_len={k}")
            if self.min_len < n + k:
                raise ValueError(f"copying: lookup needs min_len >= ngram_len + answer_len, got "
                                 f"min_len={self.min_len} with ngram_len={n}, answer_len={k}")
            if (self.vocab_size + 1) ** n >= 1 << 62:
                raise ValueError(f"copying: ngram_len={n} is too long to index n-grams of "
                                 f"vocab_size={self.vocab_size} in 64 bits")
        longest = self.example_len(self.max_len)
        if self.seq_len < longest:
            raise ValueError(f"copying: seq_len must hold the longest example ({longest} tokens "
                             f"at max_len={self.max_len}), got seq_len={self.seq_len}")

    @property
    def length(self) -> int:
        return self.max_len

    def at_length(self, length: int) -> "Copying":
        """Strings of exactly ``length`` symbols, one example per row, no padding."""
        return dataclasses.replace(self, packed=False, min_len=length, max_len=length,
                                   seq_len=self.example_len(length))

    def generate(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        T = self.seq_len
        lens, rows, starts, cut = self._placement(n, generator)  # [M] each; cut: [N]
        width = T + self.example_len(self.max_len)  # room for the example cut at the row's end
        dtype = small_int_dtype(self.vocab_size)  # holds every token and IGNORE
        inputs = torch.full((n, width), self.pad, dtype=dtype)
        targets = torch.full((n, width), IGNORE, dtype=dtype)
        base = rows * width + starts  # [M] flat offset of each example
        order = lens.to(torch.int16).argsort(stable=True)  # narrow keys sort several times faster
        counts = torch.bincount(lens - self.min_len, minlength=self.max_len - self.min_len + 1)
        for L, idx in enumerate(order.split(counts.tolist()), start=self.min_len):
            if len(idx) == 0:
                continue
            tokens, first = self._examples(L, len(idx), generator, dtype)  # [m, W]
            W = tokens.shape[1]
            # Row b of unfold(0, W, 1) is the flat run [b, b + W): one index per example,
            # not per token (these runs never overlap, since examples do not).
            at = base[idx]
            inputs.view(-1).unfold(0, W, 1)[at] = tokens
            targets.view(-1).unfold(0, W - first - 1, 1)[at + first] = tokens[:, first + 1:]
        # The example cut at a row's end carries no targets.
        rest = targets.view(-1).unfold(0, width - T, 1)  # room for the longest example
        rest[torch.arange(n) * width + cut] = IGNORE
        return inputs[:, :T].long(), targets[:, :T].long()  # [N, T]

    def _placement(self, n: int, g: torch.Generator):
        """Per placed example (flattened): string length, row, start column; and per row the
        start of the example cut at its end (``seq_len`` when none is)."""
        lo, hi, T = self.min_len, self.max_len + 1, self.seq_len
        if not self.packed:
            lens = torch.randint(lo, hi, (n,), generator=g)
            return lens, torch.arange(n), torch.zeros(n, dtype=torch.long), \
                torch.full((n,), T, dtype=torch.long)
        per_row = -(-T // self.example_len(self.min_len))  # enough to fill a row
        lens = torch.randint(lo, hi, (n, per_row), generator=g, dtype=torch.int16)  # [N, E]
        ex = self.example_len(lens)
        end = ex.cumsum(1, dtype=torch.int32)
        start = end - ex
        on = start < T
        placed = on.view(-1).nonzero()[:, 0]  # [M] flat (row, slot)
        cut = torch.where(on & (end > T), start, T).amin(1).long()  # [N]
        return (lens.view(-1)[placed].long(), placed // per_row, start.view(-1)[placed].long(),
                cut)

    def _examples(self, L: int, m: int, g: torch.Generator, dtype: torch.dtype):
        """``m`` examples with strings of length ``L``: tokens ``[m, W]`` and the column of the
        first supervised position."""
        def col(v: int) -> torch.Tensor:
            return torch.full((m, 1), v, dtype=dtype)

        if self.variant == "copy":
            s = torch.randint(0, self.alphabet, (m, L), generator=g, dtype=dtype)
            return torch.cat([col(self.bos), s, col(self.sep), s, col(self.eos)], 1), L + 1
        n, k = self.ngram_len, self.answer_len
        s, p = self._strings_with_unique_ngram(L, m, g, dtype)
        gram = s.gather(1, p[:, None] + torch.arange(n))  # [m, n]
        answer = s.gather(1, p[:, None] + n + torch.arange(k))  # [m, k]
        tokens = torch.cat([col(self.bos), gram, col(self.sep), s, col(self.sep), answer,
                            col(self.eos)], 1)
        return tokens, n + L + 2

    def _strings_with_unique_ngram(self, L: int, m: int, g: torch.Generator,
                                   dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Strings ``[m, L]`` and the start ``p [m]`` of an n-gram that occurs exactly once in
        its string and is followed by at least ``answer_len`` symbols."""
        n, k = self.ngram_len, self.answer_len
        windows = L - n + 1
        s = torch.randint(0, self.alphabet, (m, L), generator=g, dtype=dtype)
        p = torch.empty(m, dtype=torch.long)
        todo = torch.arange(m)
        for _ in range(_MAX_REDRAWS):
            codes = ngram_codes(s[todo].long(), n, self.alphabet)  # [r, windows]
            once = occurs_once(codes)
            once[:, windows - k:] = False  # no room for the answer after these
            score = torch.rand(once.shape, generator=g).masked_fill_(~once, -1.0)
            best, choice = score.max(1)
            found = best >= 0
            p[todo[found]] = choice[found]
            todo = todo[~found]
            if len(todo) == 0:
                return s, p
            s[todo] = torch.randint(0, self.alphabet, (len(todo), L), generator=g, dtype=dtype)
        raise ValueError(f"copying: strings of length {L} over {self.alphabet} symbols almost "
                         f"never hold an n-gram of ngram_len={self.ngram_len} that occurs once; "
                         f"raise ngram_len")

    def oracle(self, inputs: torch.Tensor) -> torch.Tensor:
        """A causal solver: at each position it reads only that position and earlier ones."""
        x = inputs
        t = torch.arange(x.shape[1])
        bos = last_position(x == self.bos)  # [N, T] start of the current example
        sep = last_position(x == self.sep)  # [N, T] its latest SEP
        step = t - sep  # 0 at the SEP before the answer
        eos = torch.full_like(x, self.eos)
        if self.variant == "copy":
            L = sep - bos - 1
            src = (bos + 1 + step).clamp(0, x.shape[1] - 1)
            return torch.where(step < L, x.gather(1, src), eos)
        n = self.ngram_len
        codes = ngram_codes(x, n, self.vocab_size + 1, pad=self.vocab_size)  # [N, T] per start
        key = codes.gather(1, (bos + 1).clamp(0, x.shape[1] - 1))  # the key's code, per position
        is_sep = (x == self.sep).long()
        seps_since_bos = is_sep.cumsum(1) - is_sep.cumsum(1).gather(1, bos.clamp(min=0))
        # an occurrence of the key in s: after the first SEP, made of symbols only
        found = last_position((codes == key) & (seps_since_bos == 1))  # [N, T]
        src = (found + n + step).clamp(0, x.shape[1] - 1)
        return torch.where(step < self.answer_len, x.gather(1, src), eos)


def small_int_dtype(vocab_size: int) -> torch.dtype:
    """The narrowest integer type holding every token and IGNORE: building rows in it and
    widening once at the end is several times faster than working in int64."""
    return torch.int8 if vocab_size <= 127 else torch.int16 if vocab_size <= 32767 else torch.int32


def occurs_once(codes: torch.Tensor) -> torch.Tensor:
    """``[N, P]`` bool: whether each value occurs exactly once in its row (sort, compare
    neighbours, map back)."""
    ranked, order = codes.sort(1)
    differs = ranked[:, 1:] != ranked[:, :-1]  # [N, P-1]
    edge = torch.ones_like(differs[:, :1])
    single = torch.cat([edge, differs], 1) & torch.cat([differs, edge], 1)  # [N, P]
    return torch.empty_like(single).scatter_(1, order, single)


def ngram_codes(x: torch.Tensor, n: int, base: int, pad: int | None = None) -> torch.Tensor:
    """The n-gram starting at each position as one integer (tokens as digits in ``base``):
    ``[N, T - n + 1]``, or ``[N, T]`` with the windows that run off the end filled by ``pad``."""
    if pad is not None:
        x = torch.cat([x, x.new_full((x.shape[0], n - 1), pad)], 1)
    width = x.shape[1] - n + 1
    codes = torch.zeros(x.shape[0], width, dtype=torch.long)
    for i in range(n):  # n steps, not N
        codes = codes * base + x[:, i:i + width]
    return codes
