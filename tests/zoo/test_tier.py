"""The tier under the recall frontier's rule (issue 17): experiment=tier/<task>/<stage> composes
for every form the frontier trains, with fresh data, the frontier's learning-rate grid and
seeds, stage 1 in a suite that only chooses rates, and the README's one command covering it."""

import shlex
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import layers
import tasks
from zoo.config import split_task_config
from zoo.data import FreshBatches, TaskDataModule
from zoo.selection import selection_stages
from zoo.sweeps import sweep_jobs
from zoo.train import run, run_config
from zoo.validate import check

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
TIER = CONFIGS / "experiment" / "tier"
TASKS = sorted(p.name for p in TIER.iterdir() if p.is_dir())
STAGES = ("lr", "lr_edge", "final", "long")
# The frontier's forms (README: its one command), which the tier trains too.
FORMS = [f"layer={n}" for n in layers.names("sequence") if n != "swa"] + [
    f"arch={p.stem}" for p in sorted((CONFIGS / "arch").glob("*.yaml"))]


def composed(*overrides: str, hydra: bool = True):
    """The config the CLI composes (with Hydra's own section, which holds the sweep's grid),
    or without it, as a run receives it."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=hydra)


def resolved(*overrides: str) -> dict:
    """A run's resolved config, as its record holds it."""
    return run_config(composed(*overrides, "out_dir=unused", hydra=False))


def frontier_file(stage: str) -> dict:
    return yaml.safe_load((CONFIGS / "experiment" / "frontier" / f"{stage}.yaml").read_text())


def test_the_tier_is_the_leaderboard_tasks_beside_the_frontiers_recall():
    """Every task of the old tier has a preset under the rule: the recall tasks in the
    frontier (state_size, which also holds assoc_recall's setting as its kv-4 slice), the
    others here, each with the three stages."""
    old = {p.stem for p in (CONFIGS / "experiment" / "leaderboard").glob("[!_]*.yaml")}
    assert set(TASKS) == old - {"assoc_recall", "state_size"}
    assert composed("experiment=frontier/final").task.name == "state_size"
    for task in TASKS:
        assert sorted(p.stem for p in (TIER / task).glob("[!_]*.yaml")) == sorted(STAGES)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("stage", STAGES)
def test_tier_stages_compose_for_every_form(task, stage):
    seeds = frontier_file("final")["hydra"]["sweeper"]["params"]["seed"]
    for form in FORMS:
        cfg = composed(f"experiment=tier/{task}/{stage}", form)
        assert cfg.task.name == task and cfg.task.fresh is True and cfg.task.batch_size == 64
        assert (cfg.model.d_model, cfg.model.n_layers, cfg.model.channel) == (64, 2, "none")
        assert cfg.resume is True and cfg.results_dir == "results"
        assert cfg.early_stopping.stopping_threshold == 0.99
        params = OmegaConf.to_container(cfg.hydra.sweeper.params)
        if stage in ("lr", "lr_edge"):
            assert cfg.suite == "tier-lr" and cfg.lr_from is None and not cfg.extend
            assert cfg.lr_edge is (stage == "lr_edge")
            grid = frontier_file(stage)["hydra"]["sweeper"]["params"]["optim.lr"]
            assert params == {"optim.lr": grid}, "the frontier's rates, and its edge steps"
            assert cfg.trainer.max_steps == 1000
        else:
            assert cfg.suite == "tier" and cfg.lr_from == "tier-lr"
            assert params == {"seed": seeds}
            assert cfg.extend is (stage == "long")
            assert cfg.trainer.max_steps == (20000 if stage == "long" else 5000)
        plain = OmegaConf.to_container(cfg, resolve=False)
        plain.pop("hydra"), plain.pop("out_dir", None)
        check(plain)  # every knob valid


@pytest.mark.parametrize("task", TASKS)
def test_tier_sets_the_same_task_in_every_stage(task):
    """Stage 2 takes its rate from stage 1's runs of the same config (zoo.two_stage.stage_key):
    the stages differ only in what a stage sets."""
    from zoo.two_stage import ladder_key, stage_key

    cfgs = {s: resolved(f"experiment=tier/{task}/{s}", "layer=gla") for s in STAGES}
    assert len({stage_key(c) for c in cfgs.values()}) == 1
    assert ladder_key(cfgs["final"]) == ladder_key(cfgs["long"])
    old = OmegaConf.to_container(composed(f"experiment=leaderboard/{task}").task)
    for knob, value in old.items():  # the task itself as the old preset's, only fresher
        if knob not in ("fresh", "batch_size", "num_train", "num_val", "num_test"):
            assert cfgs["final"]["task"][knob] == value, f"{task}: {knob}"


def test_stage_one_never_headlines():
    """The leaderboard reads a preset's lr_from as a stage that only chooses rates: its rows
    get their own section, never the matrix or the headline (zoo.selection)."""
    stages = selection_stages()
    assert "tier-lr" in stages and "tier" not in stages


@pytest.mark.parametrize("task", TASKS)
def test_tier_task_draws_fresh_batches_without_held_out_rows(task):
    """Every tier task can train on fresh data: batches of the configured size, new every
    step, with no validation or test row among them (memorization: new sequences of its one
    fact table)."""
    cfg = resolved(f"experiment=tier/{task}/final", "layer=gla")
    name, knobs, sizes = split_task_config(cfg["task"])
    task_ = tasks.build(name, **knobs)
    dm = TaskDataModule(task_, seed=0, num_train=sizes["num_train"], num_val=64, num_test=64,
                        batch_size=sizes["batch_size"], fresh=True)
    dm.setup("fit")
    stream = iter(dm.train_dataloader())
    a, b = next(stream), next(stream)
    assert not torch.equal(a[0], b[0])
    # a drawn row equal to a held-out one is dropped from its batch (copying's strings of 2
    # or 3 symbols recur: a few in a block of 64 batches), so none is ever trained on
    dropped = sum(dm.leakage.values())
    assert dropped <= 0.01 * 64 * 64 and 2 * 64 - dropped <= len(a[0]) + len(b[0]) <= 2 * 64
    held = torch.cat([dm._splits["val"][0], dm._splits["test"][dm.eval_names[0]][0]])
    assert tasks.leakage(torch.cat([a[0], b[0]]), held) == 0
    if name == "memorization":  # the same facts in every split
        table = task_.table
        x, y = a
        at = y != tasks.IGNORE
        assert torch.equal(y[at], table[x.roll(1, 1)[at], x[at]])
    again = FreshBatches(task_, 0, 64)  # deterministic: a resumed run continues the stream
    assert torch.equal(next(iter(again))[0], a[0])


def test_tier_two_stages_run_end_to_end(tmp_path):
    """A seconds-long pass of the machinery on one tier task: stage 1 at two of the grid's
    rates, then stage 2 trains at the one stage 1 chose and records how it stopped."""
    common = ["debug=tiny", "layer=gla", f"results_dir={tmp_path / 'results'}",
              f"checkpoint_dir={tmp_path / 'ckpt'}", "logger=csv"]
    first = [run(composed("experiment=tier/induction/lr", *common, f"optim.lr={lr}",
                          f"out_dir={tmp_path / str(lr)}", "suite=tier-lr", hydra=False))
             for lr in (1e-3, 1e-2)]
    # debug=tiny gives both stages 8 steps: a longer stage 2, or resume finds it finished
    rec = run(composed("experiment=tier/induction/final", *common, "suite=tier",
                       "trainer.max_steps=12", f"out_dir={tmp_path / 'final'}", hydra=False))
    assert {r["config"]["suite"] for r in first} == {"tier-lr"}
    assert rec["config"]["optim"]["lr"] == rec["lr_selection"]["selected"] in (1e-3, 1e-2)
    assert rec["stop_reason"] in ("solved", "plateau", "max_steps") and rec["val_curve"]


def test_readme_gives_the_tier_command():
    """One command, stage by stage, every tier task, the frontier's forms."""
    readme = (REPO / "README.md").read_text()
    (line,) = [ln for ln in readme.splitlines() if "experiment=tier/$task/$stage" in ln]
    words = shlex.split(line.replace(";", " ; "))
    assert words[:len(STAGES) + 4] == ["for", "stage", "in", *STAGES, ";"]
    i = words.index("task")
    assert words[i + 1] == "in" and sorted(words[i + 2:i + 2 + len(TASKS)]) == TASKS
    assert "layer=glob(*,exclude=[moe,swa])" in words and "arch=glob(*)" in words
    for form in ("layer=glob(*,exclude=[moe,swa])", "arch=glob(*)"):
        jobs = sweep_jobs("tier/induction/lr", form)
        assert len(jobs) == 4 * sum(f.startswith(form.split("=")[0]) for f in FORMS)


def test_the_tier_is_the_matrix_once_it_has_results():
    """Suite tier takes the matrix from a suite covering more tasks on a smaller budget; its
    stage 1 never does, and without tier records the choice is as before."""
    from synthetic_records import config, record
    from zoo.selection import matrix_suite, summarise

    old = [record(f"o-{t}-{s}", config(t, suite="leaderboard-small", seed=s), 0.3, 0.3)
           for t in ("assoc_recall", "copying", "induction") for s in range(2)]
    first = [record(f"l-{lr}", config("copying", suite="tier-lr", lr=lr), 0.9, 0.9)
             for lr in (1e-3, 1e-2)]
    tier = [record("t-0", config("copying", suite="tier"), 0.99, 0.99, stop_reason="solved",
                   val_curve=[[200, 0.99]])]
    assert matrix_suite(summarise(old + first)) == "leaderboard-small"
    assert matrix_suite(summarise(old + first + tier)) == "tier"


@pytest.fixture(scope="module")
def committed():
    from zoo.reading import read

    return read(REPO / "results")


@pytest.mark.parametrize("suite", ["tier", "tier-lr"])
def test_every_committed_tier_record_says_how_it_stopped(committed, suite):
    """The tier's records (once its sweep is committed) trained on fresh data, and each says
    why it stopped and keeps its validation curve, so every row's `stop` column is read."""
    for path, rec in committed.of_suite(suite).entries:
        if rec.get("status") != "completed":
            continue
        assert rec["stop_reason"] in ("solved", "plateau", "max_steps", "non_finite"), path
        assert rec["val_curve"] and rec["config"]["task"]["fresh"], path
        assert rec["task"] in TASKS, path
