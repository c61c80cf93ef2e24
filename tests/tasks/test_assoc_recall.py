import pytest
import torch

import tasks
from tasks.base import row_hashes, sample_distinct


def gen(n=500, seed=0, **kw):
    task = tasks.build("assoc_recall", **kw)
    return task, *task.generate(n, torch.Generator().manual_seed(seed))


def test_deterministic_for_a_seed():
    _, x1, y1 = gen(seed=3)
    _, x2, y2 = gen(seed=3)
    _, x3, _ = gen(seed=4)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)


@pytest.mark.parametrize("T,n,V", [(64, 4, 8192), (128, 16, 256), (100, 25, 128)])
def test_layout_and_label_placement(T, n, V):
    task, x, y = gen(seq_len=T, num_kv_pairs=n, vocab_size=V)
    keys, values = x[:, 0:2 * n:2], x[:, 1:2 * n:2]
    assert x.shape == y.shape == (500, T)
    assert ((keys >= 1) & (keys < V // 2)).all()
    assert ((values >= V // 2) & (values < V)).all()
    assert (keys.sort(1).values.diff(dim=1) > 0).all(), "keys repeat within an example"
    assert (values.sort(1).values.diff(dim=1) > 0).all(), "values repeat within an example"
    assert (y[:, : 2 * n] == tasks.IGNORE).all()
    supervised = y != tasks.IGNORE
    assert (supervised.sum(1) == n).all()
    rows, pos = supervised.nonzero(as_tuple=True)
    assert ((pos - 2 * n) % 2 == 0).all(), "queries sit at even offsets of the query region"
    # The token at each supervised position is a context key, and the target is its value.
    q = x[rows, pos]
    match = keys[rows] == q[:, None]
    assert (match.sum(1) == 1).all()
    assert torch.equal(values[rows][match], y[rows, pos])
    # Every key is queried exactly once.
    queried = x.masked_fill(~supervised, -1)
    for k in range(n):
        assert ((queried == keys[:, k:k + 1]).sum(1) == 1).all()


def test_fillers_without_random_non_queries():
    _, x, _ = gen(random_non_queries=False)
    query_region = x[:, 8:]
    assert ((query_region != 0).sum(1) == 4).all(), "only the 4 queried keys are non-filler"


def test_random_non_queries_fill_everything():
    _, x, _ = gen()
    assert (x == 0).float().mean() < 0.01


def test_power_law_clusters_queries_early():
    _, _, y_skew = gen(n=2000, power_a=0.01)
    _, _, y_flat = gen(n=2000, power_a=1.0)
    mean_pos = lambda y: (y != tasks.IGNORE).nonzero()[:, 1].float().mean()
    assert mean_pos(y_skew) < mean_pos(y_flat) - 5


def test_oracle_scores_100_percent():
    task, x, y = gen(n=1000)
    counts = tasks.accuracy_counts(task.oracle(x), y)
    assert tasks.rates(counts) == {"acc": 1.0, "exact_match": 1.0}
    assert counts["total"] == 4000


def test_splits_are_disjoint_and_leakage_counted():
    task = tasks.build("assoc_recall")
    seeds = {tasks.split_seed(0, s, 64) for s in tasks.SPLITS}
    assert len(seeds) == 3
    train, _ = tasks.make_split(task, 5000, 0, "train")
    test, _ = tasks.make_split(task, 1000, 0, "test")
    assert tasks.leakage(train, test) == 0
    assert tasks.leakage(train, train[:37]) == 37
    with pytest.raises(ValueError, match="split="):
        tasks.split_seed(0, "dev", 64)


def test_row_hash_distinguishes_rows():
    x = torch.randint(0, 10, (2000, 16), generator=torch.Generator().manual_seed(0))
    unique_rows = len({tuple(r) for r in x.tolist()})
    assert len(set(row_hashes(x).tolist())) == unique_rows


@pytest.mark.parametrize("kw,knob", [
    ({"seq_len": 63}, "seq_len"),
    ({"seq_len": 64, "num_kv_pairs": 17}, "num_kv_pairs"),
    ({"seq_len": 64, "vocab_size": 64}, "vocab_size"),
    ({"power_a": 0.0}, "power_a"),
])
def test_constraints_name_the_knob(kw, knob):
    with pytest.raises(ValueError, match=knob):
        tasks.build("assoc_recall", **kw)


def test_unknown_task_and_knob():
    with pytest.raises(ValueError, match="known tasks: .*assoc_recall"):
        tasks.build("assoc_recal")
    with pytest.raises(ValueError, match="'num_pairs'.*valid knobs"):
        tasks.build("assoc_recall", num_pairs=3)


def test_at_length_scales_pairs():
    task = tasks.build("assoc_recall", seq_len=64, num_kv_pairs=4)
    long = task.at_length(256)
    assert (long.seq_len, long.num_kv_pairs) == (256, 16)


@pytest.mark.parametrize("k,span", [(4, 4095), (30, 1000), (60, 1000), (30, 40), (40, 40)])
def test_sample_distinct(k, span):
    x = sample_distinct(300, k, 5, 5 + span, torch.Generator().manual_seed(0))
    assert x.shape == (300, k) and x.min() >= 5 and x.max() < 5 + span
    assert (x.sort(1).values.diff(dim=1) > 0).all()


@pytest.mark.parametrize("k,span", [(4, 16), (6, 30), (8, 16)])
def test_sample_distinct_is_uniform(k, span):
    x = sample_distinct(40_000, k, 0, span, torch.Generator().manual_seed(1))
    for col in (0, k - 1):  # every slot uniform over the range
        freq = torch.bincount(x[:, col], minlength=span).float() / len(x)
        assert (freq - 1 / span).abs().max() < 0.15 / span


def test_metrics_micro_average():
    targets = torch.tensor([[-100, 1, 2], [-100, -100, 3]])
    preds = torch.tensor([[0, 1, 0], [9, 9, 3]])
    c = tasks.accuracy_counts(preds, targets)
    assert c == {"correct": 2, "total": 3, "exact": 1, "examples": 2}
    assert tasks.rates(c) == {"acc": 2 / 3, "exact_match": 0.5}
