"""Two-stage sweeps: stage 2 takes the learning rate stage 1 chose on validation."""

import copy
import json

import pytest

from zoo.record import write_record
from zoo.two_stage import select_lr, stage_key

BASE = {"task": {"name": "state_size", "seq_len": 64}, "model": {"d_model": 64},
        "layer": {"name": "gla"}, "optim": {"lr": 1e-3, "weight_decay": 0.1}, "seed": 0,
        "trainer": {"max_steps": 1000}, "early_stopping": {"patience": 5}, "suite": "s1"}


def _record(tmp_path, n, lr, curve, seed=0, status="completed", **changes):
    cfg = copy.deepcopy(BASE)
    cfg["optim"]["lr"], cfg["seed"] = lr, seed
    for k, v in changes.items():
        cfg[k] = v
    rec = {"schema_version": 1, "run_id": f"r{n}", "status": status, "time": "", "task":
           "state_size", "layer": "gla", "config": cfg, "seed": seed, "metrics": {},
           "val_curve": curve, "steps": curve[-1][0] if curve else 0}
    write_record(tmp_path, rec)


def test_stage_key_ignores_only_what_a_stage_sets():
    other = copy.deepcopy(BASE)
    other["optim"]["lr"], other["seed"], other["trainer"] = 1e-2, 2, {"max_steps": 5000}
    other["suite"], other["lr_from"] = "s2", "s1"
    assert stage_key(other) == stage_key(BASE)
    wider = copy.deepcopy(BASE)
    wider["model"]["d_model"] = 128
    decayed = copy.deepcopy(BASE)
    decayed["optim"]["weight_decay"] = 0.0
    assert len({stage_key(BASE), stage_key(wider), stage_key(decayed)}) == 3


def test_selects_the_best_validation_rate_and_breaks_ties_by_speed(tmp_path):
    _record(tmp_path, 1, 1e-3, [[100, 0.2], [200, 0.5]])
    _record(tmp_path, 2, 3e-3, [[100, 0.6], [200, 0.995]])
    _record(tmp_path, 3, 1e-2, [[100, 0.995], [200, 0.3]])  # best 0.995, reached sooner
    _record(tmp_path, 4, 3e-4, [[100, 1.0]], status="failed")  # failed runs never count
    _record(tmp_path, 5, 3e-4, [[100, 1.0]], model={"d_model": 32})  # another config
    _record(tmp_path, 6, 3e-4, [[100, 1.0]], suite="other")  # another suite
    lr, evidence = select_lr(BASE, tmp_path, "s1", "acc", "max")
    assert lr == 1e-2 and evidence["selected"] == 1e-2
    assert sorted(evidence["rates"]) == ["0.001", "0.003", "0.01"]
    assert evidence["rates"]["0.01"] == {"mean_best": 0.995, "mean_step_of_best": 100,
                                         "runs": ["r3"]}
    json.dumps(evidence)  # goes into the record as it is


def test_mean_over_seeds_and_min_mode(tmp_path):
    _record(tmp_path, 1, 1e-3, [[100, 2.0]], seed=0)
    _record(tmp_path, 2, 1e-3, [[100, 4.0]], seed=1)  # mean 3.0
    _record(tmp_path, 3, 3e-3, [[100, 2.5]])
    assert select_lr(BASE, tmp_path, "s1", "loss", "min")[0] == 3e-3
    assert select_lr(BASE, tmp_path, "s1", "loss", "max")[0] == 1e-3


def test_no_stage_one_runs_is_a_lookup_error(tmp_path):
    with pytest.raises(LookupError, match="suite 's1'"):
        select_lr(BASE, tmp_path, "s1", "acc", "max")


def test_neutral_knobs_keep_a_configs_identity_and_its_stage(tmp_path):
    """A knob added after records existed, at its neutral value (no ckpt_path, one loop, RMS
    norm), leaves the key and the stage key as they were: stage 1 run by older code still
    chooses stage 2's rate."""
    from zoo.record import config_key
    newer = copy.deepcopy(BASE)
    newer["ckpt_path"] = None
    newer["model"].update(loops=1, norm="rms")
    assert config_key(newer) == config_key(BASE) and stage_key(newer) == stage_key(BASE)
    looped = copy.deepcopy(BASE)
    looped["model"]["loops"] = 2
    assert config_key(looped) != config_key(BASE)
    _record(tmp_path, 1, 3e-3, [[100, 0.9]], ckpt_path=None)  # written by newer code
    _record(tmp_path, 2, 1e-3, [[100, 0.5]])
    lr, evidence = select_lr(BASE, tmp_path, "s1", "acc", "max")
    assert lr == 3e-3 and sorted(evidence["rates"]) == ["0.001", "0.003"]


# The budget ladder (extend=true)

RISING = [[s, s / 5000] for s in range(500, 5001, 500)]  # still improving at its cap
FLAT = [[s, 0.5] for s in range(500, 5001, 500)]


def _rung(tmp_path, n, steps, curve, stop="max_steps", seed=0, extends=None, acc=0.5,
          lr_from=None):
    cfg = copy.deepcopy(BASE)
    cfg["trainer"], cfg["seed"] = {"max_steps": steps}, seed
    if lr_from:  # a second stage: its own suite, its rate from ``lr_from``'s
        cfg["lr_from"], cfg["suite"] = lr_from, "s2"
    rec = {"schema_version": 1, "run_id": f"r{n}", "status": "completed", "time": f"t{n}",
           "task": "state_size", "layer": "gla", "config": cfg, "seed": seed,
           "metrics": {"val/acc": curve[-1][1], "test/acc": acc}, "val_curve": curve,
           "steps": curve[-1][0], "stop_reason": stop, "extends": extends}
    write_record(tmp_path, rec)
    return rec


def _long(steps=20000, seed=0):
    cfg = copy.deepcopy(BASE)
    cfg["trainer"], cfg["seed"], cfg["extend"] = {"max_steps": steps}, seed, True
    cfg["early_stopping"] = {"patience": 10, "monitor": None}  # records hold it resolved
    return cfg


def test_extends_only_a_run_stopped_at_its_cap_while_improving(tmp_path):
    from zoo.two_stage import to_extend
    assert to_extend(_long(), tmp_path, "max")[0] is None  # nothing shorter yet
    _rung(tmp_path, 1, 5000, RISING)
    _rung(tmp_path, 2, 5000, FLAT, seed=1)  # converged at its cap: a finding, not a budget
    _rung(tmp_path, 3, 5000, [[500, 0.2], [1000, 0.995]], stop="solved", seed=2)
    prev, why = to_extend(_long(), tmp_path, "max")
    assert prev["run_id"] == "r1" and "still improving" in why
    for seed, run in ((1, "r2"), (2, "r3")):
        prev, why = to_extend(_long(seed=seed), tmp_path, "max")
        assert prev is None and run in why and "nothing to extend" in why
    assert to_extend(_long(steps=5000), tmp_path, "max")[0] is None  # not a larger cap
    wider = _long()
    wider["model"] = {"d_model": 128}
    assert to_extend(wider, tmp_path, "max")[0] is None  # another config
    # a second rung extends the longest shorter run, and only if it too was still improving
    _rung(tmp_path, 4, 20000, [[s, 0.2 + s / 40000] for s in range(2000, 20001, 2000)],
          extends={"run_id": "r1", "root_max_steps": 5000})
    assert to_extend(_long(80000), tmp_path, "max")[0]["run_id"] == "r4"


def test_a_longer_run_is_counted_in_the_place_of_the_run_it_extends(tmp_path):
    from zoo.reading import read
    from zoo.selection import summarise
    _rung(tmp_path, 1, 5000, RISING, acc=0.6)
    _rung(tmp_path, 2, 5000, [[500, 0.2], [1000, 0.995]], stop="solved", seed=1, acc=0.99)
    _rung(tmp_path, 3, 20000, [[s, 0.9] for s in range(2000, 20001, 2000)], stop="plateau",
          extends={"run_id": "r1", "root_max_steps": 5000}, acc=0.9)
    recs = read(tmp_path)
    assert recs.superseded == {"state_size/gla/r1.json": "state_size/gla/r3.json"}
    assert not recs.is_counted("state_size/gla/r1.json") and not recs.duplicate_of
    (row,) = summarise(recs.counted)
    # one choice of hyper-parameters over both seeds: the solved 5,000-step run and the
    # 20,000-step run in the place of the one that was still improving
    assert sorted(r["run_id"] for r in row.chosen) == ["r2", "r3"]


def test_unfinished_lists_second_stage_runs_stopped_while_improving_until_extended(tmp_path,
                                                                                    capsys):
    from zoo.leaderboard import main
    from zoo.reading import read
    from zoo.two_stage import unfinished
    _rung(tmp_path, 1, 5000, RISING)                       # stage 1 (no lr_from): not listed
    assert unfinished(read(tmp_path)) == []
    for n, (curve, stop, seed) in enumerate([(RISING, "max_steps", 0), (FLAT, "max_steps", 1),
                                             (RISING, "solved", 2)], start=5):
        _rung(tmp_path, n, 5000, curve, stop=stop, seed=seed, lr_from="s1")
    assert [r["run_id"] for _, r in unfinished(read(tmp_path))] == ["r5"]
    assert main(["--results", str(tmp_path), "--unfinished"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].endswith("state_size/gla/r5.json\tgla\td=64\ts2")
    _rung(tmp_path, 8, 20000, [[s, 0.9] for s in range(2000, 20001, 2000)], stop="plateau",
          extends={"run_id": "r5", "root_max_steps": 5000}, lr_from="s1")
    assert unfinished(read(tmp_path)) == []                # the longer run takes its place


# Widening the grid (lr_edge=true)

GRID = (3e-4, 1e-3, 3e-3, 1e-2)


def _edge(lr, threshold=0.99, mode="max", **changes):
    """An lr_edge=true stage-1 run's config at rate ``lr``."""
    cfg = copy.deepcopy(BASE)
    cfg["optim"]["lr"], cfg["lr_edge"] = lr, True
    cfg["early_stopping"] = {"patience": 5, "monitor": None, "mode": mode,
                             "stopping_threshold": threshold}
    cfg.update(changes)
    return cfg


def _grid(tmp_path, best, value=0.5, other=0.2):
    """Stage 1's four rates, the best at ``best`` (its best validation value ``value``)."""
    for n, lr in enumerate(GRID):
        _record(tmp_path, n, lr, [[100, other], [200, value if lr == best else other]])


def test_lr_edge_trains_the_next_step_beyond_an_unsolved_top_edge(tmp_path):
    from zoo.two_stage import edge_rate
    _grid(tmp_path, best=1e-2)
    trains, why = edge_rate(_edge(3e-2), tmp_path, "acc", "max")
    assert trains and "lr 0.03" in why and "unsolved" in why
    for lr, said in ((1e-4, "not the best"),        # the other edge
                     (1e-1, "more than one step"),  # not adjacent
                     (3e-3, "inside"), (5e-4, "inside")):
        trains, why = edge_rate(_edge(lr), tmp_path, "acc", "max")
        assert not trains and said in why, (lr, why)
    # another config or another suite has no grid yet
    assert not edge_rate(_edge(3e-2, model={"d_model": 128}), tmp_path, "acc", "max")[0]
    assert not edge_rate(_edge(3e-2, suite="s2"), tmp_path, "acc", "max")[0]


def test_lr_edge_trains_the_next_step_below_an_unsolved_bottom_edge(tmp_path):
    from zoo.two_stage import edge_rate
    _grid(tmp_path, best=3e-4)
    assert edge_rate(_edge(1e-4), tmp_path, "acc", "max")[0]
    assert not edge_rate(_edge(3e-2), tmp_path, "acc", "max")[0]
    assert not edge_rate(_edge(3e-5), tmp_path, "acc", "max")[0]  # two steps below


def test_lr_edge_skips_a_best_inside_the_grid_or_one_that_solved(tmp_path):
    from zoo.two_stage import edge_rate
    _grid(tmp_path / "inside", best=3e-3)
    for lr in (1e-4, 3e-2):
        trains, why = edge_rate(_edge(lr), tmp_path / "inside", "acc", "max")
        assert not trains and "best 0.003" in why and "not the best" in why
    _grid(tmp_path / "solved", best=1e-2, value=0.995)
    trains, why = edge_rate(_edge(3e-2), tmp_path / "solved", "acc", "max")
    assert not trains and "solved" in why and "0.99" in why
    # the same record unsolved under a stricter threshold; none at all: never solved
    assert edge_rate(_edge(3e-2, threshold=0.999), tmp_path / "solved", "acc", "max")[0]
    assert edge_rate(_edge(3e-2, threshold=None), tmp_path / "solved", "acc", "max")[0]


def test_lr_edge_follows_select_lr_and_ignores_its_own_rate(tmp_path):
    """The best is select_lr's (mean over seeds, lower is better in min mode); the runs at the
    edge run's own rate (a resumed sweep's, or a second widening's) do not move the grid."""
    from zoo.two_stage import edge_rate
    _record(tmp_path, 1, 1e-3, [[100, 2.0]])
    _record(tmp_path, 2, 3e-3, [[100, 1.0]], seed=0)
    _record(tmp_path, 3, 3e-3, [[100, 5.0]], seed=1)  # mean 3.0: 1e-3 is best, lower
    assert edge_rate(_edge(3e-4, threshold=0.5, mode="min"), tmp_path, "loss", "min")[0]
    assert not edge_rate(_edge(1e-2, threshold=0.5, mode="min"), tmp_path, "loss", "min")[0]
    assert not edge_rate(_edge(3e-4, threshold=2.0, mode="min"), tmp_path, "loss", "min")[0]
    _record(tmp_path, 4, 3e-4, [[100, 9.0]])  # the edge run itself, done: the same answer
    assert edge_rate(_edge(3e-4, threshold=0.5, mode="min"), tmp_path, "loss", "min")[0]
    # ... and a second widening goes one step further from the new edge only if it is best
    assert not edge_rate(_edge(1e-4, threshold=0.5, mode="min"), tmp_path, "loss", "min")[0]


def test_lr_edge_needs_a_grid(tmp_path):
    from zoo.two_stage import edge_rate
    trains, why = edge_rate(_edge(3e-2), tmp_path, "acc", "max")
    assert not trains and "two" in why
    _record(tmp_path, 1, 1e-2, [[100, 0.1]])
    assert not edge_rate(_edge(3e-2), tmp_path, "acc", "max")[0]


def test_lr_edge_is_bookkeeping_and_a_validated_knob():
    from zoo.record import config_key
    from zoo.validate import ConfigError, _check_run
    assert config_key(_edge(1e-3)) == config_key({**_edge(1e-3), "lr_edge": False})
    assert stage_key(_edge(3e-2)) == stage_key(BASE)
    _check_run({"seed": 0, "lr_edge": True, "progress_refresh_rate": 1})
    with pytest.raises(ConfigError, match="lr_edge"):
        _check_run({"seed": 0, "lr_edge": "yes", "progress_refresh_rate": 1})
    with pytest.raises(ConfigError, match="lr_edge.*lr_from"):
        _check_run({"seed": 0, "lr_edge": True, "lr_from": "s1", "progress_refresh_rate": 1})
