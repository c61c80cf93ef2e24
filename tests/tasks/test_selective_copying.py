import pytest
import torch

import tasks

IGNORE = tasks.IGNORE


def gen(n=500, seed=0, **kw):
    task = tasks.build("selective_copying", **kw)
    return task, *task.generate(n, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("T,n,V", [(256, 16, 16), (24, 5, 8), (34, 16, 3)])
def test_layout_and_label_placement(T, n, V):
    task, x, y = gen(seq_len=T, num_tokens=n, vocab_size=V)
    C = T - n - 1
    blank, marker = V - 2, V - 1
    assert x.shape == y.shape == (500, T)
    ctx = x[:, :C]
    kept = ctx != blank
    assert (kept.sum(1) == n).all(), "exactly num_tokens tokens among the blanks"
    assert (ctx < blank).sum() == 500 * n and (ctx != marker).all()
    assert (x[:, C] == marker).all() and (x[:, C + 1:] == blank).all(), "answer slots are blank"
    assert (y[:, :C + 1] == IGNORE).all()
    assert torch.equal(y[:, C + 1:], ctx[kept].view(500, n)), "the tokens, in order"


def test_token_positions_are_a_uniform_subset():
    task, x, _ = gen(n=4000)
    C = task.context
    freq = (x[:, :C] != task.blank).float().mean(0)  # [C] how often each slot holds a token
    assert torch.allclose(freq, torch.full_like(freq, 16 / C), atol=0.025)
    assert 0 < freq[-1] < 1, "the last context slot is not always a token (as it is in MAD)"


def test_tokens_repeat_and_cover_the_vocabulary():
    _, _, y = gen()
    answers = y[:, -16:]
    assert set(answers.unique().tolist()) == set(range(14))
    assert (answers.sort(1).values.diff(dim=1) == 0).any(1).float().mean() > 0.5


def test_at_length_keeps_num_tokens():
    task = tasks.build("selective_copying")
    long = task.at_length(1024)
    assert (long.seq_len, long.num_tokens, long.length) == (1024, 16, 1024)


@pytest.mark.parametrize("kw,knob", [
    ({"vocab_size": 2}, "vocab_size"),
    ({"num_tokens": 0}, "num_tokens"),
    ({"seq_len": 33}, "seq_len"),
])
def test_constraints_name_the_knob(kw, knob):
    with pytest.raises(ValueError, match=knob):
        tasks.build("selective_copying", **kw)
