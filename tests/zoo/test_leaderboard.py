import copy
import json

import pytest

from zoo import leaderboard
from zoo.record import SCHEMA_VERSION, write_record

BASE_CFG = {
    "task": {"name": "assoc_recall", "seq_len": 64, "num_kv_pairs": 4, "vocab_size": 8192,
             "power_a": 0.01, "random_non_queries": True, "num_train": 100, "num_val": 10,
             "num_test": 10, "batch_size": 8, "eval_lengths": None},
    "layer": {"name": "attention", "num_heads": 4, "pos": "rope", "window": None},
    "model": {"d_model": 64, "n_layers": 2, "pattern": None, "channel": "mlp"},
    "optim": {"lr": 1e-3, "weight_decay": 0.1},
    "trainer": {"max_steps": 10},
    "seed": 0, "results_dir": "x", "out_dir": "y",
}


def rec(run_id, lr, seed, val, test, layer="attention", status="completed", **cfg_changes):
    cfg = copy.deepcopy(BASE_CFG)
    cfg["optim"]["lr"] = lr
    cfg["seed"] = seed
    cfg["layer"]["name"] = layer
    for k, v in cfg_changes.items():
        cfg["model"][k] = v
    metrics = {} if status != "completed" else {"val/acc": val, "test/acc": test,
                                                  "test/exact_match": test / 2}
    return {"schema_version": SCHEMA_VERSION, "run_id": run_id, "status": status, "time": "t",
            "task": "assoc_recall", "layer": layer, "config": cfg, "seed": seed,
            "metrics": metrics, "params": 1000, "state_size": 512,
            "throughput_tokens_per_s": 100.0, "wall_time_s": 1.0, "error": None}


@pytest.fixture
def results(tmp_path):
    d = tmp_path / "results"
    # lr 1e-3 wins on validation but loses on test: the table must report it anyway.
    for i, (val, test) in enumerate([(0.90, 0.50), (0.92, 0.52), (0.94, 0.54)]):
        write_record(d, rec(f"a{i}", 1e-3, i, val, test))
    for i, (val, test) in enumerate([(0.80, 0.99), (0.82, 0.99)]):
        write_record(d, rec(f"b{i}", 1e-2, i, val, test))
    write_record(d, rec("c0", 1e-3, 0, 0, 0, status="failed"))
    write_record(d, rec("d0", 1e-3, 0, 0.5, 0.6, n_layers=1))
    return d


def test_selects_on_validation_and_reports_test_over_seeds(results):
    summary = leaderboard.summarise(leaderboard.load_records(results)[0])
    rows = {r["model"].split()[1]: r for r in summary["assoc_recall"]}
    two = rows["x2"]
    assert two["hp"]["lr"] == 1e-3 and two["n"] == 3 and two["failed"] == 1
    assert two["test"][0] == pytest.approx(0.52)
    assert two["test"][1] == pytest.approx(0.02)
    assert two["val"][0] == pytest.approx(0.92)
    assert rows["x1"]["n"] == 1


def test_render_marks_best_and_is_byte_stable(results, tmp_path):
    out = tmp_path / "leaderboard.md"
    assert leaderboard.main(["--results", str(results), "--out", str(out)]) == 0
    first = out.read_bytes()
    text = first.decode()
    assert "0.5200 ± 0.0200 (n=3)" in text
    assert "**0.6000 ± 0.0000 (n=1)**" in text  # best test accuracy of the task is marked
    assert leaderboard.main(["--results", str(results), "--out", str(out)]) == 0
    assert out.read_bytes() == first
    assert leaderboard.main(["--results", str(results), "--out", str(out), "--check"]) == 0


def test_check_detects_stale_file(results, tmp_path):
    out = tmp_path / "leaderboard.md"
    leaderboard.main(["--results", str(results), "--out", str(out)])
    write_record(results, rec("e0", 1e-3, 5, 0.99, 0.99, layer="other"))
    assert leaderboard.main(["--results", str(results), "--out", str(out), "--check"]) == 1


def test_corrupt_and_foreign_files_are_reported_not_fatal(results, tmp_path):
    (results / "assoc_recall" / "attention" / "broken.json").write_text('{"run_id": ')
    (results / "foreign.json").write_text(json.dumps({"hello": 1}))
    text = leaderboard.build(results)
    assert "broken.json: unreadable" in text and "foreign.json: not a run record" in text
    assert "0.5200 ± 0.0200 (n=3)" in text


def test_records_are_immutable(results):
    with pytest.raises(FileExistsError):
        write_record(results, rec("a0", 1e-3, 0, 0.1, 0.1))
    assert json.loads((results / "assoc_recall" / "attention" / "a0.json").read_text())[
        "metrics"]["val/acc"] == 0.90


def test_per_length_table(tmp_path):
    d = tmp_path / "results"
    for seed, (a64, a128) in enumerate([(0.9, 0.5), (1.0, 0.7)]):
        r = rec(f"L{seed}", 1e-3, seed, 0.9, a64)
        r["metrics"].update({"test/acc@len=64": a64, "test/acc@len=128": a128,
                             "test/exact_match@len=64": a64 / 2, "test/exact_match@len=128": 0.0})
        write_record(d, r)
    text = leaderboard.build(d)
    header = next(line for line in text.splitlines()
                  if line.startswith("| layer | model | setting | suite | len="))
    assert header.index("len=64") < header.index("len=128"), "lengths sorted numerically"
    assert "| 0.950 / 0.475 | 0.600 / 0.000 |" in text


def test_runs_of_two_suites_are_separate_rows(tmp_path):
    """The same setting and architecture in two suites (the tier and a longer study) gives two
    rows: a longer run of one suite is never selected into the other's row."""
    d = tmp_path / "results"
    for seed in range(3):
        write_record(d, _suite_rec(f"t{seed}", "state_size", "gla", seed, 0.3, 0.2))
    study = _suite_rec("s0", "state_size", "gla", 0, 0.9, 0.8)
    study["config"]["suite"] = "study"
    study["config"]["trainer"] = {"max_steps": 2000}  # another hyper-parameter
    write_record(d, study)
    rows = leaderboard.summarise(leaderboard.load_records(d)[0])["state_size"]
    by_suite = {r["suite"]: r for r in rows}
    assert set(by_suite) == {"s", "study"}
    assert by_suite["s"]["n"] == 3 and by_suite["s"]["test"][0] == pytest.approx(0.2)
    assert by_suite["study"]["n"] == 1 and by_suite["study"]["test"][0] == pytest.approx(0.8)


def _write_many(args):
    results, worker, n = args
    for i in range(n):
        write_record(results, rec(f"w{worker}-{i:03d}", 1e-3, i, 0.5, 0.5))
    return n


def test_parallel_writers_leave_every_record_intact(tmp_path):
    import multiprocessing as mp

    results = tmp_path / "results"
    with mp.get_context("spawn").Pool(2) as pool:
        assert sum(pool.map(_write_many, [(results, w, 100) for w in range(2)])) == 200
    records, problems = leaderboard.load_records(results)
    assert len(records) == 200 and not problems
    assert not list(results.rglob("*.tmp")), "temp files left behind"


def _suite_rec(run_id, task, layer, seed, val, test, suite="s"):
    r = rec(run_id, 1e-3, seed, val, test, layer=layer)
    r["task"] = task
    r["config"]["task"]["name"] = task
    r["config"]["suite"] = suite
    return r


def test_aggregate_score_is_the_mean_of_selected_tests_and_needs_every_setting(tmp_path):
    d = tmp_path / "results"
    write_record(d, _suite_rec("a1", "assoc_recall", "attention", 0, 0.9, 0.8))
    write_record(d, _suite_rec("a2", "copying", "attention", 0, 0.9, 0.4))
    write_record(d, _suite_rec("g1", "assoc_recall", "gla", 0, 0.5, 0.9))  # no copying run
    write_record(d, rec("x1", 1e-3, 0, 0.99, 0.99, layer="cat"))  # not in the suite
    su = leaderboard.aggregate(leaderboard.summarise(leaderboard.load_records(d)[0]))["s"]
    assert len(su["columns"]) == 2
    scores = {a.split(" |")[0]: s for a, s in su["score"].items()}
    assert scores == {"attention": pytest.approx(0.6), "gla": None}
    text = leaderboard.build(d)
    assert "## Aggregate: suite `s`" in text and "| **0.6000** |" in text


def test_rank_correlations():
    assert leaderboard.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert leaderboard.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert leaderboard.spearman([1, 2, 3], [5, 5, 5]) is None  # no variation: undefined
    assert leaderboard._ranks([3.0, 1.0, 3.0]) == [2.5, 1.0, 2.5]
    # Pearson on x = 1..5 against y = x^2, by hand: r = 0.9811
    assert leaderboard.pearson([1, 2, 3, 4, 5], [1, 4, 9, 16, 25]) == pytest.approx(0.98109, 1e-4)


def test_state_size_slices_give_the_ess_and_tss_correlations(tmp_path):
    d = tmp_path / "results"
    # ESS per pair tracks accuracy, TSS per pair does not
    for i, (ess, tss, acc) in enumerate([(0.5, 64, 0.2), (1.0, 8, 0.4), (2.0, 32, 0.6),
                                          (4.0, 16, 0.9)]):
        r = _suite_rec(f"s{i}", "state_size", f"m{i}", 0, 0.5, acc)
        r["metrics"][f"test/acc@kv={i + 1}"] = acc
        r["ess"] = {"layers": {}, "slices": {f"kv={i + 1}": {"ess_per_kv": ess,
                                                               "tss_per_kv": tss}}}
        write_record(d, r)
    c = leaderboard.correlations(leaderboard.summarise(leaderboard.load_records(d)[0]))
    assert c["n"] == 4 and c["ess_per_kv"]["spearman"] == pytest.approx(1.0)
    assert c["tss_per_kv"]["spearman"] == pytest.approx(-0.4)  # 1 - 6*14/(4*15)
    assert "| all | 4 | +1.000 | -0.400 | ESS |" in leaderboard.build(d)
    assert c["groups"][("s", "")]["n"] == 4  # the suite; each one-run mixer has 1 point
    assert ("s", "m0") not in c["groups"]
    # a run of a learning rate that validation did not select is a point all the same
    r = rec("s9", 9e-9, 0, 0.1, 0.3, layer="m0")  # validation 0.1 < 0.5: not selected
    r["task"] = r["config"]["task"]["name"] = "state_size"
    r["config"]["suite"] = "s"
    r["metrics"]["test/acc@kv=1"] = 0.3
    r["ess"] = {"layers": {}, "slices": {"kv=1": {"ess_per_kv": 0.7, "tss_per_kv": 64}}}
    write_record(d, r)
    c = leaderboard.correlations(leaderboard.summarise(leaderboard.load_records(d)[0]))
    assert c["n"] == 5


def test_plots_are_drawn_linked_and_check_writes_nothing(results, tmp_path):
    out = tmp_path / "site" / "leaderboard.md"
    out.parent.mkdir()
    r = rec("L0", 1e-3, 0, 0.9, 0.9)
    r["metrics"].update({"test/acc@len=64": 0.9, "test/acc@len=128": 0.5})
    write_record(results, r)
    assert leaderboard.main(["--results", str(results), "--out", str(out)]) == 0
    pngs = sorted(p.name for p in (out.parent / "plots").glob("*.png"))
    assert pngs == ["accuracy_vs_state_size.png", "length_generalisation.png"]
    for p in (out.parent / "plots").glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
        assert f"](plots/{p.name})" in out.read_text()
    first = (out.parent / "plots" / "length_generalisation.png").read_bytes()
    for p in (out.parent / "plots").glob("*.png"):
        p.unlink()
    assert leaderboard.main(["--results", str(results), "--out", str(out), "--check"]) == 0
    assert not list((out.parent / "plots").glob("*.png")), "--check must not draw"
    leaderboard.main(["--results", str(results), "--out", str(out)])
    assert (out.parent / "plots" / "length_generalisation.png").read_bytes() == first


def test_lower_is_better_selection_and_perplexity_column(tmp_path):
    d = tmp_path / "results"
    for i, (lr, val_ppl, test_ppl) in enumerate([(1e-3, 30.0, 31.0), (3e-3, 20.0, 40.0)]):
        r = rec(f"p{i}", lr, 0, 0.1, 0.1)
        r["config"]["early_stopping"] = {"monitor": "val/ppl", "mode": "min"}
        r["metrics"].update({"val/ppl": val_ppl, "test/ppl": test_ppl})
        write_record(d, r)
    (row,) = leaderboard.summarise(leaderboard.load_records(d)[0])["assoc_recall"]
    assert row["hp"]["lr"] == 3e-3 and row["selected_on"] == "val/ppl"  # lowest val ppl
    assert row["ppl"][0] == 40.0  # its test perplexity, however bad
    assert "| test ppl | test acc |" in leaderboard.build(d)


def test_committed_leaderboard_is_up_to_date(tmp_path):
    """leaderboard.md on main is what `python -m zoo.leaderboard` builds from the records
    committed under results/ (not from the runs of this checkout: the README's first command
    adds one, and the tests must still pass after it)."""
    import shutil
    import subprocess
    from pathlib import Path
    repo = Path(__file__).resolve().parents[2]
    try:
        tracked = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "results"],
                                 capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: which records are committed is unknown")
    for name in filter(None, tracked.split("\0")):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / name, tmp_path / name)
    assert leaderboard.main(["--results", str(tmp_path / "results"),
                             "--out", str(repo / "leaderboard.md"), "--check"]) == 0, \
        "run `python -m zoo.leaderboard` and commit leaderboard.md and plots/"
    for line in (repo / "leaderboard.md").read_text().splitlines():
        if line.startswith("- [") and "](plots/" in line:
            assert (repo / line.split("](", 1)[1].rstrip(")")).exists(), line


def test_ess_correlations_within_fixed_and_growing_state_mixers(tmp_path):
    """Rows are classed by their layers' state_size at T - 1 and T: recurrences and attention
    with a window shorter than T have a fixed state, full attention (or a window >= T) not."""
    d = tmp_path / "results"
    runs = [("g", "gla", {}, 0.9), ("w", "swa", {"window": 16}, 0.5),
            ("W", "swa", {"window": 64}, 0.6), ("a", "attention", {}, 0.8),
            ("x", "no_such_mixer", {}, 0.7)]
    for i, (run_id, layer, opts, acc) in enumerate(runs):
        r = _suite_rec(run_id, "state_size", layer, 0, 0.5, acc)
        r["config"]["task"]["seq_len"] = 64
        r["config"]["layer"] = {"name": layer, **opts}  # the layer's defaults otherwise
        for kv in (1, 2):
            r["metrics"][f"test/acc@kv={kv}"] = acc / kv
        r["ess"] = {"layers": {}, "slices": {f"kv={kv}": {"ess_per_kv": (i + 1) / kv,
                                                           "tss_per_kv": 64 / kv}
                                             for kv in (1, 2)}}
        write_record(d, r)
    summary = leaderboard.summarise(leaderboard.load_records(d)[0])
    fixed = {r["layer"] + str(r["model"]): r["fixed_state"] for r in summary["state_size"]}
    assert sorted(fixed.values(), key=str) == [False, False, None, True, True]
    groups = leaderboard.correlations(summary)["groups"]
    assert groups[("s", leaderboard.FIXED)]["n"] == 4  # gla and swa(16), two slices each
    assert groups[("s", leaderboard.GROWING)]["n"] == 4  # attention and swa(64)
    assert groups[("s", "")]["n"] == 10  # the unbuildable layer is in the suite, in no class


def test_committed_records_give_ess_in_floats():
    """Every committed record's ESS totals are in zoo.ess's units (floats: heads x value
    channels x per-head ESS, summed over layers), slice by slice, as the leaderboard compares
    them with the state size."""
    from pathlib import Path

    from zoo.record import load_records
    records, _ = load_records(Path(__file__).resolve().parents[2] / "results")
    measured = [r for r in records if isinstance(r.get("ess"), dict)]
    if not measured:
        pytest.skip("no records with an ESS summary in this checkout")

    def check(entry, total):
        rows = [row for row in entry.values() if row is not None]
        assert all(row["channels"] >= 1 for row in rows)
        assert total["tolerance_ess"] == pytest.approx(
            sum(row["heads"] * row["channels"] * row["tolerance"] for row in rows))

    for r in measured:
        if r["ess"].get("total"):
            check(r["ess"]["layers"], r["ess"]["total"])
        for sl in (r["ess"].get("slices") or {}).values():
            if sl:
                check(sl["layers"], sl)
                if sl.get("kv"):
                    assert sl["ess_per_kv"] == pytest.approx(sl["tolerance_ess"] / sl["kv"])
