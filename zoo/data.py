"""The DataModule: splits from disjoint seed streams, eval lengths, the leakage check.

Whole splits are generated once as tensors; batches are sliced from them with no per-example
Python (``__getitems__`` hands the loader a whole batch at once). With ``fresh=True`` the
training split is instead an endless stream (``FreshBatches``): every step draws new examples,
so a run cannot memorise its training set; validation and test stay fixed.
"""

from __future__ import annotations

import hashlib

from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

import tasks
from .config import DATA_KEYS, split_task_config  # noqa: F401 - re-exported


class TensorPairs(Dataset):
    """Rows of a split: ``(inputs, targets)``, or a continuous task's ``(inputs, targets,
    mask)``; each item and batch is the same tuple of its rows."""

    def __init__(self, *tensors: torch.Tensor) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        return tuple(t[i] for t in self.tensors)

    def __getitems__(self, idx: list[int]) -> tuple[torch.Tensor, ...]:
        idx_t = torch.as_tensor(idx)
        return tuple(t[idx_t] for t in self.tensors)


def _identity(batch: Any) -> Any:
    return batch


class FreshBatches(IterableDataset):
    """Training batches drawn from the task's generator as they are needed.

    Drawn in blocks of ``block`` batches (one vectorised ``generate`` call each); block ``i``
    of data-parallel rank ``r`` has its own seed, derived from the run's training seed stream,
    so the stream is deterministic and a resumed run continues it from its step. A drawn row
    that equals a validation or test row is dropped from its batch (counted in ``leaked``), so
    held-out examples are never trained on.
    """

    def __init__(self, task: tasks.Task, seed: int, batch_size: int, *, start_step: int = 0,
                 rank: int = 0, held_out: dict[str, torch.Tensor] | None = None,
                 block: int = 64) -> None:
        self.task, self.batch_size, self.block = task.for_split("train"), batch_size, block
        self.base = tasks.split_seed(seed, "train", task.seq_len)
        self.start_step, self.rank = start_step, rank
        self.held_out = {k: tasks.row_hashes(v) for k, v in (held_out or {}).items()}
        self.leaked = {k: 0 for k in self.held_out}

    def _block(self, i: int) -> tuple[torch.Tensor, ...]:
        digest = hashlib.sha256(f"{self.base}/{self.rank}/{i}".encode()).digest()
        g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
        with tasks.single_threaded():
            return self.task.generate(self.block * self.batch_size, g)

    def __iter__(self):
        i, skip = divmod(self.start_step, self.block)
        while True:
            parts = self._block(i)  # (inputs, targets[, mask])
            x = parts[0]
            keep = torch.ones(len(x), dtype=torch.bool)
            if self.held_out:
                h = tasks.row_hashes(x)
                for k, held in self.held_out.items():
                    hit = torch.isin(h, held)
                    self.leaked[k] += int(hit.sum())
                    keep &= ~hit
            for b in range(skip, self.block):
                rows = slice(b * self.batch_size, (b + 1) * self.batch_size)
                yield tuple(p[rows][keep[rows]] for p in parts)
            i, skip = i + 1, 0


class TaskDataModule(L.LightningDataModule):
    def __init__(self, task: tasks.Task, *, seed: int = 0, num_train: int = 100_000,
                 num_val: int = 2_000, num_test: int = 3_000, batch_size: int = 64,
                 eval_batch_size: int | None = None,
                 eval_lengths: list[int] | None = None, fresh: bool = False) -> None:
        super().__init__()
        for knob, value in (("num_train", num_train), ("num_val", num_val),
                            ("num_test", num_test), ("batch_size", batch_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"task.{knob} must be a positive int, got {value!r}")
        self.task, self.seed = task, seed
        self.num_train, self.num_val, self.num_test = num_train, num_val, num_test
        self.batch_size, self.fresh = batch_size, fresh
        self.eval_batch_size = eval_batch_size or 4 * batch_size
        # the trained length first, whatever the order given: it is the unsuffixed test/<m>
        self.eval_lengths = [task.length, *(n for n in eval_lengths or [] if n != task.length)]
        # Validate every test variant now, before any generation or training. Names become
        # metric suffixes: test/acc@len=64, test/acc@ood; the training length comes first.
        self.eval_tasks = {f"len={L_}": task.at_length(L_) for L_ in self.eval_lengths}
        self.eval_variants = task.eval_variants()
        self.eval_tasks.update(self.eval_variants)
        self._leakage: dict[str, int] = {}
        self._splits: dict[str, Any] = {}
        self._fresh: FreshBatches | None = None

    def setup(self, stage: str | None = None) -> None:
        if self._splits:
            return
        val = tasks.make_split(self.task, self.num_val, self.seed, "val")
        tests = {name: tasks.make_split(t, self.num_test, self.seed, "test")
                 for name, t in self.eval_tasks.items()}
        self._splits = {"val": val, "test": tests}
        if not self.fresh:
            train = tasks.make_split(self.task, self.num_train, self.seed, "train")
            self._splits["train"] = train
            self._leakage = {"val": tasks.leakage(train[0], val[0]),
                             "test": tasks.leakage(train[0], tests[self.eval_names[0]][0])}

    @property
    def leakage(self) -> dict[str, int]:
        """Held-out rows that occur in training: of the fixed training split, or (fresh data)
        drawn by the stream and dropped from their batches before any step saw them."""
        if self._fresh is not None:
            return dict(self._fresh.leaked)
        return dict(self._leakage) if self._leakage else {"val": 0, "test": 0}

    @property
    def eval_names(self) -> list[str]:
        return list(self.eval_tasks)

    def check_world_size(self, world_size: int) -> None:
        """``batch_size`` is the global batch: each of ``world_size`` data-parallel processes
        takes an equal share, so a DDP run steps like a single process of the same batch."""
        if self.batch_size % world_size:
            raise ValueError(f"task.batch_size={self.batch_size} (the global batch) is not "
                             f"divisible by the {world_size} data-parallel processes")

    def _loader(self, pair: tuple[torch.Tensor, ...], batch_size: int,
                shuffle: bool) -> DataLoader:
        world = self.trainer.world_size if self.trainer is not None else 1
        return DataLoader(TensorPairs(*pair), batch_size=max(1, batch_size // world),
                          shuffle=shuffle, collate_fn=_identity, num_workers=0)

    def train_dataloader(self) -> DataLoader:
        if not self.fresh:
            return self._loader(self._splits["train"], self.batch_size, shuffle=True)
        trainer = self.trainer
        world = trainer.world_size if trainer is not None else 1
        held = {"val": self._splits["val"][0],
                "test": self._splits["test"][self.eval_names[0]][0]}
        self._fresh = FreshBatches(self.task, self.seed, max(1, self.batch_size // world),
                                   start_step=trainer.global_step if trainer is not None else 0,
                                   rank=trainer.global_rank if trainer is not None else 0,
                                   held_out=held)
        return DataLoader(self._fresh, batch_size=None, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._splits["val"], self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(self._splits["test"][name], self.eval_batch_size, shuffle=False)
                for name in self.eval_names]
