"""Scoring a generative task free-running (``zoo.module``): each row's answer is generated from
the tokens before it, rows of different lengths grouped, and the task's subsets (copying's
``string``: every answer symbol but EOS, as the reference scores) counted on their own."""

import pytest
import torch

import tasks
from zoo.module import ZooModule, _scored

IGNORE = tasks.IGNORE


def module(vocab, seed=0):
    torch.manual_seed(seed)
    m = ZooModule({"vocab_size": vocab, "d_model": 32, "n_layers": 2, "pattern": "gla",
                   "channel": "mlp"}, {"lr": 1e-3, "weight_decay": 0.0})
    with torch.no_grad():
        m.model.embed.weight.normal_(0, 1.0)
    return m.eval()


def test_each_row_is_generated_from_its_own_prompt():
    task = tasks.build("copying", packed=False, min_len=3, max_len=8, seq_len=19)
    assert task.generative and not tasks.build("copying").generative
    x, y = task.generate(9, torch.Generator().manual_seed(1))
    m = module(task.vocab_size)
    preds = m._generated(x, y)
    assert torch.equal(preds == IGNORE, y == IGNORE), "predictions exactly where scored"
    for i in range(len(x)):
        at = (y[i] != IGNORE).nonzero()[:, 0]
        p, a = int(at[0]), len(at)
        out = m.model.generate(x[i:i + 1, :p + 1], a)
        assert torch.equal(preds[i, at], out[0, p + 1:])
    assert len({int((y[i] != IGNORE).sum()) for i in range(len(x))}) > 1, "lengths vary"


def test_answers_that_are_not_one_span_are_refused():
    m = module(8)
    x = torch.randint(0, 8, (2, 7))
    y = torch.full_like(x, IGNORE)
    y[:, 2], y[:, 5] = 1, 2
    with pytest.raises(ValueError, match="one contiguous answer per row"):
        m._generated(x, y)


@pytest.mark.parametrize("variant", ["copy", "lookup"])
def test_string_subset_leaves_out_eos_only(variant):
    task = tasks.build("copying", packed=False, min_len=5, max_len=11, seq_len=30,
                       variant=variant)
    x, y = task.generate(16, torch.Generator().manual_seed(2))
    preds = y.clone()
    eos_rows = (y == task.eos).any(1)
    assert eos_rows.all()
    preds[y == task.eos] = task.pad  # every symbol right, every EOS wrong
    c = _scored(preds, y, task)
    supervised = int((y != IGNORE).sum())
    assert c["total"] == supervised and c["string_total"] == supervised - len(x)
    assert c["string_correct"] == c["string_total"] and c["string_exact"] == len(x)
    assert c["exact"] == 0, "ours scores EOS too"
    g = _scored(preds, y, task, "gen_")
    assert g["gen_string_exact"] == len(x) and g["gen_exact"] == 0
