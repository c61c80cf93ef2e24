"""The callbacks group (configs/callbacks): extra Lightning callbacks chosen from the CLI,
after the run's own (checkpoint, early stopping, progress bar), outside the run's identity."""

import pytest
from omegaconf import OmegaConf

from zoo.record import config_key
from zoo.train import _callbacks, run_config
from zoo.validate import ConfigError, check

ES = {"monitor": "val/acc", "mode": "max", "patience": 3, "stopping_threshold": 0.99}


def test_lr_monitor_comes_after_the_runs_own_callbacks(make_cfg, tmp_path):
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint

    plain, _ = _callbacks(make_cfg(), ES, tmp_path)
    cbs, ckpt = _callbacks(make_cfg("callbacks=lr_monitor"), ES, tmp_path)
    assert [type(c) for c in cbs[:len(plain)]] == [type(c) for c in plain]
    assert [type(c) for c in plain] == [EarlyStopping, ModelCheckpoint]  # debug=tiny: no bar
    assert isinstance(cbs[-1], LearningRateMonitor) and len(cbs) == len(plain) + 1
    assert ckpt is cbs[1] and ckpt.monitor == "val/acc"


def test_callbacks_are_not_part_of_a_runs_identity(make_cfg):
    plain, monitored = run_config(make_cfg()), run_config(make_cfg("callbacks=lr_monitor"))
    assert "callbacks" not in plain and set(monitored["callbacks"]) == {"lr_monitor"}
    assert config_key(plain) == config_key(monitored)


@pytest.mark.parametrize("callbacks,knob", [
    ({"lr_monitor": {"logging_interval": "step"}}, "callbacks.lr_monitor"),
    ({"x": {"_target_": "no_such_package.Callback"}}, "callbacks.x._target_"),
    (["lr_monitor"], "callbacks")])
def test_bad_callbacks_are_named(make_cfg, callbacks, knob):
    cfg = OmegaConf.to_container(make_cfg(), resolve=True)
    cfg["callbacks"] = callbacks
    with pytest.raises(ConfigError) as e:
        check(cfg)
    assert e.value.knob == knob
