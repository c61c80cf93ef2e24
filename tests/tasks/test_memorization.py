import pytest
import torch

import tasks


def gen(n=300, seed=0, **kw):
    task = tasks.build("memorization", **kw)
    return task, *task.generate(n, torch.Generator().manual_seed(seed))


def test_deterministic_and_table_fixed_by_map_seed():
    t, x1, y1 = gen(seed=1)
    _, x2, y2 = gen(seed=1)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert torch.equal(t.table, tasks.build("memorization").table)
    assert not torch.equal(t.table, tasks.build("memorization", map_seed=1).table)


def test_label_placement_and_answers_come_from_the_table():
    t, x, y = gen(num_keys=16, vocab_size=40, seq_len=31)
    m = 31 // 3
    sup = y != tasks.IGNORE
    assert (sup.sum(1) == m).all()
    assert sup[:, 1:3 * m:3].all() and sup.sum() == sup[:, 1:3 * m:3].sum()
    a, b = x[:, 0:3 * m:3], x[:, 1:3 * m:3]
    assert ((a < 16) & (b < 16)).all()
    assert torch.equal(y[:, 1:3 * m:3], t.table[a, b])
    assert torch.equal(x[:, 2:3 * m:3], t.table[a, b]), "teacher-forced answer follows"
    assert ((y[sup] >= 16) & (y[sup] < 40)).all()
    fact = a * 16 + b
    assert (fact.sort(1).values.diff(dim=1) > 0).all(), "a fact repeats within a sequence"


def test_answers_are_not_in_context_before_they_are_asked():
    _, x, y = gen()
    rows, pos = (y != tasks.IGNORE).nonzero(as_tuple=True)
    for r, p in list(zip(rows.tolist(), pos.tolist()))[:500]:
        # the answer may appear earlier only as another fact's answer, never for this pair
        pair = (int(x[r, p - 1]), int(x[r, p]))
        earlier = {(int(x[r, q - 1]), int(x[r, q])) for q in range(1, p, 3)}
        assert pair not in earlier


def test_oracle_and_splits():
    t = tasks.build("memorization")
    train, _ = tasks.make_split(t, 2000, 0, "train")
    test, ty = tasks.make_split(t, 500, 0, "test")
    assert tasks.leakage(train, test) == 0
    assert tasks.rates(tasks.accuracy_counts(t.oracle(test), ty)) == {"acc": 1.0, "exact_match": 1.0}


@pytest.mark.parametrize("kw,knob", [({"vocab_size": 129}, "vocab_size"), ({"num_keys": 1}, "num_keys"),
                                     ({"seq_len": 2}, "seq_len"),
                                     ({"num_keys": 3, "vocab_size": 10, "seq_len": 30}, "seq_len")])
def test_bad_knobs(kw, knob):
    with pytest.raises(ValueError, match=knob):
        tasks.build("memorization", **kw)
