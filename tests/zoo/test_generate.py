"""``Backbone.generate`` decodes by the mixers' recurrent ``step``: greedy decoding reproduces,
token for token, the argmax of a teacher-forced ``forward`` over its own output, for every
registered sequence mixer (tiny fp32 models, odd lengths, fixed seeds)."""

import pytest
import torch

import layers
from zoo.model import Backbone

VOCAB, PROMPT, NEW = 13, 7, 12


def model(pattern, seed=0, n_layers=2, **kw):
    torch.manual_seed(seed)
    m = Backbone(VOCAB, d_model=32, n_layers=n_layers, pattern=pattern, channel="mlp", **kw)
    with torch.no_grad():  # a wider spread of logits than the init's: fewer near-ties
        m.embed.weight.normal_(0, 1.0)
    return m.eval()


def prompts(batch=3, length=PROMPT, seed=1):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def assert_greedy_is_forward_argmax(m, x, new=NEW):
    out = m.generate(x, new)
    assert out.shape == (x.shape[0], x.shape[1] + new)
    assert torch.equal(out[:, : x.shape[1]], x), "the prompt is returned unchanged"
    with torch.no_grad():
        logits = m(out[:, :-1])  # [B, P + new - 1, V]: teacher-forced on its own output
    assert torch.equal(logits[:, x.shape[1] - 1:].argmax(-1), out[:, x.shape[1]:])


@pytest.mark.parametrize("name", layers.names())
def test_greedy_generation_equals_forward_argmax(name):
    assert_greedy_is_forward_argmax(model(name), prompts())


def test_hybrid_and_learned_positions():
    m = model(["gla", "attention", "mamba"], n_layers=3, max_positions=PROMPT + NEW)
    assert_greedy_is_forward_argmax(m, prompts())
    with pytest.raises(ValueError, match="max_positions=19"):
        m.generate(prompts(), NEW + 2)


def test_one_token_prompt_and_nothing_new():
    m = model("attention")
    assert_greedy_is_forward_argmax(m, prompts(length=1))
    x = prompts()
    assert torch.equal(m.generate(x, 0), x)


def test_sampling_follows_the_generator_and_keeps_training_mode():
    m = model("gla").train()
    x = prompts()
    a = m.generate(x, NEW, temperature=20.0, generator=torch.Generator().manual_seed(3))
    b = m.generate(x, NEW, temperature=20.0, generator=torch.Generator().manual_seed(3))
    c = m.generate(x, NEW, temperature=20.0, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert m.training, "generate restores the mode it found"
    assert ((a >= 0) & (a < VOCAB)).all()


@pytest.mark.parametrize("kw,says", [
    ({"max_new_tokens": -1}, "max_new_tokens must be an int >= 0"),
    ({"max_new_tokens": 2.0}, "max_new_tokens must be an int >= 0"),
    ({"max_new_tokens": 2, "temperature": -0.5}, "temperature must be a number >= 0"),
])
def test_bad_arguments_name_themselves(kw, says):
    with pytest.raises(ValueError, match=says):
        model("attention").generate(prompts(), **kw)
