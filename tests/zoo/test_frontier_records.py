"""The committed frontier records (suite `frontier`, issue 17) say how each run stopped, and no
run stopped at its step cap while still improving: a row set by a too-short budget would be a
defect of the leaderboard, not a finding."""

from pathlib import Path

import pytest

from zoo.labels import label
from zoo.reading import read
from zoo.two_stage import still_improving, unfinished

RESULTS = Path(__file__).resolve().parents[2] / "results"


def _frontier(suite):
    """The counted training records of ``suite`` (a run superseded by a longer run of its
    config, the budget ladder's, is not counted), with their paths."""
    recs = read(RESULTS).of_suite(suite)
    return [(RESULTS / p, r) for p, r in recs.entries if recs.is_counted(p)]


def test_still_improving_reads_the_curve():
    flat = [[s, 0.5] for s in range(200, 5001, 200)]
    assert not still_improving(flat)
    rising = [[s, s / 5000] for s in range(200, 5001, 200)]
    assert still_improving(rising)
    assert not still_improving([[200, 0.1], [3800, 0.9], [5000, 0.905]])
    assert still_improving([[200, 3.0], [4000, 2.0], [5000, 1.5]], mode="min")
    assert not still_improving([[200, 3.0], [4000, 2.0], [5000, 1.995]], mode="min")


@pytest.mark.parametrize("suite", ["frontier", "frontier-lr"])
def test_every_frontier_record_says_how_it_stopped(suite):
    for path, rec in _frontier(suite):
        assert rec["stop_reason"] in ("solved", "plateau", "max_steps", "non_finite"), path
        assert rec["val_curve"] and rec["config"]["task"]["fresh"], path


def test_no_published_run_stopped_at_max_steps_while_improving():
    """Every suite's second stage, not only the frontier's: `python -m zoo.leaderboard
    --unfinished` lists such records so that they are held back until extended."""
    bad = [(p, label(rec["config"]), rec["config"]["model"]["d_model"])
           for p, rec in unfinished(read(RESULTS))]
    assert not bad, f"stopped at max_steps while improving: {bad}"
