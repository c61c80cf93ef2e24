"""What every task shares: the task registry, split seeds, the leakage check and metrics.

A task is a small dataclass of knobs with a vectorised ``generate(n, generator)`` returning
``inputs [N, T] long`` and ``targets [N, T] long`` with ``IGNORE`` (-100) where no loss and no
metric apply. ``at_length(T)`` gives the same task at another length (the length-
generalisation protocol), scaling the knobs that the task ties to ``T``.

A continuous task (``ContinuousTask``: in-context regression, mixtures) instead returns real
``inputs [N, T, d_in]``, real ``targets [N, T, d_out]`` and a ``mask [N, T]`` of the positions
scored, and names its own loss and metrics (``loss``, ``counts``, ``rates``): the model reads it
in and out with linear maps (``io``) instead of an embedding and a tied head.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
from typing import Any, Callable, ClassVar, Iterator

import torch

IGNORE = -100
SPLITS = ("train", "val", "test")
_TASKS: dict[str, type["Task"]] = {}


def register_task(name: str) -> Callable[[type], type]:
    def wrap(cls: type) -> type:
        if name in _TASKS:
            raise ValueError(f"task {name!r} is registered twice")
        cls.name = name
        _TASKS[name] = cls
        return cls

    return wrap


def names() -> list[str]:
    return sorted(_TASKS)


def knobs(name: str) -> dict[str, Any]:
    """The knobs of a task with their defaults (fields a task derives, ``init=False``, are
    not knobs: a continuous task's ``vocab_size``, an in-context task's ``seq_len``)."""
    cls = _get(name)
    return {f.name: f.default for f in dataclasses.fields(cls) if f.init}


def nullable(name: str) -> set[str]:
    """The knobs of a task that also take None (annotated ``| None``), whatever their default
    (lm's ``max_files``: 200, or null for every file)."""
    return {f.name for f in dataclasses.fields(_get(name)) if f.init and "None" in str(f.type)}


def _get(name: str) -> type["Task"]:
    try:
        return _TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(names())}") from None


def build(name: str, **kw: Any) -> "Task":
    """Instantiate a task, failing on unknown names or knobs (before any generation)."""
    cls = _get(name)
    valid = list(knobs(name))
    unknown = [k for k in kw if k not in valid]
    if unknown:
        raise ValueError(f"{name}: unknown knob(s) {', '.join(map(repr, unknown))}; "
                         f"valid knobs: {', '.join(valid)}")
    return cls(**kw)


@dataclasses.dataclass(frozen=True)
class Task:
    name: ClassVar[str] = ""
    # What the task reports (computed by ``rates``), logged as val/<m>, test/<m> and
    # test/<m>@<variant>; and the validation metric (with its direction) that selects the
    # checkpoint and stops training early unless the config names another.
    metrics: ClassVar[tuple[str, ...]] = ("acc", "exact_match", "loss")
    monitor: ClassVar[tuple[str, str]] = ("acc", "max")
    # Whether the configured early-stopping threshold (an accuracy at which a run counts as
    # solved) applies to ``monitor`` when the config leaves the monitor to the task. An error
    # with no solved level (a regression's MSE) says False: the run then stops on its budget
    # or a plateau, not at the first validation below 0.995.
    threshold_applies: ClassVar[bool] = True
    continuous: ClassVar[bool] = False
    seq_len: int
    vocab_size: int

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the offending knob."""

    @property
    def io(self) -> dict[str, int]:
        """What the model's input and output layers are sized by: a vocabulary here."""
        return {"vocab_size": self.vocab_size}

    def generate(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    @property
    def length(self) -> int:
        """The length this task is trained at, in the units ``at_length`` takes: the sequence
        length unless a task says otherwise (copying counts string length)."""
        return self.seq_len

    def at_length(self, length: int) -> "Task":
        return dataclasses.replace(self, seq_len=length)

    def for_split(self, split: str) -> "Task":
        """The task whose ``generate`` draws ``split``. A synthetic task draws every split
        from one distribution (disjoint seed streams keep them apart), so it is itself; a task
        over a fixed corpus (``lm``) gives its view of that split's documents."""
        return self

    def eval_variants(self) -> dict[str, "Task"]:
        """Extra test sets beyond other lengths (e.g. ``{"ood": ...}`` for unseen distances),
        each reported as ``test/acc@<name>``."""
        return {}

    def oracle(self, inputs: torch.Tensor) -> torch.Tensor:
        """Predictions of a perfect solver at every position ([N, T] long); tests only need
        them to be right where targets are supervised."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class ContinuousTask(Task):
    """A task of real vectors: ``generate`` returns ``inputs [N, T, d_in]``, ``targets
    [N, T, d_out]`` (fp32) and ``mask [N, T]`` (bool, the positions with a loss and a
    metric). The model reads ``d_in`` and writes ``d_out`` through linear maps (``io``), and
    the task scores it:

    - ``loss(pred [M, d_out], target [M, d_out])``: the training loss at the masked positions;
    - ``counts(pred [N, T, d_out], targets, mask, prefix, slices)``: sums (over positions) that
      add up over batches and data-parallel ranks, keyed ``<prefix><count>[@<slice>]``;
    - ``rates(counts)``: the metrics from those sums (micro averages), keyed
      ``<prefix><metric>[@<slice>]``; ``@n=<i>`` slices are reported as ``test/<m>@n=<i>``;
    - ``baselines(inputs, mask)``: reference estimators' predictions on the same inputs
      (``{name: pred [N, T, d_out]}``), scored on every test set as ``<name>_<metric>``.
    """
    metrics: ClassVar[tuple[str, ...]] = ("mse", "loss")
    monitor: ClassVar[tuple[str, str]] = ("mse", "min")
    threshold_applies: ClassVar[bool] = False
    continuous: ClassVar[bool] = True
    vocab_size: int = dataclasses.field(default=0, init=False, repr=False)  # no vocabulary

    @property
    def d_in(self) -> int:
        raise NotImplementedError

    @property
    def d_out(self) -> int:
        raise NotImplementedError

    @property
    def io(self) -> dict[str, int]:
        return {"d_in": self.d_in, "d_out": self.d_out}

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def counts(self, pred: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
               prefix: str = "", slices: bool = False) -> dict[str, float]:
        raise NotImplementedError

    def rates(self, counts: dict[str, float]) -> dict[str, float]:
        raise NotImplementedError

    def baselines(self, inputs: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}


def last_position(mask: torch.Tensor) -> torch.Tensor:
    """``[N, T]``: the index of the last True at or before each position, -1 before the first.
    Lets oracles parse a row causally (which example, which segment a position is in)."""
    t = torch.arange(mask.shape[1], device=mask.device)
    return torch.where(mask, t, -1).cummax(1).values


def split_seed(seed: int, split: str, seq_len: int) -> int:
    """Disjoint seed streams: a stable hash of (seed, split, length) into 63 bits."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not one of {SPLITS}")
    digest = hashlib.sha256(f"{seed}/{split}/{seq_len}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def make_split(task: Task, n: int, seed: int, split: str) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(split_seed(seed, split, task.seq_len))
    with single_threaded():
        return task.for_split(split).generate(n, g)


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch ops on one thread, then restore the setting. Generation is memory-bound:
    on a shared CPU its parallel regions wait on threads the OS has descheduled. Measured on
    2 shared cores (load ~4), 100k examples: copying 0.70 s on one thread against 1.2-2.3 s
    on two, and every other task faster on one too (zoo.bench gen)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def row_hashes(x: torch.Tensor) -> torch.Tensor:
    """A 64-bit hash per row of a long tensor (wrapping polynomial hash, two bases mixed); a
    real tensor ``[N, ...]`` is hashed by the bits of its fp32 values, so equal rows collide."""
    if x.is_floating_point():
        x = x.float().reshape(len(x), -1).contiguous().view(torch.int32)
    x = x.long() + 1
    T = x.shape[1]
    exps = torch.arange(T, dtype=torch.long)
    h1 = (x * _powers(1_000_003, exps)).sum(1)
    h2 = (x * _powers(998_244_353, exps)).sum(1)
    return h1 ^ (h2 * 0x9E3779B1)


def _powers(base: int, exps: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(exps)
    acc = 1
    for i in range(len(exps)):  # T steps, not N: cheap
        out[i] = acc
        acc = (acc * base) & 0xFFFFFFFFFFFFFFFF
        if acc >= 1 << 63:
            acc -= 1 << 64
    return out


def leakage(train_inputs: torch.Tensor, other_inputs: torch.Tensor) -> int:
    """How many rows of ``other_inputs`` also occur in ``train_inputs``."""
    if train_inputs.shape[1:] != other_inputs.shape[1:]:
        return 0
    return int(torch.isin(row_hashes(other_inputs), row_hashes(train_inputs)).sum())


def predictions_at(targets: torch.Tensor, preds_flat: torch.Tensor) -> torch.Tensor:
    """Scatter predictions made at supervised positions back into an [N, T] tensor."""
    out = torch.full_like(targets, IGNORE)
    out[targets != IGNORE] = preds_flat
    return out


def accuracy_counts(preds: torch.Tensor, targets: torch.Tensor) -> dict[str, int]:
    """Counts for token accuracy (micro average over supervised positions) and exact match
    (every supervised position of an example right); sums of these combine across batches."""
    mask = targets != IGNORE
    correct = (preds == targets) & mask
    has_label = mask.any(1)
    exact = (correct.sum(1) == mask.sum(1)) & has_label
    return {"correct": int(correct.sum()), "total": int(mask.sum()),
            "exact": int(exact.sum()), "examples": int(has_label.sum())}


def rates(counts: dict[str, float]) -> dict[str, float]:
    """Metrics from summed counts; with ``nll`` (the summed token negative log-likelihood)
    also the mean token loss and the perplexity ``exp(loss)``."""
    out = {"acc": counts["correct"] / max(counts["total"], 1),
           "exact_match": counts["exact"] / max(counts["examples"], 1)}
    if "nll" in counts:
        out["loss"] = counts["nll"] / max(counts["total"], 1)
        out["ppl"] = math.exp(out["loss"]) if out["loss"] < 700 else math.inf  # no overflow
    return out


def sample_distinct(n_rows: int, k: int, low: int, high: int, generator: torch.Generator,
                    ordered: bool = False) -> torch.Tensor:
    """``[n_rows, k]`` integers from ``[low, high)``, distinct within each row, in random order
    (increasing with ``ordered``).

    Small ``k`` against the range: redraw rows that repeat a value. Moderate ``k``: redraw
    just the repeated entries, then shuffle. ``k`` a large fraction of the range: a per-row
    random permutation.
    """
    span = high - low
    if k > span:
        raise ValueError(f"cannot draw {k} distinct values from a range of {span}")
    if 4 * k > span:
        out = torch.empty(n_rows, k, dtype=torch.long)
        step = max(1, (1 << 24) // span)
        for s in range(0, n_rows, step):
            m = min(step, n_rows - s)
            out[s:s + m] = torch.rand(m, span, generator=generator).argsort(1)[:, :k] + low
        return out.sort(1).values if ordered else out
    if k * k <= span:
        # Few collisions expected: redraw whole rows that repeat a value. Uniform over
        # ordered tuples of distinct values, so no shuffle is needed afterwards.
        x = torch.randint(low, high, (n_rows, k), generator=generator)
        bad = torch.arange(n_rows)
        while len(bad):
            rows = x[bad]
            same = rows[:, :, None] == rows[:, None, :]  # [n_bad, k, k]
            repeats = same.sum((1, 2)) > k
            bad = bad[repeats]
            x[bad] = torch.randint(low, high, (len(bad), k), generator=generator)
        return x.sort(1).values if ordered else x
    x = torch.randint(low, high, (n_rows, k), generator=generator)
    while True:
        x, _ = x.sort(1)
        dup = torch.zeros_like(x, dtype=torch.bool)
        dup[:, 1:] = x[:, 1:] == x[:, :-1]
        n_dup = int(dup.sum())
        if n_dup == 0:
            break
        x[dup] = torch.randint(low, high, (n_dup,), generator=generator)
    if ordered:
        return x
    order = torch.rand(n_rows, k, generator=generator).argsort(1)
    return x.gather(1, order)
