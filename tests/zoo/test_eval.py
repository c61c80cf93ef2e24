"""``python -m zoo.eval``: a trained run tested again at new lengths or on another variant, its
eval record linked to the run and joined to the run's leaderboard row; model and training knobs
refused by name before any work; a run without a kept checkpoint named in one line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from zoo import eval as zeval
from zoo import leaderboard
from zoo.record import write_record
from zoo.reading import read
from zoo.train import run

from synthetic_records import config, record

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
# a copying run: generative test rows, so the eval also scores free-running generation
COPYING = ["task=copying", "task.max_len=9", "task.seq_len=41", "task.num_test=48"]


def train(root: Path, *overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["debug=tiny", f"results_dir={root / 'results'}",
                                          f"out_dir={root / 'out'}", *COPYING, *overrides])
    return run(cfg)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny copying run that kept its checkpoint, and one that did not."""
    root = tmp_path_factory.mktemp("eval")
    kept = train(root, "keep_checkpoint=true")
    gone = train(root / "b", "seed=1", f"results_dir={root / 'results'}")
    return root, kept, gone


def files(d: Path) -> list[Path]:
    return sorted(d.rglob("*.json"))


def test_eval_at_new_lengths_writes_one_linked_record_and_joins_the_row(trained):
    root, kept, _ = trained
    results = root / "results"
    before = set(files(results))
    proc = subprocess.run([sys.executable, "-m", "zoo.eval", f"run={kept['run_id']}",
                           f"results_dir={results}", "task.eval_lengths=[13,21]"],
                          cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    new = sorted(set(files(results)) - before)
    assert len(new) == 1 and new[0].parent == results / "evals" / "copying" / "attention"
    ev = json.loads(new[0].read_text())
    assert ev["kind"] == "eval" and ev["status"] == "completed"
    assert ev["evaluates"]["run_id"] == kept["run_id"]
    assert ev["evaluates"]["config_key"] == kept["config_key"]
    assert ev["evaluates"]["checkpoint"] == kept["checkpoint"]["path"]
    assert ev["overrides"] == {"task.eval_lengths": [13, 21]} and ev["variant"] is None
    m = ev["metrics"]
    for where in ("len=9", "len=13", "len=21"):
        for k in ("acc", "exact_match", "string_exact_match", "gen_acc", "gen_exact_match",
                  "gen_string_exact_match"):
            assert 0 <= m[f"test/{k}@{where}"] <= 1
        # greedy decoding writes an answer right iff every teacher-forced argmax is right
        assert m[f"test/gen_exact_match@{where}"] == m[f"test/exact_match@{where}"]
    assert m["test/acc@len=9"] == kept["metrics"]["test/acc@len=9"], "the run's own test set"
    assert f"eval {ev['run_id']} of run {kept['run_id']}" in proc.stdout

    board = leaderboard.board(results)
    (row,) = [r for r in board.rows if kept["run_id"] in {c["run_id"] for c in r.chosen}]
    assert row.variants("len=") == ["len=9", "len=13", "len=21"]
    assert row.stat("test/acc@len=21")[0] == m["test/acc@len=21"]
    text = leaderboard.build(results)
    assert "| architecture | len=9 (trained) | len=13 | len=21 |" in text
    assert "| attention, generated | " in text
    assert "and 1 eval records joined to them" in text


@pytest.mark.parametrize("override,says", [
    ("model.d_model=64", "changes the model"),
    ("layer.num_heads=2", "changes the model"),
    ("task.vocab_size=40", "changes the model"),
    ("optim.lr=1e-3", "changes the training"),
    ("trainer.max_steps=9", "changes the training"),
    ("task.batch_size=8", "sizes the training data"),
    ("seed=1", "is the run's seed"),
])
def test_model_and_training_knobs_are_refused_by_name_before_any_work(trained, capsys,
                                                                      override, says):
    root, kept, _ = trained
    before = files(root)
    assert zeval.main([f"run={kept['run_id']}", f"results_dir={root / 'results'}",
                       override]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {override.split('=')[0]}=") and says in line, line
    assert "task.eval_lengths" in line, "the message lists what may change"
    assert files(root) == before


@pytest.mark.parametrize("args,says", [
    (["run=nope"], "run=nope: no run record with this id"),
    (["task.eval_lengths=[9]"], "run=null: give the run to evaluate"),
    (["run={id}", "task.bogus=1"], "task.bogus=1: is not a knob of copying"),
    (["run={id}", "task.eval_lengths=[3,x]"], "task.eval_lengths"),
    (["run={id}", "eval_lengths"], "eval_lengths: expected key=value"),
])
def test_bad_arguments_fail_in_one_line(trained, capsys, args, says):
    root, kept, _ = trained
    args = [a.format(id=kept["run_id"]) for a in args]
    assert zeval.main([*args, f"results_dir={root / 'results'}"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert says in line, line


def test_a_run_without_its_checkpoint_is_named(trained, capsys):
    root, _, gone = trained
    assert not gone["checkpoint"]["kept"]
    assert zeval.main([f"run={gone['run_id']}", f"results_dir={root / 'results'}"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"run {gone['run_id']} kept no checkpoint" in line and "keep_checkpoint=true" in line


def test_another_variant_is_named_in_every_slice_and_found_by_checkpoint(trained, monkeypatch):
    root, kept, _ = trained
    monkeypatch.chdir(root)
    ev, path = zeval.run([f"run={kept['checkpoint']['path']}", "results_dir=results",
                          "task.variant=lookup", "task.num_test=16"])
    assert ev["evaluates"]["run_id"] == kept["run_id"] and ev["variant"] == "variant=lookup"
    assert ev["config"]["task"]["variant"] == "lookup" and ev["config"]["task"]["num_test"] == 16
    assert {k.split("@")[1] for k in ev["metrics"]} == {"variant=lookup", "variant=lookup,len=9"}
    text = leaderboard.build(root / "results")
    table = text.split("### Test accuracy by variant")[1]
    assert "| architecture | variant=lookup | variant=lookup,len=9 |" in table


def test_checkpoint_messages_name_the_run():
    old = {"run_id": "r0", "best_checkpoint": "/nowhere/best.ckpt"}
    with pytest.raises(LookupError, match=r"run r0's checkpoint /nowhere/best.ckpt is missing "
                                          r"\(records made before keep_checkpoint"):
        zeval.kept_checkpoint(old)
    with pytest.raises(LookupError, match="run r1 kept no checkpoint"):
        zeval.kept_checkpoint({"run_id": "r1", "checkpoint": {"kept": False, "path": None}})
    moved = {"run_id": "r2", "checkpoint": {"kept": True, "path": "/nowhere/best.ckpt"}}
    with pytest.raises(LookupError, match="run r2's checkpoint /nowhere/best.ckpt is missing;"):
        zeval.kept_checkpoint(moved)


def test_committed_records_without_checkpoints_fail_naming_the_run(capsys):
    """The committed records kept no checkpoint: zoo.eval and zoo.ess say so in one line."""
    results = Path(__file__).resolve().parents[2] / "results"
    old = next((r for _, r in read(results).entries if "checkpoint" not in r), None)
    if old is None:
        pytest.skip("no record from before keep_checkpoint in this checkout")
    assert zeval.main([f"run={old['run_id']}", f"results_dir={results}"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"run {old['run_id']}'s checkpoint" in line and "is missing" in line


def eval_record(run_id, eval_id, metrics, time="2026-01-02T00:00:00", variant=None):
    rec = record(eval_id, config("copying"), time=time)
    rec.update(kind="eval", metrics=metrics, variant=variant,
               evaluates={"run_id": run_id, "config_key": "k", "record": "r", "checkpoint": "c"})
    return rec


def test_join_keeps_the_runs_own_metrics_and_the_later_eval(tmp_path):
    d = tmp_path / "results"
    run_rec = record("run1", config("copying"))
    run_rec["metrics"].update({"test/acc@len=10": 0.5, "test/exact_match@len=10": 0.25})
    write_record(d, run_rec)
    write_record(d / "evals", eval_record("run1", "e1", {
        "test/acc@len=10": 0.9, "test/acc@len=20": 0.3, "test/exact_match@len=20": 0.1}))
    write_record(d / "evals", eval_record("run1", "e2", {
        "test/acc@len=20": 0.4, "test/gen_acc@len=20": 0.2}, time="2026-01-03T00:00:00"))
    write_record(d / "evals", eval_record("nobody", "e3", {"test/acc@len=20": 1.0}))
    recs = read(d)
    (joined,) = recs.counted
    m = joined["metrics"]
    assert m["test/acc@len=10"] == 0.5, "the run's own value wins"
    assert m["test/acc@len=20"] == 0.4, "the later eval wins"
    assert m["test/exact_match@len=20"] == 0.1 and m["test/gen_acc@len=20"] == 0.2
    assert joined["evals"] == ["e1", "e2"]
    assert [p for p, _ in recs.entries] == ["copying/attention/run1.json"]
    assert recs.problems == ["evals/copying/attention/e3.json: evaluates run nobody, which is "
                             "not among these records"]
    assert read(d).of_suite("other").evals == []
    text = leaderboard.build(d)
    assert "| attention | 0.500 / 0.250 | 0.400 / 0.100 |" in text
    assert "| attention, generated | – / – | 0.200 / – |" in text
