"""Every shipped config file is loaded by a test, and every registered mixer has one."""

from pathlib import Path

import pytest
import yaml

from omegaconf import OmegaConf

import layers
import tasks
from zoo.config import split_task_config
from zoo.model import model_kwargs
from zoo.model import Backbone

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


# Options a layer file leaves to its class (whose default then applies): written into the file
# they would enter the resolved config, and so the config key of every run recorded before
# (zoo.record.config_key), which a resumed sweep finds its finished runs by.
LEFT_TO_THE_CLASS = {
    "attention": {"bias", "num_masked_heads", "qk_norm", "rope_base", "use_kernels"},
    "swa": {"bias", "num_masked_heads", "qk_norm", "rope_base", "use_kernels"},
    "ssa": {"bias", "num_masked_heads", "qk_norm", "rope_base", "use_kernels"},
    "cat": {"bias", "num_masked_heads", "rope_base", "use_kernels"},
}


@pytest.mark.parametrize("name", layers.names())
def test_every_layer_file_holds_its_class_defaults(name):
    """One source of defaults: ``configs/layer/<name>.yaml`` names every option of the class
    registered as ``name`` (but those left to the class above), each at the default
    ``layers.options(name)`` gives (the class's, or the registration's: ``swa``'s window)."""
    path = CONFIGS / "layer" / f"{name}.yaml"
    assert path.exists(), f"add configs/layer/{name}.yaml"
    cfg = yaml.safe_load(path.read_text())
    assert cfg.pop("name") == name
    left = LEFT_TO_THE_CLASS.get(name, set())
    options = layers.options(name)
    assert left <= set(options), f"{name}: {left - set(options)} are not options"
    assert cfg == {k: v for k, v in options.items() if k not in left}
    layers.build(name, 64, **cfg)


@pytest.mark.parametrize("name", layers.names("channel"))
def test_every_channel_file_holds_its_class_defaults(name):
    """A channel mixer's options live in the layer file that selects it (``layer/moe.yaml``:
    attention with MoE), under ``model.channel_options``; mlp and none have no file."""
    path = CONFIGS / "layer" / f"{name}.yaml"
    if not path.exists():
        assert name in ("mlp", "none"), f"add configs/layer/{name}.yaml"
        return
    model = yaml.safe_load(path.read_text())["model"]
    assert model["channel"] == name
    assert model["channel_options"] == layers.options(name, "channel")


@pytest.mark.parametrize("name", tasks.names())
def test_every_task_has_a_task_config(name):
    cfg = yaml.safe_load((CONFIGS / "task" / f"{name}.yaml").read_text())
    assert cfg["name"] == name


GROUP_FILES = sorted(p for p in CONFIGS.glob("*/*.yaml"))


@pytest.mark.parametrize("path", GROUP_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_group_option_composes(make_cfg, path):
    cfg = make_cfg(f"{path.parent.name}={path.stem}")
    if path.parent.name in ("layer", "model", "task"):
        name, knobs, _ = split_task_config(OmegaConf.to_container(cfg.task))
        kw = model_kwargs(cfg, **tasks.build(name, **knobs).io)
        Backbone(**{**kw, "d_model": 64})
