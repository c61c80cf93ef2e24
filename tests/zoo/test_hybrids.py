"""Named hybrids (configs/arch/hybrid, issue 19): each composes, passes the check and runs;
its label names every mixer and the ratio; the CSV carries every mixer's options; the recall
frontier's ``arch=glob(*)`` does not pick them up."""

import csv
import json

import pytest
import torch
from hydra import compose, initialize_config_dir
from synthetic_records import config, record

import layers
import tasks
from zoo.config import split_task_config
from zoo.export import write_csv
from zoo.labels import CONFIG_DIR, label, layer_defaults, layer_sequence
from zoo.model import Backbone, model_kwargs
from zoo.reading import read
from zoo.sweeps import distinct_jobs, sweep_jobs
from zoo.train import run_config
from zoo.validate import check

HYBRID_DIR = CONFIG_DIR / "arch" / "hybrid"
HYBRIDS = sorted(f"hybrid/{p.stem}" for p in HYBRID_DIR.glob("*.yaml"))
# every hybrid file at its own depth (the ratio's block once; 1:1 at the default 2 layers)
LABELS = {
    "hybrid/attention_only": "attention",
    "hybrid/swa_attention_3to1": "swa(64):attention 3:1 x4",
    "hybrid/swa16_attention_1to1": "swa(16):attention 1:1",
    "hybrid/swa16_attention_3to1": "swa(16):attention 3:1 x4",
    "hybrid/swa16_attention_7to1": "swa(16):attention 7:1 x8",
    "phalanx_attention_1to1": "phalanx:attention 1:1",
    "hybrid/phalanx_attention_3to1": "phalanx:attention 3:1 x4",
    "hybrid/phalanx_attention_7to1": "phalanx:attention 7:1 x8",
    "hybrid/gla_attention_1to1": "gla:attention 1:1",
    "hybrid/gla_attention_3to1": "gla:attention 3:1 x4",
    "hybrid/gla_attention_7to1": "gla:attention 7:1 x8",
    "hybrid/mamba_attention_1to1": "mamba(expand=1):attention 1:1",
    "hybrid/mamba_attention_3to1": "mamba(expand=1):attention 3:1 x4",
    "hybrid/mamba_attention_7to1": "mamba(expand=1):attention 7:1 x8",
}


def resolved(tmp_path, *overrides):
    """The config a run of these overrides records (``zoo.train.run_config``)."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, f"out_dir={tmp_path / 'out'}"])
    return run_config(cfg)


def test_every_hybrid_file_has_its_label():
    assert sorted(LABELS) == sorted([*HYBRIDS, "phalanx_attention_1to1"])


@pytest.mark.parametrize("arch", sorted(LABELS))
def test_a_hybrid_composes_passes_the_check_and_runs(tmp_path, arch):
    cfg = resolved(tmp_path, f"arch={arch}", "model.d_model=32")
    check(cfg)
    name, knobs, _ = split_task_config(cfg["task"])
    model = Backbone(**model_kwargs(cfg, **tasks.build(name, **knobs).io))
    built = [type(b.mixer) for b in model.blocks]
    assert built == [layers.get(m) for m in layer_sequence(cfg)]
    x = torch.randint(0, cfg["task"]["vocab_size"], (2, 16))
    out = model(x)
    assert out.shape == (2, 16, cfg["task"]["vocab_size"]) and torch.isfinite(out).all()


@pytest.mark.parametrize("arch", sorted(LABELS))
def test_labels_name_every_mixer_and_the_ratio(tmp_path, arch):
    cfg = resolved(tmp_path, f"arch={arch}")
    assert label(cfg) == LABELS[arch]
    # deeper, the ratio stays and the depth is named
    n = cfg["model"]["n_layers"]
    deeper = resolved(tmp_path, f"arch={arch}", f"model.n_layers={2 * n}")
    assert label(deeper) == LABELS[arch].split(" x")[0] + f" x{2 * n}"


def test_every_mixer_of_a_hybrid_has_its_options_in_the_record_and_the_csv(tmp_path):
    cfg = resolved(tmp_path, "arch=hybrid/mamba_attention_3to1", "task=state_size")
    assert cfg["model"]["mixer_options"] == {"attention": layer_defaults("attention")}
    assert cfg["layer"] == {"name": "mamba", **layer_defaults("mamba"), "expand": 1}
    folder = tmp_path / "results" / "state_size" / "mamba"
    folder.mkdir(parents=True)
    (folder / "h0.json").write_text(json.dumps(record("h0", cfg)))
    write_csv(tmp_path / "all.csv", read(tmp_path / "results"))
    with open(tmp_path / "all.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["label"] == "mamba(expand=1):attention 3:1 x4"
    assert row["layers"] == "mamba,mamba,mamba,attention"
    for k, v in layer_defaults("attention").items():
        assert row[f"config.model.mixer_options.attention.{k}"] == ("" if v is None else str(v))
    for k, v in cfg["layer"].items():
        assert row[f"config.layer.{k}"] == str(v)


def test_the_frontier_glob_leaves_the_hybrids_out():
    """experiment=frontier/* 'arch=glob(*)' sweeps the arch group's own files: the hybrids
    live one level down, so that sweep's set of configs is what it was."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path

    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(CONFIG_DIR)))
    top = sorted(p.stem for p in (CONFIG_DIR / "arch").glob("*.yaml"))
    assert loader.get_group_options("arch") == top
    assert [f"hybrid/{o}" for o in loader.get_group_options("arch/hybrid")] == HYBRIDS


def _hybrid_records(suite="hybrid-recall"):
    """Records shaped like experiment=hybrid_recall: 8 blocks, attention alone and swa(16)
    and gla with attention at 1:1, 3:1 and 7:1 (gla without 7:1), accuracy falling with the
    ratio and the number of pairs."""
    out = []
    forms = [("attention", {}, None, 0)] + [
        (m, opts, [m] * r + ["attention"], r) for m, opts in (("swa", {"window": 16}),
                                                               ("gla", {}))
        for r in (1, 3, 7) if (m, r) != ("gla", 7)]
    for i, (layer, opts, pattern, r) in enumerate(forms):
        model = {"n_layers": 8}
        if pattern:
            model |= {"pattern": pattern, "mixer_options": {"attention": layer_defaults("attention")}}
        for seed in (0, 1):
            cfg = config("state_size", layer, suite=suite, seed=seed, layer_opts=opts, **model)
            acc = 1.0 - 0.1 * r - 0.01 * seed
            rec = record(f"h{i}-{seed}", cfg, val=acc, test=acc)
            rec["metrics"].update({f"test/acc@kv={kv}": acc * (1 - kv / 64) for kv in (4, 8, 16)})
            out.append(rec)
    return out


def _board(tmp_path, records):
    from zoo.leaderboard import board

    for rec in records:
        folder = tmp_path / "results" / rec["task"] / rec["layer"]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{rec['run_id']}.json").write_text(json.dumps(rec))
    return board(tmp_path / "results")


def test_recall_against_the_ratio_is_drawn_from_hybrid_records(tmp_path):
    from zoo import plots

    b = _board(tmp_path, _hybrid_records())
    lines = plots.ratio_lines(b.rows)
    assert {k: sorted(v) for k, v in lines.items()} == {
        ("", 64, 8): [0], ("gla", 64, 8): [1, 3], ("swa(16)", 64, 8): [1, 3, 7]}
    assert lines[("swa(16)", 64, 8)][3].label == "swa(16):attention 3:1 x8"
    assert lines[("swa(16)", 64, 8)][7].stat("test/acc@kv=4")[0] == pytest.approx(
        (0.3 + 0.29) / 2 * (1 - 4 / 64))
    assert plots.ratio_suite(b.rows) == "hybrid-recall"
    todo = plots.draw_all(b, tmp_path / "plots")
    assert (tmp_path / "plots" / plots.RATIO) in [p for _, p in todo]
    assert (tmp_path / "plots" / plots.RATIO).stat().st_size > 0


def test_no_ratio_figure_without_a_mixer_at_two_ratios(tmp_path):
    from synthetic_records import frontier
    from zoo import plots

    b = _board(tmp_path, frontier(seeds=1, lrs=(1e-3,)))  # phalanx:attention at 1:1 only
    assert plots.ratio_suite(b.rows) is None
    assert plots.RATIO not in [p.name for _, p in plots.planned(b, tmp_path / "plots")]


def _arch_runs(tmp_path, experiment):
    """Each architecture and length of an experiment's sweep, resolved (seeds and rates aside,
    its jobs are one config)."""
    out = {}
    for job in distinct_jobs(experiment):
        cfg = resolved(tmp_path, *job)
        out[(label(cfg), cfg["task"]["seq_len"])] = cfg
    return out


LM = ["attention x4 ch=mlp", "swa(64):attention 3:1 x4 ch=mlp",
      "phalanx:attention 3:1 x4 ch=mlp", "gla:attention 3:1 x4 ch=mlp",
      "mamba(expand=1):attention 3:1 x4 ch=mlp", "phalanx:attention 1:1 x4 ch=mlp"]
RECALL = ["attention x8"] + [f"{m}:attention {r}:1 x8" for m in
                             ("swa(16)", "phalanx", "gla", "mamba(expand=1)") for r in (1, 3, 7)]


@pytest.mark.parametrize("experiment", ["hybrid_lm", "hybrid_lm_lr", "hybrid_lm_lr_edge"])
def test_hybrid_lm_sweeps_the_hybrids_at_both_lengths_at_matched_parameters(tmp_path,
                                                                           experiment):
    from zoo.ess import settings

    runs = _arch_runs(tmp_path, experiment)
    assert sorted(runs) == sorted((lab, n) for lab in LM for n in (1024, 2048))
    params = {}
    for (lab, n), cfg in runs.items():
        check(cfg)
        assert cfg["task"]["name"] == "lm" and cfg["task"]["max_files"] is None
        assert (cfg["resume"], cfg["results_dir"]) == (True, "results")
        # the end-of-run ESS on the first 256 tokens of 8 test windows, at 64 positions
        assert settings(cfg["ess"]) == {"sequences": 8, "positions": 64, "max_len": 256}
        name, knobs, _ = split_task_config(cfg["task"])
        model = Backbone(**model_kwargs(cfg, **tasks.build(name, **knobs).io))
        params[lab] = (model.num_params(), model.num_params(non_embedding=True))
    # matched: every architecture within 3% of attention's parameters, with and without the
    # (tied) embedding (mamba's hybrid is the farthest: -2.1%, -2.8%)
    for lab, counts in params.items():
        for n, ref in zip(counts, params["attention x4 ch=mlp"]):
            assert abs(n / ref - 1) < 0.03, (lab, n, ref)
    n_jobs = len(sweep_jobs(experiment))
    # three seeds, or three rates at seed 0, or the two rates beyond them
    assert n_jobs == len(runs) * (2 if experiment.endswith("_edge") else 3)


@pytest.mark.parametrize("experiment,stage", [("hybrid_recall", "final"), ("hybrid_recall_lr", "lr"),
                                              ("hybrid_recall_lr_edge", "lr_edge"),
                                              ("hybrid_recall_long", "long")])
def test_hybrid_recall_takes_the_frontiers_setting(tmp_path, experiment, stage):
    runs = _arch_runs(tmp_path, experiment)
    assert sorted(lab for lab, _ in runs) == sorted(RECALL)
    frontier = resolved(tmp_path, f"experiment=frontier/{stage}")
    for cfg in runs.values():
        check(cfg)
        for group in ("task", "trainer", "early_stopping", "resume", "results_dir", "lr_edge",
                      "extend"):
            assert cfg[group] == frontier[group], group
        assert cfg.get("ess") is frontier.get("ess") is None  # the frontier's ESS: all of it
        assert cfg["model"]["d_model"] == 64 and cfg["model"]["channel"] == "none"


def test_the_stages_of_a_hybrid_sweep_meet(tmp_path):
    """Stage 2's runs find stage 1's (lr_from): their configs differ only in what a stage
    sets, and stage 1 is known as a selection stage."""
    from zoo.selection import selection_stages
    from zoo.two_stage import stage_key

    for final, firsts, ladder in (("hybrid_lm", ("hybrid_lm_lr", "hybrid_lm_lr_edge"), None),
                                  ("hybrid_recall", ("hybrid_recall_lr", "hybrid_recall_lr_edge"),
                                   "hybrid_recall_long")):
        two = _arch_runs(tmp_path, final)
        one, edge = (_arch_runs(tmp_path, first) for first in firsts)
        for stage in (one, edge):
            assert {k: stage_key(c) for k, c in two.items()} == \
                {k: stage_key(c) for k, c in stage.items()}
        suite = next(iter(one.values()))["suite"]
        assert {c["lr_from"] for c in two.values()} == {suite} and suite in selection_stages()
        # the widened grid trains in stage 1's suite, so stage 2 selects over all its rates
        assert {(c["suite"], c["lr_edge"]) for c in edge.values()} == {(suite, True)}
        assert not any(c["lr_edge"] for c in one.values())
        if ladder:  # the budget ladder extends stage 2's runs in stage 2's suite
            longer = _arch_runs(tmp_path, ladder)
            assert {k: (stage_key(c), c["suite"], c["lr_from"]) for k, c in longer.items()} == \
                {k: (stage_key(c), c["suite"], c["lr_from"]) for k, c in two.items()}
            assert all(c["extend"] and c["trainer"]["max_steps"] == 20000 for c in longer.values())


def test_the_cost_script_times_a_step_and_costs_a_job(tmp_path):
    """benchmarks/hybrid_step.py, on a tiny hybrid: a step, an evaluation batch, a job's
    seconds from them (no timing is asserted)."""
    import importlib.util

    path = CONFIG_DIR.parent / "benchmarks" / "hybrid_step.py"
    spec = importlib.util.spec_from_file_location("hybrid_step", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cfg = bench.resolved(["experiment=hybrid_recall", "arch=hybrid/gla_attention_3to1",
                          "model.d_model=16", "task.num_val=8", "task.num_test=8"])
    (r,) = bench.measure([cfg], rounds=1)
    assert r["label"] == "gla:attention 3:1 x8" and r["T"] == 64
    assert r["step_s"] > 0 and r["eval_s"] > 0 and r["tokens_per_s"] > 0
    # 5,000 steps, 25 validations of one batch, 4 test sets (the mix and 3 slices) of one
    assert bench.job_seconds(cfg, {(r["label"], 64): r}) == pytest.approx(
        5000 * r["step_s"] + (25 + 4) * r["eval_s"])


def test_the_readmes_hybrid_commands_compose_and_validate_every_job(tmp_path):
    """The README's two commands (stage 1, then stage 2, each a sweep with its launcher
    overrides): every architecture and setting of each stage resolves and passes the checks,
    the end-of-run ESS's included, and each sweep is resumable into results/."""
    import shlex

    from zoo.ess import settings

    readme = (CONFIG_DIR.parent / "README.md").read_text()
    lines = [ln for ln in readme.splitlines() if ln.startswith("for stage in hybrid_")]
    assert len(lines) == 2
    seen = {}
    for line in lines:
        stages, command = line[len("for stage in "):].split("; do ", 1)
        args = shlex.split(command.removesuffix("; done"))
        assert args[:5] == ["OMP_NUM_THREADS=1", "python", "-m", "zoo.train", "-m"]
        extra = [a for a in args[5:] if a != "experiment=$stage"]
        assert extra == ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "threads=1"]
        for stage in stages.split():
            jobs = distinct_jobs(stage, *extra)
            for job in jobs:
                cfg = resolved(tmp_path, *job)
                check(cfg)
                settings(cfg.get("ess"))
                assert (cfg["resume"], cfg["results_dir"], cfg["threads"]) == (True, "results", 1)
            seen[stage] = (len(jobs), len(sweep_jobs(stage, *extra)))
    assert seen == {"hybrid_lm_lr": (12, 36), "hybrid_lm_lr_edge": (12, 24), "hybrid_lm": (12, 36),
                    "hybrid_recall_lr": (13, 52), "hybrid_recall_lr_edge": (13, 26),
                    "hybrid_recall": (13, 39), "hybrid_recall_long": (13, 39)}
