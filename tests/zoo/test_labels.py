"""Architecture labels (zoo.labels): short, deterministic, one per distinct architecture."""

import copy

import pytest
from synthetic_records import FRONTIER, config

from zoo import labels
from zoo.labels import CONFIG_DIR, label, layer_defaults, row_key

LAYERS = sorted(p.stem for p in (CONFIG_DIR / "layer").glob("*.yaml")
                if layer_defaults(p.stem) is not None)


@pytest.mark.parametrize("expected,layer,opts,model,_", FRONTIER, ids=[f[0] for f in FRONTIER])
def test_named_forms(expected, layer, opts, model, _):
    assert label(config("state_size", layer, layer_opts=opts, **model)) == expected


def test_hybrids_are_named_by_their_pattern_and_depth():
    att = layer_defaults("attention")
    cfg = config(layer="gla", layer_opts={"short_conv": 4}, n_layers=4,
                 pattern=["gla", "gla", "gla", "attention"], mixer_options={"attention": att})
    assert label(cfg) == "gla+conv4:attention 3:1 x4"
    cfg["model"]["pattern"] = ["attention", "gla"]  # the first block differs: another model
    assert label(cfg) == "attention:gla+conv4 1:1 x4"
    cfg["model"]["pattern"] = ["gla", "attention", "gla", "attention"]  # = [gla, attention]
    assert label(cfg) == "gla+conv4:attention 1:1 x4"
    cfg["model"]["pattern"] = ["gla", "attention", "gla", "mamba"]
    cfg["model"]["mixer_options"]["mamba"] = layer_defaults("mamba")
    assert label(cfg) == "[gla+conv4,attention,gla+conv4,mamba] x4"
    cfg["model"]["mixer_options"]["attention"] = {**att, "num_heads": 2}
    assert "attention(num_heads=2)" in label(cfg)


def test_options_left_to_the_class_say_so():
    """Options of a pattern entry not given in model.mixer_options are the layer class's own
    defaults, which the defaults file does not describe: the label names them."""
    bare = config(layer="phalanx", pattern=["phalanx", "attention"])
    assert label(bare) == "phalanx:attention(class) 1:1"
    partial = config(layer="phalanx", pattern=["phalanx", "attention"],
                     mixer_options={"attention": {"num_heads": 1, "pos": "rope"}})
    assert label(partial) == "phalanx:attention(window=class) 1:1"
    partial["model"]["mixer_options"]["attention"]["num_heads"] = 4
    assert label(partial) == "phalanx:attention(num_heads=4,window=class) 1:1"
    ssa = config(layer="gla", pattern=["gla", "ssa"], mixer_options={"ssa": {"token_temp": True}})
    assert label(ssa) == ("gla:ssa(pos+tok,num_heads=class,pos=class,temp_lr=class,"
                          "temp_weights=class,value_temp=class,window=class) 1:1")
    assert label(config(channel="moe")) == "attention ch=moe(class)"
    assert label(config(channel="moe", channel_options={"top_k": 1})).startswith(
        "attention ch=moe(active_hidden=class,")


def _changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 + 1
    if value is None:
        return 7
    return f"{value}x"


@pytest.mark.parametrize("layer", LAYERS)
def test_every_option_of_every_layer_changes_the_label(layer):
    """Two configs that differ in one layer option have two labels (and two row keys), as
    the primary layer and inside a hybrid."""
    base = config(layer=layer)
    first = "attention" if layer != "attention" else "gla"
    hybrid = config(layer=first, pattern=[first, layer],
                    mixer_options={layer: layer_defaults(layer)})
    for opt, value in layer_defaults(layer).items():
        other = copy.deepcopy(base)
        other["layer"][opt] = _changed(value)
        assert label(other) != label(base), opt
        assert row_key(other) != row_key(base), opt
        other = copy.deepcopy(hybrid)
        other["model"]["mixer_options"][layer][opt] = _changed(value)
        assert label(other) != label(hybrid), opt


def test_model_options_and_channel_mixers_show_where_they_differ():
    assert label(config(n_layers=1)) == "attention x1"
    assert label(config(channel="mlp")) == "attention ch=mlp"
    moe = config(channel="moe", channel_options={**labels.channel_defaults("moe"),
                                                 "num_experts": 16})
    assert label(moe) == "attention ch=moe(num_experts=16)"
    assert label(config(max_positions=128)) == "attention max_positions=128"


def test_an_option_missing_from_an_old_record_is_the_default_and_width_is_no_part():
    old = config(layer="gla")
    del old["layer"]["short_conv"]  # records from before the option existed
    assert label(old) == label(config(layer="gla", layer_opts={"short_conv": 0})) == "gla"
    assert label(config(d_model=32)) == label(config(d_model=128))
    assert row_key(config(d_model=32)) != row_key(config(d_model=128))


def test_labels_are_deterministic_whatever_the_key_order():
    cfg = config(layer="ssa", layer_opts={"temp_weights": "full", "token_temp": True})
    shuffled = {k: dict(reversed(list(v.items()))) if isinstance(v, dict) else v
                for k, v in reversed(list(cfg.items()))}
    assert label(cfg) == label(shuffled) == "ssa(pos+tok,temp_weights=full)"
