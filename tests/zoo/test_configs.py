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


@pytest.mark.parametrize("name", layers.names())
def test_every_mixer_has_a_layer_config(name):
    path = CONFIGS / "layer" / f"{name}.yaml"
    assert path.exists(), f"add configs/layer/{name}.yaml"
    cfg = yaml.safe_load(path.read_text())
    assert cfg.pop("name") == name
    unknown = set(cfg) - set(layers.options(name))
    assert not unknown, f"configs/layer/{name}.yaml holds non-options {unknown}"
    layers.build(name, 64, **cfg)


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
