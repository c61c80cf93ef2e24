import pytest
import torch

import tasks

IGNORE = tasks.IGNORE


def build(**kw):
    return tasks.build("state_size", **{"seq_len": 64, "vocab_size": 256, **kw})


def check_mqar_layout(x, y, k, V):
    """Rows of MQAR with exactly ``k`` pairs: keys then values alternate in the first ``2k``
    positions, and every supervised position is a query of one of those keys."""
    keys, values = x[:, 0:2 * k:2], x[:, 1:2 * k:2]  # [N, k]
    assert ((keys >= 1) & (keys < V // 2)).all() and ((values >= V // 2) & (values < V)).all()
    assert (keys.sort(1).values.diff(1) != 0).all(), "keys distinct within a row"
    sup = y != IGNORE
    assert (sup.sum(1) == k).all(), f"{k} queries per row"
    assert not sup[:, :2 * k].any(), "no query inside the pairs"
    query_keys = x[sup].view(-1, k)  # [N, k] in position order
    targets = y[sup].view(-1, k)
    match = query_keys[:, :, None] == keys[:, None, :]  # [N, k, k]
    assert (match.sum(-1) == 1).all(), "each query is one of the row's keys"
    assert torch.equal(values.gather(1, match.float().argmax(-1)), targets)


@pytest.mark.parametrize("kv", [(2, 4, 8, 16), (1, 3, 5)], ids=str)
def test_every_slice_has_its_stated_number_of_pairs(kv):
    task = build(kv_pairs=list(kv))
    slices = task.eval_variants()
    assert list(slices) == [f"kv={k}" for k in sorted(kv)]
    for k, (name, sl) in zip(sorted(kv), slices.items()):
        assert sl.num_kv_pairs == k and sl.seq_len == task.seq_len
        x, y = tasks.make_split(sl, 300, 0, "test")
        check_mqar_layout(x, y, k, task.vocab_size)


def test_training_mixes_the_slices_in_equal_shares():
    task = build()
    x, y = task.generate(1002, torch.Generator().manual_seed(0))
    per_row = (y != IGNORE).sum(1)
    counts = {k: int((per_row == k).sum()) for k in task.kv_pairs}
    assert counts == {2: 251, 4: 251, 8: 250, 16: 250}
    assert sorted(per_row.tolist()) != per_row.tolist(), "rows of the slices are interleaved"
    for k in task.kv_pairs:
        rows = per_row == k
        check_mqar_layout(x[rows], y[rows], k, task.vocab_size)


def test_length_variants_keep_the_pairs():
    task = build().at_length(128)
    assert task.seq_len == 128 and task.kv_pairs == (2, 4, 8, 16)


@pytest.mark.parametrize("kw, match", [
    ({"kv_pairs": []}, "kv_pairs must be a non-empty list"),
    ({"kv_pairs": [4, 4]}, "distinct"),
    ({"kv_pairs": [0, 4]}, "positive"),
    ({"kv_pairs": [32]}, r"4 \* max\(kv_pairs\) must be <= seq_len"),
    ({"seq_len": 66, "vocab_size": 60}, "state_size: vocab_size must exceed seq_len"),
    ({"power_a": 0.0}, "state_size: power_a"),
])
def test_bad_knobs_fail_naming_them(kw, match):
    with pytest.raises(ValueError, match=match):
        build(**kw)
