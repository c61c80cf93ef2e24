import pytest
import torch

import tasks

IGNORE = tasks.IGNORE


def gen(n=2000, seed=0, **kw):
    task = tasks.build("induction", **kw)
    return task, *task.generate(n, torch.Generator().manual_seed(seed))


def pairs(task, x):
    """The two trigger positions of each row."""
    at = (x == task.trigger).nonzero()
    assert len(at) == 2 * len(x), "the trigger occurs exactly twice in every row"
    return at[0::2, 1], at[1::2, 1]


@pytest.mark.parametrize("kw", [{}, {"distances": [2, 7]}, {"seq_len": 20, "vocab_size": 3}])
def test_layout_and_label_placement(kw):
    task, x, y = gen(**kw)
    a, b = pairs(task, x)
    rows = torch.arange(len(x))
    assert set((b - a).tolist()) <= set(task.support)
    assert ((y != IGNORE).sum(1) == 1).all(), "one supervised position"
    assert (y[rows, b] != IGNORE).all(), "... at the second trigger"
    assert torch.equal(y[rows, b], x[rows, a + 1]), "... whose target follows the first one"
    assert (x[rows, a + 1] != task.trigger).all()


def test_distances_cover_the_support_uniformly():
    task, x, _ = gen(n=6000, seq_len=32)
    a, b = pairs(task, x)
    counts = torch.bincount(b - a, minlength=32)
    assert counts[:2].sum() == 0
    assert counts[2:].min() > 0.6 * 6000 / 30
    assert (a == 0).any() and (b == 31).any(), "pairs reach both ends"


def test_narrow_and_ranged_distances():
    task, x, _ = gen(distances=[16])
    a, b = pairs(task, x)
    assert ((b - a) == 16).all()
    task, x, _ = gen(min_distance=5, max_distance=9)
    a, b = pairs(task, x)
    assert set((b - a).tolist()) == set(range(5, 10))


def test_out_of_distribution_distances():
    task = tasks.build("induction", seq_len=32, min_distance=4, max_distance=20)
    ood = task.out_of_distribution()
    assert ood.support == (2, 3, *range(21, 32))
    x, _ = ood.generate(2000, torch.Generator().manual_seed(0))
    a, b = pairs(ood, x)
    assert not set((b - a).tolist()) & set(task.support)
    with pytest.raises(ValueError, match="in distribution"):
        tasks.build("induction").out_of_distribution()


def test_at_length_keeps_explicit_distances_and_grows_open_ones():
    assert tasks.build("induction", distances=[16]).at_length(256).support == (16,)
    assert tasks.build("induction", max_distance=30).at_length(256).support == tuple(range(2, 31))
    assert tasks.build("induction").at_length(256).support == tuple(range(2, 256))


def test_config_lists_become_tuples():
    task = tasks.build("induction", distances=[9, 3, 9])
    assert task.distances == (9, 3, 9) and task.support == (3, 9)
    hash(task)


@pytest.mark.parametrize("kw,knob", [
    ({"vocab_size": 1}, "vocab_size"),
    ({"seq_len": 2}, "seq_len"),
    ({"min_distance": 1}, "min_distance"),
    ({"max_distance": 64}, "max_distance"),
    ({"min_distance": 10, "max_distance": 9}, "max_distance"),
    ({"distances": [1, 5]}, "distances"),
    ({"distances": [64]}, "distances"),
    ({"distances": []}, "distances"),
])
def test_constraints_name_the_knob(kw, knob):
    with pytest.raises(ValueError, match=knob):
        tasks.build("induction", **kw)
