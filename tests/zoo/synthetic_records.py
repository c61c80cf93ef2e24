"""Synthetic run records for the leaderboard's tests (no training): the shape zoo.train writes,
with each layer's options from its configs/layer file."""

from __future__ import annotations

import copy
import itertools
import math
from typing import Any

from zoo.labels import layer_defaults
from zoo.record import SCHEMA_VERSION

TASKS = {
    "assoc_recall": {"seq_len": 64, "num_kv_pairs": 4, "vocab_size": 8192, "power_a": 0.01,
                     "random_non_queries": True},
    "state_size": {"seq_len": 64, "kv_pairs": [4, 8, 16], "vocab_size": 8192, "power_a": 0.01,
                   "random_non_queries": False},
    "copying": {"seq_len": 23, "min_len": 2, "max_len": 10, "vocab_size": 30},
    "induction": {"seq_len": 64, "vocab_size": 16},
}
# (label the leaderboard should give, layer, layer options, model options, fixed state)
FRONTIER = [
    ("attention", "attention", {}, {}, False),
    ("swa(16)", "swa", {"window": 16}, {}, True),
    ("ssa(pos)", "ssa", {}, {}, False),
    ("cat", "cat", {}, {}, False),
    ("linear_attn", "linear_attn", {}, {}, True),
    ("linear_attn+conv4", "linear_attn", {"short_conv": 4}, {}, True),
    ("gla", "gla", {}, {}, True),
    ("gla+conv4", "gla", {"short_conv": 4}, {}, True),
    ("mamba", "mamba", {}, {}, True),
    ("phalanx", "phalanx", {}, {}, True),
    ("phalanx:attention 1:1", "phalanx", {},
     {"pattern": ["phalanx", "attention"],
      "mixer_options": {"attention": layer_defaults("attention")}}, False),
]


def config(task: str = "assoc_recall", layer: str = "attention", *, lr: float = 1e-3,
           seed: int = 0, suite: str | None = None, d_model: int = 64,
           layer_opts: dict[str, Any] | None = None, **model: Any) -> dict[str, Any]:
    return {
        "task": {"name": task, **copy.deepcopy(TASKS[task]), "num_train": 100, "num_val": 10,
                 "num_test": 10, "batch_size": 32, "eval_lengths": None},
        "layer": {"name": layer, **(layer_defaults(layer) or {}), **(layer_opts or {})},
        "model": {"d_model": d_model, "n_layers": 2, "pattern": None, "mixer_options": {},
                  "channel": "none", "channel_options": {}, "max_positions": 0, **model},
        "optim": {"lr": lr, "weight_decay": 0.1},
        "trainer": {"max_steps": 300},
        "early_stopping": {"monitor": "val/acc", "mode": "max"},
        "seed": seed, "suite": suite, "results_dir": "x", "out_dir": "y",
    }


def record(run_id: str, cfg: dict[str, Any], val: float = 0.5, test: float = 0.5, *,
           status: str = "completed", state: int = 1024, prev: int | None = None,
           **fields: Any) -> dict[str, Any]:
    metrics = {} if status != "completed" else {
        "val/acc": val, "test/acc": test, "test/exact_match": test / 2}
    return {"schema_version": SCHEMA_VERSION, "run_id": run_id, "status": status,
            "time": f"2026-01-01T00:00:{len(run_id) % 60:02d}", "task": cfg["task"]["name"],
            "layer": cfg["layer"]["name"], "config": cfg, "seed": cfg["seed"],
            "metrics": metrics, "params": 1000, "state_size": state,
            "state_size_prev": state if prev is None else prev,
            "throughput_tokens_per_s": 100.0, "wall_time_s": 1.0, "error": None,
            "device": {"processor": "Test CPU", "cpu_count": 2}, **fields}


def frontier(seeds: int = 3, lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3, 1e-2),
             suite: str = "frontier") -> list[dict[str, Any]]:
    """Records shaped like experiment=frontier: every form above at d 32, 64, 128, four
    learning rates at seed 0 and more seeds at the best rate (1e-3); slice accuracy rises with
    the state, ESS and TSS per pair measured per slice."""
    out = []
    for i, (_, layer, opts, model, fixed) in enumerate(FRONTIER):
        for d in (32, 64, 128):
            runs = [(lr, 0) for lr in lrs] + [(1e-3, s) for s in range(1, seeds)]
            for lr, seed in runs:
                cfg = config("state_size", layer, lr=lr, seed=seed, suite=suite, d_model=d,
                             layer_opts=opts, **model)
                state = (4 + i) * d * (1 if fixed else 16)
                quality = (1.0 if lr == 1e-3 else 0.7) * min(1.0, math.log2(state) / 18)
                metrics = {f"test/acc@kv={kv}": quality * (1.1 - kv / 32) for kv in (4, 8, 16)}
                rec = record(f"{suite}-{i:02d}-{d}-{lr:g}-{seed}", cfg, val=quality, test=quality,
                             state=state, prev=state if fixed else state - 2 * d,
                             stop_reason="solved" if quality > 0.9 else "plateau",
                             val_curve=[[100, quality / 2], [200, quality]])
                rec["metrics"].update(metrics)
                rec["ess"] = {"slices": {f"kv={kv}": {
                    "ess_per_kv": state * quality / kv / 8, "tss_per_kv": state / kv,
                    "kv": kv} for kv in (4, 8, 16)}}
                out.append(rec)
    return out


def many(n: int) -> list[dict[str, Any]]:
    """``n`` records over the tier's tasks and the frontier's forms, widths, rates and seeds."""
    grid = itertools.product(range(10_000), TASKS, FRONTIER, (32, 64, 128), (1e-3, 3e-3))
    out = []
    for k, (seed, task, (_, layer, opts, model, fixed), d, lr) in zip(range(n), grid):
        cfg = config(task, layer, lr=lr, seed=seed, suite="big", d_model=d, layer_opts=opts,
                     **model)
        acc = (k * 7919 % 1000) / 1000
        rec = record(f"m{k:05d}", cfg, val=acc, test=acc, state=64 * d,
                     prev=64 * d if fixed else 63 * d, stop_reason="max_steps")
        if task == "state_size":
            rec["metrics"].update({f"test/acc@kv={kv}": acc / kv ** 0.5 for kv in (4, 8, 16)})
            rec["ess"] = {"slices": {f"kv={kv}": {"ess_per_kv": (1 + acc) * d / kv,
                                                  "tss_per_kv": 64 * d / kv} for kv in (4, 8, 16)}}
        out.append(rec)
    return out
