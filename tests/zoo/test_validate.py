"""Bad input fails before any work: exit code 2, one line naming the knob, nothing left behind.

Each case runs the real command line in an empty directory (the timing of these failures is
measured outside the tests: about 2 s each on the 2-core CPU, Lightning never imported)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from zoo.validate import ConfigError, check

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"

BAD = [  # (overrides, the knob the message must name, what it must say)
    (["optim.lr=abc"], "optim.lr=abc", "must be a finite number > 0"),
    (["optim.lr=-1e-3"], "optim.lr=-0.001", "must be a finite number > 0"),
    (["optim.weight_decay=-1"], "optim.weight_decay=-1", ">= 0"),
    (["trainer.max_steps=-1"], "trainer.max_steps=-1", "must be an int >= 1"),
    (["trainer.max_steps=0"], "trainer.max_steps=0", "must be an int >= 1"),
    (["trainer.val_check_interval=0"], "trainer.val_check_interval=0", "must be an int >= 1"),
    (["seed=abc"], "seed=abc", "must be an int >= 0"),
    (["task.vocab_size=8192.5"], "task.vocab_size=8192.5", "must be an int"),
    (["+layer.no_such_option=3"], "layer: attention", "unknown option(s) 'no_such_option'"),
    (["task.eval_lengths=[63]"], "task.eval_lengths=[63]", "length 63 is not a valid"),
    (["layer.num_heads=0"], "num_heads", "must be an int >= 1"),
    (["early_stopping.mode=maximum"], "early_stopping.mode=maximum", "must be one of min, max"),
    (["early_stopping.monitor=val/accuracy"], "early_stopping.monitor=val/accuracy",
     "val/acc, val/exact_match, val/loss"),
    (["model.pattern=[]"], "model.pattern=[]", "non-empty list"),
    (["model.pattern=[gla]"], "model.pattern=[gla]", "does not use layer=attention"),
    (["layer=gla", "model.pattern=[gla,gla,gla,attention]", "model.n_layers=2"],
     "model.n_layers=2", "must be a multiple of the length of model.pattern=[gla,gla,gla,"
     "attention] (4)"),
    (["+model.mixer_options.mamba.expand=1"], "model.mixer_options.mamba",
     "mamba is not in the model's pattern [attention]"),
    (["model.max_positions=64", "task.eval_lengths=[128]"], "model.max_positions=64",
     "longest sequence the run tests on (128"),
    (["results_dir=a_file"], "results_dir=a_file", "is a file"),
]


def _cli(args, cwd):
    return subprocess.run([sys.executable, "-m", "zoo.train", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("overrides,knob,says", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_input_exits_2_with_one_line_naming_the_knob(tmp_path, overrides, knob, says):
    (tmp_path / "a_file").write_text("not a directory\n")
    proc = _cli(overrides, tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr  # no traceback, no warnings
    assert lines[0].startswith("error: ") and knob in lines[0] and says in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"], "left something behind"


def test_debug_flag_shows_the_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "zoo.train", "optim.lr=-1"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "ZOO_DEBUG": "1"})
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "optim.lr=-1" in proc.stderr


def _cfg(*overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    d = OmegaConf.to_container(cfg, resolve=False)
    d.pop("out_dir", None)  # a Hydra runtime value, not composed here
    return d


@pytest.mark.parametrize("overrides", [
    [], ["layer=gla"], ["layer=mamba", "task=copying"], ["task=state_size"],
    ["experiment=leaderboard/induction"], ["layer=moe", "task=memorization"],
    ["task=lm", "task.max_files=null"],
])
def test_shipped_configs_pass_the_check(overrides):
    check(_cfg(*overrides))  # raises on any bad knob


@pytest.mark.parametrize("overrides,knob", [
    (["optim.betas=[0.9]"], "optim.betas"),
    (["optim.min_lr_ratio=2"], "optim.min_lr_ratio"),
    (["trainer.precision=bf17"], "trainer.precision"),
    (["trainer.devices=0"], "trainer.devices"),
    (["trainer.val_check_interval=5000"], "trainer.val_check_interval"),
    (["early_stopping.patience=0"], "early_stopping.patience"),
    (["task.batch_size=0"], "task.batch_size"),
    (["task.power_a=high"], "task.power_a"),
    (["task.random_non_queries=1"], "task.random_non_queries"),
    (["task.eval_lengths=[]"], "task.eval_lengths"),
    (["model.d_model=0"], "model.d_model"),
    (["model.n_layers=1.5"], "model.n_layers"),
    (["model.channel=nope"], "model.channel"),
    (["layer=gla", "layer.chunk_size=8.0"], "layer.chunk_size"),
    (["suite=''"], "suite"),
    (["threads=0"], "threads"),
    (["resume=maybe"], "resume"),
    (["layer=gla", "model.pattern=[gla,attention]", "model.n_layers=3"], "model.n_layers"),
    (["arch=phalanx_attention_1to1", "model.mixer_options.attention.num_heads=0"],
     "model.mixer_options.attention"),
    (["arch=phalanx_attention_1to1", "model.mixer_options.attention.num_heads=1.5"],
     "model.mixer_options.attention.num_heads"),
    (["arch=phalanx_attention_1to1", "+model.mixer_options.attention.heads=2"],
     "model.mixer_options.attention"),
    (["model.mixer_options=3"], "model.mixer_options"),
    (["task=lm", "task.seq_len=null"], "task.seq_len"),
])
def test_every_group_is_checked(overrides, knob):
    with pytest.raises(ConfigError) as e:
        check(_cfg(*overrides))
    assert e.value.knob == knob
