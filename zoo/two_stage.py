"""Two-stage sweeps: the learning rate of a run taken from a first, shorter stage.

A sweep whose full grid would cost too much trains every learning rate for a short budget
(stage 1, its own suite), then trains the full budget only at the rate that stage chose on
validation (stage 2: ``lr_from=<stage-1 suite>``). Stage 1's runs of "this config" are those
that differ from it only in what a stage sets: the learning rate, the seed, the trainer's
budget and early stopping. Their rate with the best mean validation score (the best
validation value of each run, the one its tested checkpoint had) wins; among rates that tie,
the one that got there in fewer steps.

The budget ladder: a run that stopped at its step cap while still improving was set by its
budget, not its architecture. ``extend=true`` trains the same config and seed again at a larger
cap only where the longest shorter run did that (``to_extend``); its record names the run it
``extends``, and the leaderboard counts it in that run's place (``zoo.selection``).

Widening the grid: a best rate at an edge of stage 1's grid that did not solve the task may sit
beyond it. ``lr_edge=true`` trains a stage-1 run only where its rate is the next step beyond
that edge (``edge_rate``), in stage 1's suite, so stage 2 selects over the wider grid.
Torch-free: it reads records only.
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


def _rate_scores(config: dict[str, Any], results_dir: str | Path, suite: str, metric: str,
                 mode: str, without: float | None = None
                 ) -> dict[float, tuple[float, float, list[str]]]:
    """Rate -> (mean best validation value, mean step of it, run ids) over the completed runs
    of ``config`` (up to ``stage_key``) in ``suite``, leaving out the runs at rate ``without``."""
    key = stage_key(config)
    records, _ = load_records(results_dir)
    by_lr: dict[float, list[tuple[float, int, str]]] = {}
    for r in records:
        cfg = r.get("config")
        if (r.get("status") != "completed" or not isinstance(cfg, dict)
                or cfg.get("suite") != suite or stage_key(cfg) != key
                or float(cfg["optim"]["lr"]) == without):
            continue
        best = _best(r, metric, mode)
        if best is not None:
            by_lr.setdefault(float(cfg["optim"]["lr"]), []).append((*best, r["run_id"]))
    return {lr: (statistics.fmean(v for v, _, _ in runs), statistics.fmean(s for _, s, _ in runs),
                 [rid for _, _, rid in runs]) for lr, runs in by_lr.items()}


def _best_rate(scores: dict[float, tuple[float, float, list[str]]], mode: str) -> float:
    """The best mean validation value; among ties the faster, then the lower rate."""
    sign = 1 if mode == "max" else -1
    return max(scores, key=lambda k: (sign * scores[k][0], -scores[k][1], -k))


def select_lr(config: dict[str, Any], results_dir: str | Path, suite: str, metric: str,
              mode: str) -> tuple[float, dict[str, Any]]:
    """The stage-1 learning rate for ``config`` and the evidence (rates, scores, run ids).
    Raises LookupError when stage 1 has no completed run of this config."""
    scores = _rate_scores(config, results_dir, suite, metric, mode)
    if not scores:
        raise LookupError(f"no completed run of this config in suite {suite!r} under "
                          f"{results_dir}/: run that stage first")
    lr = _best_rate(scores, mode)
    evidence = {"suite": suite, "metric": f"val/{metric}", "selected": lr,
                "rates": {str(k): {"mean_best": scores[k][0], "mean_step_of_best": scores[k][1],
                                   "runs": scores[k][2]}
                          for k in sorted(scores)}}
    return lr, evidence


# Widening the grid: where stage 1's best rate sits at an edge of its grid and did not solve the
# task, the next rate beyond that edge is trained too (``lr_edge=true``), in the same suite, so
# that select_lr sees it.
STEP_SLACK = 1.15


def edge_rate(config: dict[str, Any], results_dir: str | Path, metric: str,
              mode: str) -> tuple[bool, str]:
    """For an ``lr_edge=true`` stage-1 run: whether its rate is the next step beyond the edge
    of the rates its config already has in its suite (completed runs, other rates) where the
    best of them (``select_lr``'s rule) sits without having solved the task (its mean best
    validation value short of ``early_stopping.stopping_threshold``), with a sentence that
    says why. "Next step": beyond the edge by at most the grid's widest step between
    neighbouring rates, give or take rounding (3e-4, 1e-3, 3e-3, 1e-2: 1e-4 and 3e-2, not
    3e-5 or 1e-1)."""
    lr, suite = float(config["optim"]["lr"]), config.get("suite")
    scores = _rate_scores(config, results_dir, suite, metric, mode, without=lr)
    rates = sorted(scores)
    if len(rates) < 2:
        return False, (f"{len(rates)} completed rate(s) of this config in suite {suite!r} under "
                       f"{results_dir}/: the grid needs two to have an edge")
    best = _best_rate(scores, mode)
    value = scores[best][0]
    grid = f"grid {rates[0]:g}..{rates[-1]:g} (best {best:g}, val/{metric} {value:.4g})"
    # the grid's widest step, with room for rounded log spacing (3e-4, 1e-3: steps of 3 and 3.33)
    step = max(b / a for a, b in zip(rates, rates[1:])) * STEP_SLACK
    if rates[0] <= lr <= rates[-1]:
        return False, f"lr {lr:g} lies inside the {grid}"
    edge = rates[-1] if lr > rates[-1] else rates[0]
    if best != edge:
        return False, f"lr {lr:g} lies beyond an edge of the {grid} that is not the best"
    if max(lr / edge, edge / lr) > step:
        return False, (f"lr {lr:g} lies more than one step (x{step:.3g}) beyond the edge "
                       f"of the {grid}")
    threshold = (config.get("early_stopping") or {}).get("stopping_threshold")
    if threshold is not None and (value >= threshold if mode == "max" else value <= threshold):
        return False, f"the best rate of the {grid} solved the task (threshold {threshold:g})"
    return True, (f"the best rate of the {grid} sits at its edge unsolved: training the next "
                  f"step, lr {lr:g}")


# The budget ladder: a run that reached its step cap while still improving is trained again at
# a larger cap (``extend=true``), and the longer run takes its place.
TAIL, MARGIN = 0.2, 0.01  # "still improving": the last 20% of steps beat the rest by 0.01


def still_improving(curve: list, mode: str = "max", tail: float = TAIL,
                    margin: float = MARGIN) -> bool:
    """Whether a validation curve ``[[step, value], ...]`` was still improving at its end: its
    best value in the last ``tail`` of the steps beats the best before them by more than
    ``margin`` (lower is better where ``mode`` is min)."""
    points = [(s, v) for s, v in curve if v is not None]
    if not points:
        return False
    cut = points[-1][0] * (1 - tail)
    sign = 1 if mode == "max" else -1
    before = [sign * v for s, v in points if s <= cut]
    after = [sign * v for s, v in points if s > cut]
    return bool(before and after) and max(after) > max(before) + margin


def cut_short(record: dict[str, Any], mode: str = "max") -> bool:
    """Whether a run stopped at its step cap while still improving (``still_improving``): its
    number was set by its budget. The budget ladder extends such runs (``to_extend``); the
    leaderboard does not publish them until then (``unfinished``)."""
    return (record.get("stop_reason") == "max_steps"
            and still_improving(record.get("val_curve") or [], mode))


def unfinished(records: Any) -> list[tuple[str, dict[str, Any]]]:
    """The counted second-stage records (their preset takes its rate from a first stage,
    ``lr_from``) that stopped at their step cap while still improving, with their paths: numbers
    set by the budget, not the architecture. They are not published: the budget ladder
    (``extend=true``, e.g. ``experiment=frontier/long``) trains them longer first, and the longer
    run is published with them. ``records`` is a ``zoo.reading.Records``."""
    out = []
    for path, rec in records.entries:
        cfg = rec.get("config") or {}
        mode = (cfg.get("early_stopping") or {}).get("mode", "max")
        if records.is_counted(path) and cfg.get("lr_from") and cut_short(rec, mode):
            out.append((path, rec))
    return out


def ladder_key(config: dict[str, Any]) -> str:
    """The identity of a config up to its step cap and early stopping (which a record holds
    resolved: the task's monitor filled in) and bookkeeping: the runs of one config and seed
    at growing budgets."""
    core = {k: v for k, v in config.items() if k not in (*BOOKKEEPING, "early_stopping")}
    core["trainer"] = {k: v for k, v in (core.get("trainer") or {}).items() if k != "max_steps"}
    return config_key(core)


def ladder_root_steps(record: dict[str, Any]) -> int:
    """The step cap of the first run of a record's ladder (its own, unless it extends one)."""
    extends = record.get("extends") or {}
    return extends.get("root_max_steps", record["config"]["trainer"]["max_steps"])


def to_extend(config: dict[str, Any], results_dir: str | Path,
              mode: str) -> tuple[dict[str, Any] | None, str]:
    """For an ``extend=true`` run: the longest completed run of the same config and seed at a
    smaller step cap, when it stopped at its cap while still improving, with a sentence that
    says why; ``(None, why not)`` when there is nothing to extend."""
    key, cap = ladder_key(config), config["trainer"]["max_steps"]
    records, _ = load_records(results_dir)
    shorter = [r for r in records if r.get("status") == "completed"
               and isinstance(r.get("config"), dict)
               and (r["config"].get("trainer") or {}).get("max_steps", cap) < cap
               and ladder_key(r["config"]) == key]
    if not shorter:
        return None, f"no completed run of this config at fewer than {cap} steps to extend"
    prev = max(shorter, key=lambda r: (r["config"]["trainer"]["max_steps"], str(r["run_id"])))
    steps = prev["config"]["trainer"]["max_steps"]
    if cut_short(prev, mode):
        return prev, (f"run {prev['run_id']} stopped at its cap of {steps} steps while still "
                      f"improving: trained again to {cap}")
    return None, (f"run {prev['run_id']} converged at {steps} steps "
                  f"({prev.get('stop_reason')}): nothing to extend")
