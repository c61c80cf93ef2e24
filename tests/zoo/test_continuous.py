"""The continuous path (real vectors in, real outputs out, the task's loss and metrics), looped
models, and in-context records on the leaderboard."""

import json
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from synthetic_records import config, record
from test_validate import CONFIG_DIR

import tasks
from zoo import leaderboard
from zoo.eval import eval_config
from zoo.labels import label
from zoo.model import Backbone
from zoo.module import ZooModule
from zoo.record import config_key, write_record
from zoo.train import run, run_config
from zoo.validate import ConfigError, check


def continuous(pattern="linear_attn", **kw):
    torch.manual_seed(0)
    return Backbone(d_model=32, n_layers=2, pattern=pattern, channel="none", d_in=5, d_out=1,
                    **kw)


def test_real_vectors_in_and_out():
    m = continuous()
    x = torch.randn(3, 11, 5)
    assert m(x).shape == (3, 11, 1) and m.hidden(x).shape == (3, 11, 32)
    assert m.embed is None and m.continuous
    with pytest.raises(ValueError, match="reads real vectors"):
        m.generate(torch.zeros(1, 2, dtype=torch.long), 1)
    with pytest.raises(ValueError, match="either vocab_size"):
        Backbone(8, d_in=5, d_out=1)
    with pytest.raises(ValueError, match="either vocab_size"):
        Backbone(d_in=5)


def test_continuous_model_is_causal():
    m = continuous().eval()
    x = torch.randn(2, 13, 5)
    y = x.clone()
    y[:, 7:] = torch.randn(2, 6, 5)
    with torch.no_grad():
        torch.testing.assert_close(m(x)[:, :7], m(y)[:, :7])


def test_loss_is_the_tasks_at_the_masked_positions_only():
    task = tasks.build("icl_regression", d=4, num_examples=6)
    x, y, mask = task.generate(8, torch.Generator().manual_seed(0))
    module = ZooModule({"d_in": 5, "d_out": 1, "d_model": 16, "n_layers": 1,
                        "pattern": "linear_attn", "channel": "none"}, {"lr": 1e-3})
    loss, out, _ = module._forward((x, y, mask), task)
    expected = ((module.model(x)[mask] - y[mask]) ** 2).mean()
    torch.testing.assert_close(loss, expected)
    assert out.shape == (int(mask.sum()), 1)
    other = y.clone()
    other[~mask] = 123.0  # targets where nothing is scored change nothing
    torch.testing.assert_close(module._forward((x, other, mask), task)[0], loss)
    with pytest.raises(RuntimeError, match="scored by its continuous task"):
        module._forward((x, y, mask), None)


def test_looped_model_shares_the_weights_of_its_stack():
    once, looped = continuous(), continuous(loops=3)
    looped.load_state_dict(once.state_dict())  # the same parameters, nothing added
    assert looped.num_params() == once.num_params()
    x = torch.randn(2, 9, 5)
    h = once.read_in(x)
    for _ in range(3):
        for block in once.blocks:
            h = block(h)
    torch.testing.assert_close(looped.hidden(x), once.norm(h))
    assert len(looped.applied()) == 6 and looped.applied()[2] is looped.blocks[0]
    assert looped.state_size(9) == 3 * once.state_size(9)
    looped(x).sum().backward()  # every application adds to the one gradient
    assert looped.blocks[0].mixer.qkv.weight.grad is not None


def test_looped_token_model_generates_through_each_application():
    torch.manual_seed(0)
    m = Backbone(13, d_model=32, n_layers=2, pattern=["gla", "attention"], channel="mlp",
                 mixer_options={"attention": {}}, loops=2).eval()
    x = torch.randint(0, 13, (2, 5), generator=torch.Generator().manual_seed(1))
    out = m.generate(x, 6)
    with torch.no_grad():
        logits = m(out[:, :-1])
    assert torch.equal(logits[:, 4:].argmax(-1), out[:, 5:])


def test_no_norm_is_the_linear_transformer():
    m = continuous(norm="none")
    assert not any(isinstance(mod, torch.nn.RMSNorm) for mod in m.modules())
    with pytest.raises(ValueError, match="norm must be one of rms, none"):
        continuous(norm="layer")


def _cfg(*overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    d = OmegaConf.to_container(cfg, resolve=False)
    d.pop("out_dir", None)
    return d


@pytest.mark.parametrize("overrides,knob", [
    (["model.loops=0"], "model.loops"),
    (["model.loops=1.5"], "model.loops"),
    (["model.norm=layer"], "model.norm"),
    (["task=icl_regression", "task.layout=interleaved"], "task"),
    (["task=icl_gmm", "task.missing=1.0"], "task"),
    (["task=icl_multitask", "task.correlation=yes"], "task.correlation"),
])
def test_bad_knobs_fail_the_check(overrides, knob):
    with pytest.raises(ConfigError) as e:
        check(_cfg(*overrides))
    assert e.value.knob == knob


@pytest.mark.parametrize("overrides", [
    ["task=icl_regression", "layer=gla", "model.loops=3"],
    ["task=icl_multitask", "model.norm=none"], ["task=icl_gmm", "layer=mamba"],
    ["experiment=icl_regression"], ["experiment=icl_multitask"], ["experiment=icl_gmm"],
])
def test_in_context_configs_pass_the_check(overrides):
    check(_cfg(*overrides))


def test_bad_loops_exits_2_naming_the_knob(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "zoo.train", "model.loops=0"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "model.loops=0: must be an int >= 1" in lines[0], proc.stderr


def test_defaults_of_the_new_model_knobs_leave_configs_and_keys_as_they_were(make_cfg):
    cfg = run_config(make_cfg())
    assert "loops" not in cfg["model"] and "norm" not in cfg["model"]
    assert run_config(make_cfg("model.loops=2"))["model"]["loops"] == 2
    older = json.loads(json.dumps(cfg))  # what a record made before these knobs holds
    assert config_key(older) == config_key(cfg)
    assert label(run_config(make_cfg("model.loops=3", "model.norm=none",
                                     "model.n_layers=1"))) == "attention x1 loops=3 norm=none"


def test_tiny_in_context_run_records_the_task_metrics_and_estimators(make_cfg, tmp_path):
    rec = run(make_cfg("task=icl_regression", "task.d=3", "task.num_examples=5",
                       "task.layout=paired", "layer=linear_attn", "model.loops=2"))
    assert rec["status"] == "completed" and rec["label"] == "linear_attn loops=2"
    es = rec["config"]["early_stopping"]
    assert (es["monitor"], es["mode"], es["stopping_threshold"]) == ("val/mse", "min", None)
    m = rec["metrics"]
    for name in ("val/mse", "val/loss", "test/mse", "test/loss", "test/mse@len=5",
                 "test/ridge_mse", "test/gd_mse@n=4", "test/gd_shared_mse@n=0,len=5"):
        assert name in m, name
    assert {k for k in m if k.startswith("test/mse@n=")} == {
        f"test/mse@n={i}{length}" for i in range(5) for length in ("", ",len=5")}
    assert m["test/lstsq_mse@n=4"] < 1e-8  # 4 >= d examples, no noise: solved
    assert rec["state_size"] == 2 * 2 * 4 * 8 * 8  # 2 loops x 2 layers of H dk dv (d 32)
    assert rec["ess"]["total"] is not None and len(rec["ess"]["layers"]) == 4
    with pytest.raises(ConfigError, match="changes what the model reads"):
        eval_config(rec, {"task.d": 4})
    assert eval_config(rec, {"task.noise": 0.5})[1] == "noise=0.5"


def icl_record(run_id, layer, lr, seed, curve, ridge, **model):
    cfg = config("assoc_recall", layer, lr=lr, seed=seed, suite="icl", **model)
    cfg["task"] = {"name": "icl_regression", "d": 2, "num_examples": 3, "noise": 0.0,
                   "prior": "gaussian", "layout": "paired", "num_train": 10, "num_val": 10,
                   "num_test": 10, "batch_size": 8, "eval_lengths": None, "fresh": True}
    cfg["early_stopping"] = {"monitor": "val/mse", "mode": "min", "stopping_threshold": None}
    r = record(run_id, cfg)
    r["metrics"] = {"val/mse": sum(curve) / 3, "test/mse": sum(curve) / 3,
                    **{f"test/mse@n={i}": v for i, v in enumerate(curve)},
                    **{f"test/ridge_mse@n={i}": v for i, v in enumerate(ridge)},
                    "test/ridge_mse": sum(ridge) / 3}
    return r


def test_leaderboard_shows_errors_by_examples_beside_the_estimators(tmp_path):
    d = tmp_path / "results"
    ridge = [1.0, 0.5, 0.0]
    write_record(d, icl_record("a0", "linear_attn", 1e-3, 0, [1.0, 0.8, 0.6], ridge))
    write_record(d, icl_record("a1", "linear_attn", 3e-3, 0, [1.0, 0.9, 0.9], ridge))
    write_record(d, icl_record("b0", "gla", 1e-3, 0, [1.0, 0.7, 0.4], ridge, n_layers=3))
    text = leaderboard.build(d, tmp_path / "plots", tmp_path)
    suite = text.split("## Suite `icl`", 1)[1].split("\n## ", 1)[0]
    assert "| architecture | test mse | n | val mse |" in suite and "test acc" not in suite
    assert suite.index("gla x3 | **0.700**") < suite.index("linear_attn | 0.800")  # lower wins
    section = text.split("### In-context learning", 1)[1].split("\n### ", 1)[0]
    assert "| architecture | n=0 | n=1 | n=2 | all |" in section
    assert "| gla x3 | **1.000** | **0.700** | **0.400** | **0.700** |" in section
    assert "| *ridge* (estimator) | 1.000 | 0.500 | 0.000 | 0.500 |" in section
    assert (tmp_path / "plots" / "icl_by_examples.png").stat().st_size > 0
    assert "icl_by_examples.png" in text
    assert leaderboard.build(d, tmp_path / "plots", tmp_path) == text  # byte-stable
