"""Two-stage sweeps: the learning rate of a run taken from a first, shorter stage.

A sweep whose full grid would cost too much trains every learning rate for a short budget
(stage 1, its own suite), then trains the full budget only at the rate that stage chose on
validation (stage 2: ``lr_from=<stage-1 suite>``). Stage 1's runs of "this config" are those
that differ from it only in what a stage sets: the learning rate, the seed, the trainer's
budget and early stopping. Their rate with the best mean validation score (the best
validation value of each run, the one its tested checkpoint had) wins; among rates that tie,
the one that got there in fewer steps. Torch-free: it reads records only.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from .record import BOOKKEEPING, config_key, load_records

# What a stage may change without changing "the config" whose learning rate is chosen.
STAGE_KEYS = ("seed", "trainer", "early_stopping")


def stage_key(config: dict[str, Any]) -> str:
    """The identity of a config up to its learning rate and its stage's settings."""
    core = {k: v for k, v in config.items() if k not in (*STAGE_KEYS, *BOOKKEEPING)}
    core["optim"] = {k: v for k, v in (core.get("optim") or {}).items() if k != "lr"}
    return config_key(core)


def _best(record: dict[str, Any], metric: str, mode: str) -> tuple[float, int] | None:
    """A run's best validation value and the step it was first reached."""
    curve = [(s, v) for s, v in record.get("val_curve") or [] if v is not None]
    if not curve:
        v = (record.get("metrics") or {}).get(f"val/{metric}")
        return None if v is None else (v, record.get("steps") or 0)
    pick = max if mode == "max" else min
    best = pick(v for _, v in curve)
    return best, next(s for s, v in curve if v == best)


def select_lr(config: dict[str, Any], results_dir: str | Path, suite: str, metric: str,
              mode: str) -> tuple[float, dict[str, Any]]:
    """The stage-1 learning rate for ``config`` and the evidence (rates, scores, run ids).
    Raises LookupError when stage 1 has no completed run of this config."""
    key = stage_key(config)
    records, _ = load_records(results_dir)
    by_lr: dict[float, list[tuple[float, int, str]]] = {}
    for r in records:
        cfg = r.get("config")
        if (r.get("status") != "completed" or not isinstance(cfg, dict)
                or cfg.get("suite") != suite or stage_key(cfg) != key):
            continue
        best = _best(r, metric, mode)
        if best is not None:
            by_lr.setdefault(float(cfg["optim"]["lr"]), []).append((*best, r["run_id"]))
    if not by_lr:
        raise LookupError(f"no completed run of this config in suite {suite!r} under "
                          f"{results_dir}/: run that stage first")
    sign = 1 if mode == "max" else -1
    scores = {lr: (statistics.fmean(v for v, _, _ in runs),
                   statistics.fmean(s for _, s, _ in runs)) for lr, runs in by_lr.items()}
    lr = max(scores, key=lambda k: (sign * scores[k][0], -scores[k][1], -k))
    evidence = {"suite": suite, "metric": f"val/{metric}", "selected": lr,
                "rates": {str(k): {"mean_best": scores[k][0], "mean_step_of_best": scores[k][1],
                                   "runs": [rid for _, _, rid in by_lr[k]]}
                          for k in sorted(by_lr)}}
    return lr, evidence
