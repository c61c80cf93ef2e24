"""Sweeps: resumable runs, parallel workers, the leaderboard presets, DDP on CPU."""

import json
import logging
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from lightning.pytorch.callbacks import Callback

import layers
from zoo.record import config_key, find_finished
from zoo.train import run, run_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PRESETS = sorted((CONFIGS / "experiment" / "leaderboard").glob("[!_]*.yaml"))
REPO = Path(__file__).resolve().parents[2]


class Crash(RuntimeError):
    pass


class CrashAt(Callback):
    """Dies at a given step, as a killed worker would (after the step-4 checkpoint)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise Crash(f"killed at step {self.step}")


def records(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(results.rglob("*.json"))]


def test_interrupted_run_resumes_and_finished_run_is_skipped(make_cfg, tmp_path):
    ckpt = tmp_path / "ckpt"
    cfg = make_cfg("resume=true", f"checkpoint_dir={ckpt}")
    with pytest.raises(Crash):
        run(cfg, callbacks=[CrashAt(6)])
    assert not records(tmp_path / "results"), "a killed run writes no record"
    last = list(ckpt.rglob("last.ckpt"))
    assert len(last) == 1 and last[0].parent.name == config_key(run_config(cfg))

    rec = run(cfg)  # the restart continues from the step-4 checkpoint
    assert rec["status"] == "completed" and rec["resumed_from_step"] == 4 and rec["steps"] == 8
    assert len(records(tmp_path / "results")) == 1

    again = run(cfg)  # finished: skipped, nothing new written
    assert again["run_id"] == rec["run_id"]
    assert len(records(tmp_path / "results")) == 1
    # a different seed is a different run
    other = run(make_cfg("resume=true", f"checkpoint_dir={ckpt}", "seed=1"))
    assert other["run_id"] != rec["run_id"] and len(records(tmp_path / "results")) == 2


class NoImprovement(Callback):
    """Reports the same validation metrics every time (after the module logs them, before the
    checkpoint callbacks read them): from the second validation on nothing improves."""

    def on_validation_end(self, trainer, module):
        for k in [k for k in trainer.callback_metrics if k.startswith("val/")]:
            trainer.callback_metrics[k] = torch.tensor(0.5)


def test_a_run_on_a_plateau_resumes_from_its_latest_validation(make_cfg, tmp_path):
    """last.ckpt follows every validation, improved or not (Lightning's save_last followed only
    improvements, so a killed run on a plateau redid every step since its best)."""
    ckpt = tmp_path / "ckpt"
    cfg = make_cfg("resume=true", f"checkpoint_dir={ckpt}", "trainer.max_steps=12")
    with pytest.raises(Crash):
        run(cfg, callbacks=[NoImprovement(), CrashAt(10)])
    (last,) = ckpt.rglob("last.ckpt")
    assert torch.load(last, weights_only=False)["global_step"] == 8  # validations at 4 and 8
    assert torch.load(last.parent / "best.ckpt", weights_only=False)["global_step"] == 4
    assert not list(ckpt.rglob("*.tmp"))
    rec = run(cfg)
    assert rec["status"] == "completed" and rec["resumed_from_step"] == 8 and rec["steps"] == 12


def test_unreadable_checkpoint_starts_afresh(make_cfg, tmp_path):
    cfg = make_cfg("resume=true", f"checkpoint_dir={tmp_path / 'ckpt'}")
    key = config_key(run_config(cfg))
    bad = tmp_path / "ckpt" / "assoc_recall" / "attention" / key / "last.ckpt"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"half a checkpoint")  # killed while writing
    rec = run(cfg)
    assert rec["status"] == "completed" and rec["resumed_from_step"] == 0 and rec["steps"] == 8


def test_config_key_ignores_bookkeeping_only():
    base = {"task": {"name": "t"}, "seed": 0, "out_dir": "a", "results_dir": "r", "threads": 1}
    assert config_key(base) == config_key({**base, "out_dir": "b", "threads": None})
    assert config_key(base) != config_key({**base, "seed": 1})
    assert config_key(base) != config_key({**base, "task": {"name": "u"}})


def test_find_finished_skips_foreign_and_unfinished(tmp_path):
    d = tmp_path / "assoc_recall" / "attention"
    d.mkdir(parents=True)
    cfg = {"task": {"name": "assoc_recall"}, "seed": 0}
    (d / "broken.json").write_text("{")
    (d / "running.json").write_text(json.dumps({"config": cfg, "status": "running"}))
    assert find_finished(tmp_path, "assoc_recall", "attention", config_key(cfg)) is None
    (d / "done.json").write_text(json.dumps({"config": cfg, "status": "completed", "run_id": "x"}))
    assert find_finished(tmp_path, "assoc_recall", "attention", config_key(cfg))["run_id"] == "x"


def cli(*args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "zoo.train", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


@pytest.mark.slow
def test_killed_sweep_restarted_redoes_nothing_finished(make_cfg, tmp_path):
    """A multirun over two seeds: seed 0 finished, seed 1 was killed at step 6. Restarting the
    same command skips seed 0 and resumes seed 1 from its last checkpoint."""
    results, ckpt = tmp_path / "results", tmp_path / "ckpt"
    common = ["debug=tiny", "resume=true", f"results_dir={results}", f"checkpoint_dir={ckpt}",
              "logger=csv"]
    assert cli("-m", *common, "seed=0", cwd=tmp_path).returncode == 0
    first = records(results)
    assert len(first) == 1
    with pytest.raises(Crash):  # the same config as the CLI's seed=1 job, killed midway
        run(make_cfg(*common[1:], "seed=1"), callbacks=[CrashAt(6)])
    proc = cli("-m", *common, "seed=0,1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipping: this config finished" in proc.stderr + proc.stdout
    after = records(results)
    assert len(after) == 2
    assert [r for r in after if r["seed"] == 0] == first, "the finished run is untouched"
    resumed = next(r for r in after if r["seed"] == 1)
    assert resumed["resumed_from_step"] == 4 and resumed["steps"] == 8


@pytest.mark.slow
def test_two_joblib_workers_leave_every_record_intact(tmp_path):
    results = tmp_path / "results"
    proc = cli("-m", "debug=tiny", f"results_dir={results}", "seed=0,1,2,3",
               "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "threads=1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = records(results)
    assert sorted(r["seed"] for r in recs) == [0, 1, 2, 3]
    assert all(r["status"] == "completed" for r in recs)
    assert not list(results.rglob("*.tmp"))


@pytest.mark.slow
def test_ddp_on_cpu_writes_one_record_matching_a_single_process(tmp_path):
    """2 processes (gloo), global batch 32 = 2 x 16, against one process with batch 32."""
    common = ["debug=tiny", "logger=csv", "trainer.max_steps=16", "task.num_train=1024"]
    single = cli(*common, f"results_dir={tmp_path / 'single'}", cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = cli(*common, f"results_dir={tmp_path / 'ddp'}", "trainer=ddp",
              "trainer.accelerator=cpu", "trainer.devices=2", cwd=tmp_path)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    (one,), (two,) = records(tmp_path / "single"), records(tmp_path / "ddp")  # one each
    assert two["config"]["trainer"]["devices"] == 2 and two["steps"] == one["steps"] == 16
    for k in ("val/loss", "test/loss"):
        assert abs(two["metrics"][k] - one["metrics"][k]) < 0.05 * one["metrics"][k], k
    assert abs(two["metrics"]["test/acc"] - one["metrics"]["test/acc"]) < 0.1


def test_ddp_global_batch_must_split_evenly(make_cfg, tmp_path):
    from zoo.data import TaskDataModule
    import tasks
    dm = TaskDataModule(tasks.build("assoc_recall"), batch_size=30)
    dm.check_world_size(2)
    with pytest.raises(ValueError, match="task.batch_size=30 .* not divisible by the 4"):
        dm.check_world_size(4)


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_leaderboard_preset_sweeps_every_sequence_mixer(preset):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment=leaderboard/{preset.stem}"],
                      return_hydra_config=True)
        from hydra.core.global_hydra import GlobalHydra
        options = GlobalHydra.instance().config_loader().get_group_options("layer")
    params = cfg.hydra.sweeper.params
    glob = OverridesParser.create().parse_override(f"layer={params.layer}").value()
    swept = set(glob.filter(options))
    sequence_mixers = set(layers.names("sequence"))
    assert swept == sequence_mixers, "the preset must sweep exactly the registered mixers"
    assert len(str(params.seed).split(",")) == 3
    assert len(str(params["optim.lr"]).split(",")) >= 2
    assert cfg.resume is True and cfg.task.name == preset.stem and cfg.suite
    assert cfg.task.num_val > 0 and cfg.trainer.max_steps <= 1000  # CPU-sized


def test_readme_tier_command_sweeps_every_preset_with_the_presets_grid():
    """The README's one-sweep tier names every leaderboard preset and repeats, override for
    override, the grid the presets share (a sweep over ``experiment`` does not read it)."""
    readme = (CONFIGS.parent / "README.md").read_text()
    (line,) = [ln for ln in readme.splitlines()
               if ln.startswith("OMP_NUM_THREADS=1 python -m zoo.train -m experiment=leaderboard/")]
    parser = OverridesParser.create()
    args = shlex.split(line)[5:]  # past OMP_NUM_THREADS=1 python -m zoo.train -m
    overrides = {o.key_or_group: o for o in parser.parse_overrides(args)}
    assert sorted(overrides["experiment"].value().list) == sorted(
        f"leaderboard/{p.stem}" for p in PRESETS)
    grid = yaml.safe_load((CONFIGS / "experiment" / "leaderboard" / "_common.yaml").read_text())
    params = grid["hydra"]["sweeper"]["params"]
    assert set(params) | {"experiment"} <= set(overrides)
    for key, value in params.items():
        want = parser.parse_override(f"{key}={value}")
        assert str(overrides[key].value()) == str(want.value()), key


def test_slurm_launcher_config_composes():
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    shipped = yaml.safe_load((CONFIGS / "hydra" / "launcher" / "slurm.yaml").read_text())
    assert launcher.timeout_min == shipped["timeout_min"]


def test_resumed_fresh_run_continues_its_stream_history_and_wall_time(make_cfg, tmp_path):
    """Fresh data is drawn per step from seeded blocks, so a run killed at step 6 and resumed
    from its step-4 checkpoint trains on exactly the batches an uninterrupted run sees."""
    import torch

    ckpt = tmp_path / "ckpt"
    cfg = make_cfg("resume=true", f"checkpoint_dir={ckpt}", "task.fresh=true")
    with pytest.raises(Crash):
        run(cfg, callbacks=[CrashAt(6)])
    (last,) = ckpt.rglob("last.ckpt")
    first_part = torch.load(last, weights_only=False)["zoo"]["wall_s"]
    resumed = run(cfg)
    whole = run(make_cfg("task.fresh=true", f"results_dir={tmp_path / 'whole'}"))
    assert resumed["resumed_from_step"] == 4 and resumed["steps"] == whole["steps"] == 8
    assert [s for s, _ in resumed["val_curve"]] == [s for s, _ in whole["val_curve"]] == [4, 8]
    for k, v in whole["metrics"].items():
        assert resumed["metrics"][k] == pytest.approx(v, rel=1e-4, abs=1e-6), k
    assert resumed["examples_seen"] == whole["examples_seen"] == 8 * 32
    assert resumed["wall_time_s"] > first_part, "wall time covers every part of the run"
    assert not list(ckpt.rglob("*.ckpt")), "a recorded run's checkpoints are removed"


def _launch_together(cwd: Path, *arg_lists: list[str]) -> list[subprocess.CompletedProcess]:
    procs = [subprocess.Popen([sys.executable, "-m", "zoo.train", *args], cwd=cwd, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for args in arg_lists]
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=300), *p.communicate())
            for p in procs]


@pytest.mark.slow
def test_two_identical_resume_runs_together_train_once(tmp_path):
    args = ["debug=tiny", "resume=true", "keep_checkpoint=true", "threads=1",
            "trainer.max_steps=48", "trainer.val_check_interval=8", "results_dir=results"]
    procs = _launch_together(tmp_path, args, args)
    assert all(p.returncode == 0 for p in procs), [p.stderr[-2000:] for p in procs]
    said = "".join(p.stderr + p.stdout for p in procs)
    assert "skipping: an identical run" in said or "skipping: this config finished" in said
    recs = records(tmp_path / "results")
    assert len(recs) == 1 and recs[0]["status"] == "completed"
    ckpt_dirs = {p.parent for p in (tmp_path / "checkpoints").rglob("*.ckpt")}
    assert len(ckpt_dirs) == 1 and [p.name for p in ckpt_dirs.pop().glob("*.ckpt")] == [
        "best.ckpt"]
    assert recs[0]["checkpoint"]["kept"] and Path(recs[0]["checkpoint"]["path"]).is_file()


@pytest.mark.slow
def test_two_runs_started_together_get_two_run_directories(tmp_path):
    common = ["debug=tiny", "threads=1"]
    procs = _launch_together(tmp_path, [*common, "seed=0"], [*common, "seed=1"])
    assert all(p.returncode == 0 for p in procs), [p.stderr[-2000:] for p in procs]
    run_dirs = sorted((tmp_path / "outputs" / "assoc_recall" / "attention").iterdir())
    assert len(run_dirs) == 2
    seeds = sorted((d / ".hydra" / "overrides.yaml").read_text().count("seed=1") for d in run_dirs)
    assert seeds == [0, 1], "each directory holds its own run's overrides"
    for d in run_dirs:
        lines = (d / "logs" / "metrics.csv").read_text().splitlines()
        assert len(lines) > 1 and lines.count(lines[0]) == 1  # one run's log, not two
    assert len(records(tmp_path / "runs")) == 2


def test_stage_two_trains_at_the_rate_stage_one_chose(make_cfg, tmp_path):
    stage1 = [run(make_cfg("suite=s1", f"optim.lr={lr}")) for lr in (1e-4, 3e-3)]
    best = max(stage1, key=lambda r: max(v for _, v in r["val_curve"]))
    rec = run(make_cfg("suite=s2", "lr_from=s1", "seed=1", "trainer.max_steps=12"))
    assert rec["config"]["optim"]["lr"] == rec["lr_selection"]["selected"]
    assert set(rec["lr_selection"]["rates"]) == {"0.0001", "0.003"}
    scores = {lr: v["mean_best"] for lr, v in rec["lr_selection"]["rates"].items()}
    assert scores[str(rec["config"]["optim"]["lr"])] == max(scores.values())
    assert best["config"]["optim"]["lr"] in (1e-4, 3e-3)


def test_lr_edge_trains_only_the_rate_beyond_an_unsolved_edge(make_cfg, tmp_path, caplog):
    """Stage 1 at two rates, then lr_edge=true beyond each edge: the run beyond the best rate's
    edge trains into the same suite (stage 2 then selects over three rates), the other skips
    before any work, saying why, and writes no record."""
    from zoo.record import load_records
    from zoo.two_stage import select_lr

    unsolvable = "early_stopping.stopping_threshold=1.01"  # validation never reaches it
    for lr in (1e-3, 3e-3):
        run(make_cfg("suite=s1", f"optim.lr={lr}", unsolvable))
    best, _ = select_lr(run_config(make_cfg("suite=s1", unsolvable)), tmp_path / "results", "s1",
                        "acc", "max")
    beyond, other = (1e-2, 3e-4) if best == 3e-3 else (3e-4, 1e-2)
    with caplog.at_level(logging.INFO, logger="zoo.train"):
        skipped = run(make_cfg("suite=s1", f"optim.lr={other}", "lr_edge=true", unsolvable))
    assert skipped["status"] == "skipped" and "skipping: " in caplog.text
    assert "not the best" in caplog.text  # beyond the edge of the rate that lost
    assert len(load_records(tmp_path / "results")[0]) == 2
    rec = run(make_cfg("suite=s1", f"optim.lr={beyond}", "lr_edge=true", unsolvable))
    assert rec["status"] == "completed" and rec["config"]["optim"]["lr"] == beyond
    assert "sits at its edge unsolved" in rec["lr_edge"]  # the record says why it trained
    assert all(r["lr_edge"] is None for r in load_records(tmp_path / "results")[0]
               if r["run_id"] != rec["run_id"])
    final = run(make_cfg("suite=s2", "lr_from=s1", unsolvable))
    assert set(final["lr_selection"]["rates"]) == {str(r) for r in (1e-3, 3e-3, beyond)}


def test_readme_frontier_command_runs_every_stage_in_order():
    """The README's frontier command: stage 1, its widening, stage 2, the budget ladder."""
    readme = (CONFIGS.parent / "README.md").read_text()
    (line,) = [ln for ln in readme.splitlines() if "experiment=frontier/$stage" in ln]
    words = shlex.split(line.replace(";", " ; "))
    assert words[:8] == ["for", "stage", "in", "lr", "lr_edge", "final", "long", ";"]
    for stage in words[3:7]:
        assert (CONFIGS / "experiment" / "frontier" / f"{stage}.yaml").is_file()


@pytest.mark.parametrize("stage", ["lr", "lr_edge", "final"])
def test_frontier_stages_compose_for_every_form(stage):
    forms = [f"layer={n}" for n in layers.names() if n != "swa"] + [
        f"arch={p.stem}" for p in sorted((CONFIGS / "arch").glob("*.yaml"))]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        for form in forms:
            cfg = compose("train", overrides=[f"experiment=frontier/{stage}", form,
                                              "model.d_model=32"], return_hydra_config=True)
            assert cfg.task.name == "state_size" and list(cfg.task.kv_pairs) == [4, 8, 16]
            assert cfg.task.fresh and cfg.task.vocab_size == 8192 and cfg.results_dir == "results"
            params = cfg.hydra.sweeper.params
            if stage == "lr":
                assert cfg.suite == "frontier-lr" and params["optim.lr"] == "3e-4,1e-3,3e-3,1e-2"
                assert cfg.lr_edge is False and cfg.lr_from is None
            elif stage == "lr_edge":  # the next half-decade step beyond each edge of lr's grid
                assert cfg.suite == "frontier-lr" and params["optim.lr"] == "1e-4,3e-2"
                assert cfg.lr_edge is True and cfg.lr_from is None
                assert cfg.trainer.max_steps == 1000 and "seed" not in params
            else:
                assert cfg.suite == "frontier" and cfg.lr_from == "frontier-lr"
                assert params["seed"] == "0,1,2"


@pytest.mark.slow
def test_two_sweeps_started_together_get_two_sweep_directories(tmp_path):
    common = ["-m", "debug=tiny", "threads=1"]
    procs = _launch_together(tmp_path, [*common, "seed=0,1", "hydra/launcher=joblib",
                                        "hydra.launcher.n_jobs=2"], [*common, "seed=2,3"])
    assert all(p.returncode == 0 for p in procs), [p.stderr[-2000:] for p in procs]
    sweeps = sorted((tmp_path / "multirun").iterdir())
    assert len(sweeps) == 2
    for d in sweeps:  # the joblib workers wrote into their parent's sweep directory
        assert sorted(p.name for p in d.iterdir()) == ["0", "1", "multirun.yaml"]
    assert len(records(tmp_path / "runs")) == 4
