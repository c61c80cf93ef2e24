"""Torch-free helpers over a resolved training config (a plain dict): which task keys size the
data rather than define the task. Lives apart from ``zoo.data`` so that reading records and
validating a config never import Lightning."""

from __future__ import annotations

from typing import Any

# Keys of a task config that size or feed the data rather than define the task.
DATA_KEYS = ("num_train", "num_val", "num_test", "batch_size", "eval_lengths", "eval_batch_size",
             "fresh")


def split_task_config(cfg: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """A task config -> (name, generator knobs, data sizes)."""
    cfg = dict(cfg)
    name = cfg.pop("name")
    sizes = {k: cfg.pop(k) for k in DATA_KEYS if k in cfg}
    return name, cfg, sizes
