import pytest
import torch

import tasks
from tasks.copying import occurs_once

IGNORE = tasks.IGNORE


def gen(n=300, seed=0, **kw):
    task = tasks.build("copying", **kw)
    return task, *task.generate(n, torch.Generator().manual_seed(seed))


def examples(task, row_x, row_y):
    """Parse one row into (tokens, targets) per example, by its BOS tokens (test-side, loops)."""
    x, y = row_x.tolist(), row_y.tolist()
    starts = [i for i, t in enumerate(x) if t == task.bos] + [len(x)]
    return [(x[a:b], y[a:b]) for a, b in zip(starts, starts[1:])]


def test_token_ids():
    task = tasks.build("copying")
    assert (task.alphabet, task.bos, task.sep, task.eos, task.pad) == (26, 26, 27, 28, 29)


@pytest.mark.parametrize("lo,hi", [(1, 1), (3, 9), (20, 20)])
def test_unpacked_copy_layout_and_targets(lo, hi):
    task, x, y = gen(min_len=lo, max_len=hi, packed=False, seq_len=2 * hi + 10)
    seen = set()
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        L = row_x.index(task.sep) - 1
        seen.add(L)
        s = row_x[1:L + 1]
        assert lo <= L <= hi
        assert row_x[:2 * L + 3] == [task.bos, *s, task.sep, *s, task.eos]
        assert max(s) < task.alphabet
        assert set(row_x[2 * L + 3:]) <= {task.pad}
        # next-token targets: at SEP the first symbol, ..., at the last symbol EOS
        assert row_y == [IGNORE] * (L + 1) + s + [task.eos] + [IGNORE] * (len(row_y) - 2 * L - 2)
    assert seen == set(range(lo, hi + 1))


def test_packed_rows_hold_examples_back_to_back():
    task, x, y = gen(n=200)
    per_row = []
    for row_x, row_y in zip(x, y):
        parts = examples(task, row_x, row_y)
        assert row_x[0] == task.bos, "rows start with a fresh example"
        for i, (ex, lab) in enumerate(parts):
            L = (len(ex) - 3) // 2
            whole = len(ex) == 2 * L + 3 and ex[-1] == task.eos
            if i < len(parts) - 1:
                assert whole, "only the last example of a row may be cut"
            if whole:
                s = ex[1:L + 1]
                assert ex == [task.bos, *s, task.sep, *s, task.eos]
                assert lab == [IGNORE] * (L + 1) + s + [task.eos, IGNORE]
                assert task.min_len <= L <= task.max_len
            else:
                assert set(lab) == {IGNORE}, "the cut example carries no targets"
        per_row.append(len(parts))
    assert min(per_row) >= 2 and task.pad not in x


def test_string_lengths_are_uniform():
    task, x, _ = gen(n=3200)
    first = (x == task.sep).long().argmax(1) - 1  # length of each row's first string
    counts = torch.bincount(first, minlength=21)[5:]
    assert counts.sum() == 3200 and counts.min() > 0.6 * 200


@pytest.mark.parametrize("packed", [False, True])
def test_lookup_layout_and_targets(packed):
    n_, k = 3, 2
    task, x, y = gen(n=200, variant="lookup", packed=packed, ngram_len=n_, answer_len=k,
                     **({} if packed else {"seq_len": 60}))
    checked = 0
    for row_x, row_y in zip(x, y):
        for ex, lab in examples(task, row_x, row_y):
            if len(ex) < n_ + 4 or task.eos not in ex:
                assert set(lab) == {IGNORE}
                continue
            assert ex[0] == task.bos and ex[n_ + 1] == task.sep
            g = ex[1:n_ + 1]
            end = ex.index(task.sep, n_ + 2)
            s = ex[n_ + 2:end]
            assert task.min_len <= len(s) <= task.max_len
            hits = [q for q in range(len(s) - n_ + 1) if s[q:q + n_] == g]
            assert len(hits) == 1, "the key occurs exactly once in the string"
            a = s[hits[0] + n_:hits[0] + n_ + k]
            assert len(a) == k
            assert ex[end:end + k + 2] == [task.sep, *a, task.eos]
            assert set(ex[end + k + 2:]) <= {task.pad}
            assert lab[end:end + k + 1] == [*a, task.eos]
            assert set(lab[:end]) == {IGNORE} and set(lab[end + k + 1:]) <= {IGNORE}
            checked += 1
    assert checked >= 200


def test_at_length_counts_string_length():
    for variant, width in [("copy", 2 * 37 + 3), ("lookup", 3 + 37 + 2 + 4)]:
        task = tasks.build("copying", variant=variant)
        assert task.length == task.max_len == 20
        long = task.at_length(37)
        assert (long.min_len, long.max_len, long.packed, long.seq_len) == (37, 37, False, width)
        x, y = long.generate(50, torch.Generator().manual_seed(0))
        assert (x == long.sep).sum(1).tolist() == [1 if variant == "copy" else 2] * 50
        assert long.pad not in x, "a row is exactly one example long"
        assert ((y != IGNORE).sum(1) == (38 if variant == "copy" else 3)).all()


def test_vocab_beyond_int8():
    task, x, y = gen(n=50, vocab_size=300, packed=False, seq_len=43)
    assert x.max() < 300 and (x[:, 0] == 296).all()
    assert tasks.rates(tasks.accuracy_counts(task.oracle(x), y))["acc"] == 1.0


def test_occurs_once():
    codes = torch.tensor([[5, 1, 5, 2], [7, 7, 7, 7], [1, 2, 3, 4]])
    assert occurs_once(codes).tolist() == [[False, True, False, True], [False] * 4, [True] * 4]


@pytest.mark.parametrize("kw,knob", [
    ({"variant": "paste"}, "variant"),
    ({"vocab_size": 4}, "vocab_size"),
    ({"min_len": 0}, "min_len"),
    ({"min_len": 9, "max_len": 8}, "max_len"),
    ({"max_len": 109}, "seq_len"),
    ({"variant": "lookup", "min_len": 4}, "min_len"),
    ({"variant": "lookup", "answer_len": 0}, "answer_len"),
    ({"variant": "lookup", "ngram_len": 20, "min_len": 25, "max_len": 30}, "ngram_len"),
    ({"variant": "lookup", "max_len": 100, "seq_len": 100}, "seq_len"),
])
def test_constraints_name_the_knob(kw, knob):
    with pytest.raises(ValueError, match=knob):
        tasks.build("copying", **kw)


def test_impossible_unique_ngram_names_the_knob():
    task = tasks.build("copying", variant="lookup", vocab_size=6, ngram_len=1, answer_len=1,
                       min_len=60, max_len=60, packed=False, seq_len=70)
    with pytest.raises(ValueError, match="ngram_len"):
        task.generate(20, torch.Generator().manual_seed(0))
