"""The ESS/TSS study (zoo.ess_study): scipy's statistics, bootstrap intervals, verdicts."""

import numpy as np
import pytest
from scipy import stats
from synthetic_records import config, frontier, record

from zoo import ess_study
from zoo.selection import summarise


def _points(ess, tss, acc, fixed=True):
    return [{"suite": "s", "label": "m", "width": 64, "fixed": fixed, "slice": "kv=4",
             "acc": a, "ess_per_kv": e, "tss_per_kv": t} for e, t, a in zip(ess, tss, acc)]


def test_resampled_ranks_are_scipys_average_ranks():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 5, 63).astype(float)  # many ties
    idx = rng.integers(0, 63, (40, 63))
    dense = stats.rankdata(x, method="dense") - 1
    assert np.array_equal(ess_study.resampled_ranks(dense, idx), stats.rankdata(x[idx], axis=-1))


def test_vectorised_pearson_is_scipys():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(2, 5, 100))
    expected = [stats.pearsonr(a, b).statistic for a, b in zip(x, y)]
    assert ess_study.pearson(x, y) == pytest.approx(expected)


def test_a_verdict_only_where_the_intervals_separate():
    rng = np.random.default_rng(3)
    acc = rng.uniform(size=60)
    tracks, noise = np.exp(3 * acc), rng.uniform(1, 10, size=60)
    c = ess_study.correlate(_points(tracks, noise, acc))
    e, t = c["ess_per_kv"]["spearman"], c["tss_per_kv"]["spearman"]
    assert e[0] == pytest.approx(1.0) and e[1] <= e[0] <= e[2]
    assert t[1] <= t[0] <= t[2] and e[1] > t[2]
    assert ess_study.verdict(c) == "ESS"
    assert c["ess_per_kv"]["pearson_log"][0] == pytest.approx(
        stats.pearsonr(np.log(tracks), acc).statistic)
    # both track accuracy with the same kind of noise: the intervals overlap, no verdict
    close = ess_study.correlate(_points(tracks * rng.uniform(0.5, 2, 60),
                                        tracks * rng.uniform(0.5, 2, 60), acc))
    assert ess_study.verdict(close) == "not separated"
    assert ess_study.correlate(_points(tracks, noise, acc)) == c  # deterministic


def test_undefined_correlations_and_too_few_points():
    const = ess_study.correlate(_points([1, 2, 3, 4, 5], [5, 4, 3, 2, 1], [0.5] * 5))
    assert const["ess_per_kv"]["spearman"] is None and ess_study.verdict(const) == "–"
    assert ess_study.correlate(_points([1, 2, 3], [1, 2, 3], [0.1, 0.2, 0.3])) is None


def test_study_groups_mixers_by_their_recorded_state():
    """Fixed-state (state_size_prev == state_size) and growing-state mixers are grouped
    apart, from the record alone: no model is built."""
    rows = summarise(frontier(seeds=1, lrs=(1e-3,)))
    pts = ess_study.points(rows)
    groups = ess_study.study(pts)["frontier"]
    assert groups["all"]["n"] == len(pts) == 11 * 3 * 3  # forms x widths x slices
    assert groups[ess_study.FIXED]["n"] == 7 * 9  # swa(16), the linear attns, glas, mamba...
    assert groups[ess_study.GROWING]["n"] == 4 * 9  # attention, ssa, cat, the hybrid
    assert groups["gla+conv4"]["n"] == 9


def test_points_are_every_completed_run_whatever_its_learning_rate():
    recs = []
    for i, lr in enumerate((1e-3, 3e-3)):
        r = record(f"r{i}", config("state_size", lr=lr, suite="s"), val=0.9 - i, test=0.5)
        r["metrics"]["test/acc@kv=4"] = 0.5
        r["ess"] = {"slices": {"kv=4": {"ess_per_kv": 2.0, "tss_per_kv": 8.0}}}
        recs.append(r)
    recs.append(record("failed", config("state_size", lr=1e-2, suite="s"), status="failed"))
    (row,) = summarise(recs)
    assert row.n == 1 and len(ess_study.points([row])) == 2
