"""The DataModule: splits from disjoint seed streams, eval lengths, the leakage check.

Whole splits are generated once as tensors; batches are sliced from them with no per-example
Python (``__getitems__`` hands the loader a whole batch at once).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

import tasks

# Keys of a task config that size the data rather than define the task.
DATA_KEYS = ("num_train", "num_val", "num_test", "batch_size", "eval_lengths", "eval_batch_size")


class TensorPairs(Dataset):
    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.inputs, self.targets = inputs, targets

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[i], self.targets[i]

    def __getitems__(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx_t = torch.as_tensor(idx)
        return self.inputs[idx_t], self.targets[idx_t]


def _identity(batch: Any) -> Any:
    return batch


def split_task_config(cfg: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """A task config -> (name, generator knobs, data sizes)."""
    cfg = dict(cfg)
    name = cfg.pop("name")
    sizes = {k: cfg.pop(k) for k in DATA_KEYS if k in cfg}
    return name, cfg, sizes


class TaskDataModule(L.LightningDataModule):
    def __init__(self, task: tasks.Task, *, seed: int = 0, num_train: int = 100_000,
                 num_val: int = 2_000, num_test: int = 3_000, batch_size: int = 64,
                 eval_batch_size: int | None = None,
                 eval_lengths: list[int] | None = None) -> None:
        super().__init__()
        for knob, value in (("num_train", num_train), ("num_val", num_val),
                            ("num_test", num_test), ("batch_size", batch_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"task.{knob} must be a positive int, got {value!r}")
        self.task, self.seed = task, seed
        self.num_train, self.num_val, self.num_test = num_train, num_val, num_test
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or 4 * batch_size
        self.eval_lengths = list(eval_lengths or [task.length])
        if task.length not in self.eval_lengths:
            self.eval_lengths.insert(0, task.length)
        # Validate every test variant now, before any generation or training. Names become
        # metric suffixes: test/acc@len=64, test/acc@ood; the training length comes first.
        self.eval_tasks = {f"len={L_}": task.at_length(L_) for L_ in self.eval_lengths}
        self.eval_variants = task.eval_variants()
        self.eval_tasks.update(self.eval_variants)
        self.leakage: dict[str, int] = {}
        self._splits: dict[str, Any] = {}

    def setup(self, stage: str | None = None) -> None:
        if self._splits:
            return
        train = tasks.make_split(self.task, self.num_train, self.seed, "train")
        val = tasks.make_split(self.task, self.num_val, self.seed, "val")
        tests = {name: tasks.make_split(t, self.num_test, self.seed, "test")
                 for name, t in self.eval_tasks.items()}
        self._splits = {"train": train, "val": val, "test": tests}
        self.leakage = {"val": tasks.leakage(train[0], val[0]),
                        "test": tasks.leakage(train[0], tests[self.eval_names[0]][0])}

    @property
    def eval_names(self) -> list[str]:
        return list(self.eval_tasks)

    def check_world_size(self, world_size: int) -> None:
        """``batch_size`` is the global batch: each of ``world_size`` data-parallel processes
        takes an equal share, so a DDP run steps like a single process of the same batch."""
        if self.batch_size % world_size:
            raise ValueError(f"task.batch_size={self.batch_size} (the global batch) is not "
                             f"divisible by the {world_size} data-parallel processes")

    def _loader(self, pair: tuple[torch.Tensor, torch.Tensor], batch_size: int,
                shuffle: bool) -> DataLoader:
        world = self.trainer.world_size if self.trainer is not None else 1
        return DataLoader(TensorPairs(*pair), batch_size=max(1, batch_size // world),
                          shuffle=shuffle, collate_fn=_identity, num_workers=0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self._splits["train"], self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._splits["val"], self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(self._splits["test"][name], self.eval_batch_size, shuffle=False)
                for name in self.eval_names]
