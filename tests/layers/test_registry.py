import re

import pytest
import torch

import layers


def test_names_and_build():
    assert "attention" in layers.names()
    assert {"mlp", "none"} <= set(layers.names("channel"))
    m = layers.build("attention", 32, num_heads=2)
    assert isinstance(m, layers.Attention) and m.registry_name == "attention"


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="known sequence mixers: .*attention"):
        layers.build("no_such_mixer", 32)


def test_unknown_option_is_named():
    with pytest.raises(ValueError, match="'num_hedas'.*valid options: .*num_heads"):
        layers.build("attention", 32, num_hedas=2)


def test_bad_kind():
    with pytest.raises(ValueError, match="kind"):
        layers.names("spatial")


def test_heads_must_divide_d_model():
    with pytest.raises(ValueError, match="d_model=30 is not divisible by num_heads=4"):
        layers.build("attention", 30, num_heads=4)


def test_positional_choice_is_validated():
    with pytest.raises(ValueError, match="pos='sinusoid'"):
        layers.build("attention", 32, pos="sinusoid")


def test_options_lists_defaults():
    opts = layers.options("attention")
    assert opts["num_heads"] == 1 and opts["pos"] == "rope"


def test_register_twice_fails():
    with pytest.raises(ValueError, match="registered twice"):
        layers.register("attention")(layers.Attention)


def test_sliding_window_step_keeps_only_window():
    m = layers.build("attention", 32, num_heads=2, window=5)
    state = m.init_state(1)
    for _ in range(12):
        _, state = m.step(torch.randn(1, 32), state)
    assert state["k"].shape[2] == 5
    assert m.state_size(1000) == 2 * 32 * 5


def test_swiglu_hidden_width():
    from layers.mlp import swiglu_hidden
    assert swiglu_hidden(64) == 176 and swiglu_hidden(96) == 256
    assert all(swiglu_hidden(d) % 8 == 0 and swiglu_hidden(d) >= 8 * d / 3 for d in range(8, 300, 8))


@pytest.mark.parametrize("kind,name", [(k, n) for k in ("sequence", "channel")
                                       for n in layers.names(k)])
def test_every_mixer_class_documents_its_options(kind, name):
    """Each registered class has a docstring of its own (``inspect.getdoc`` would fall back to
    the base class's) whose Args name ``d_model`` and every option."""
    cls = layers.get(name, kind)
    doc = cls.__dict__.get("__doc__")
    assert doc, f"{cls.__name__} has no docstring of its own"
    assert "Args:" in doc, f"{cls.__name__}'s docstring has no Args"
    args = doc.split("Args:", 1)[1]
    missing = [o for o in ["d_model", *layers.options(name, kind)]
               if not re.search(rf"\b{o}\b", args)]
    assert not missing, f"{cls.__name__}'s Args do not name {missing}"
