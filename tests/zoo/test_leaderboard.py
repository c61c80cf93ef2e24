"""python -m zoo.leaderboard: selection, counting, the first screen, the CSV, the CLI."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from synthetic_records import config, frontier, many, record

from zoo import leaderboard
from zoo.labels import layer_defaults
from zoo.record import write_record
from zoo.reading import read
from zoo.selection import summarise

REPO = Path(__file__).resolve().parents[2]


def rec(run_id, lr, seed, val, test, layer="attention", status="completed", **model):
    return record(run_id, config(layer=layer, lr=lr, seed=seed, **model), val, test,
                  status=status)


@pytest.fixture
def results(tmp_path):
    d = tmp_path / "results"
    # lr 1e-3 wins on validation but loses on test: the table must report it anyway.
    for i, (val, test) in enumerate([(0.90, 0.50), (0.92, 0.52), (0.94, 0.54)]):
        write_record(d, rec(f"a{i}", 1e-3, i, val, test))
    for i, (val, test) in enumerate([(0.80, 0.99), (0.82, 0.99)]):
        write_record(d, rec(f"b{i}", 1e-2, i, val, test))
    write_record(d, rec("c0", 1e-3, 5, 0, 0, status="failed"))
    write_record(d, rec("d0", 1e-3, 0, 0.5, 0.6, n_layers=1))
    return d


def rows_of(d):
    return {r.label: r for r in summarise(read(d).counted)}


def table_lines(text, heading):
    """The table lines of the section that starts at ``heading``."""
    body = text.split(heading, 1)[1].split("\n#", 1)[0]
    return [ln for ln in body.splitlines() if ln.startswith("| ")]


def test_selects_on_validation_and_reports_test_over_seeds(results):
    rows = rows_of(results)
    two = rows["attention"]
    assert two.hp["optim.lr"] == 1e-3 and two.n == 3 and two.failed == 1
    assert two.test[0] == pytest.approx(0.52) and two.test[1] == pytest.approx(0.02)
    assert two.stat("val/acc")[0] == pytest.approx(0.92)
    assert rows["attention x1"].n == 1


def test_render_is_byte_stable_three_decimals_and_std_only_over_seeds(results, tmp_path):
    out = tmp_path / "leaderboard.md"
    assert leaderboard.main(["--results", str(results), "--out", str(out)]) == 0
    first = out.read_bytes()
    text = first.decode()
    assert "| attention | 0.520 ± 0.020 | 3 |" in text
    assert "| attention x1 | **0.600** | 1 |" in text  # the best of the table; one seed: no ±
    assert "± 0.000" not in text
    assert leaderboard.main(["--results", str(results), "--out", str(out)]) == 0
    assert out.read_bytes() == first
    assert leaderboard.main(["--results", str(results), "--out", str(out), "--check"]) == 0


def test_check_detects_stale_file(results, tmp_path):
    out = tmp_path / "leaderboard.md"
    leaderboard.main(["--results", str(results), "--out", str(out)])
    write_record(results, rec("e0", 1e-3, 5, 0.99, 0.99, layer="gla"))
    assert leaderboard.main(["--results", str(results), "--out", str(out), "--check"]) == 1


def _suite_rec(run_id, task, layer, seed, test, suite="s", **layer_opts):
    r = record(run_id, config(task, layer, seed=seed, suite=suite, layer_opts=layer_opts),
               test, test, state=1024 * (1 + len(run_id)))
    if task == "state_size":
        r["metrics"].update({f"test/acc@kv={kv}": test / kv for kv in (4, 8, 16)})
    return r


def test_two_configs_differing_in_one_option_are_two_rows_everywhere(tmp_path):
    """gla with short_conv 0 and 4: two labels, two rows in the matrix (the aggregate), in
    each task's table, in the headline figure's suite and in the CSV; neither hides the
    other (the old aggregate keyed rows by layer and model without options)."""
    d = tmp_path / "results"
    for task in ("assoc_recall", "state_size"):
        for seed in range(2):
            write_record(d, _suite_rec(f"{task}-p{seed}", task, "gla", seed, 0.4064))
            write_record(d, _suite_rec(f"{task}-c{seed}", task, "gla", seed, 0.9897,
                                       short_conv=4))
            write_record(d, _suite_rec(f"{task}-a{seed}", task, "attention", seed, 0.5))
    out = tmp_path / "leaderboard.md"
    assert leaderboard.main(["--results", str(d), "--out", str(out)]) == 0
    text = out.read_text()
    matrix = table_lines(text, "## At a glance")
    assert any(ln.startswith("| gla | ") and "0.406 (2) | 0.406 (2)" in ln for ln in matrix)
    assert any(ln.startswith("| gla+conv4 | ") and "**0.990 (2)**" in ln for ln in matrix)
    for task in ("assoc_recall", "state_size"):
        lines = table_lines(text, f"### {task}:")
        assert sum(ln.startswith("| gla | 0.406") for ln in lines) == 1
        assert sum(ln.startswith("| gla+conv4 | **0.990") for ln in lines) == 1
    csv_path = tmp_path / "runs.csv"
    assert leaderboard.main(["--results", str(d), "--csv", str(csv_path)]) == 0
    assert {"gla", "gla+conv4"} <= set(csv_path.read_text().split(","))


def test_csv_has_one_row_per_readable_record(tmp_path):
    pd = pytest.importorskip("pandas")
    d = tmp_path / "results"
    recs = frontier(seeds=2, lrs=(1e-3, 3e-3))
    for r in recs:
        write_record(d, r)
    shutil.copy(next(d.rglob("*.json")), d / "copy.json")  # a duplicate: still a record
    (d / "junk.json").write_text("{")
    out = tmp_path / "records.csv"
    assert leaderboard.main(["--results", str(d), "--csv", str(out)]) == 0
    df = pd.read_csv(out)
    assert len(df) == len(recs) + 1 and df["counted"].sum() == len(recs)
    hybrid = df[df["label"] == "phalanx:attention 1:1"]
    assert len(hybrid) == 3 * 3  # widths x runs
    # every mixer's options are columns of their own
    assert (hybrid["config.model.mixer_options.attention.num_heads"]
            == layer_defaults("attention")["num_heads"]).all()
    assert (hybrid["config.layer.head_dim"] == layer_defaults("phalanx")["head_dim"]).all()
    assert set(df["width"]) == {32, 64, 128}
    assert "metrics.test/acc@kv=16" in df.columns and "stop_reason" in df.columns


def test_duplicates_null_config_and_bad_metrics_are_reported_and_skipped(tmp_path, capsys):
    d = tmp_path / "results"
    for seed in range(2):
        write_record(d, rec(f"a{seed}", 1e-3, seed, 0.9, 0.5 + seed / 10))
    first = next(d.rglob("a0.json"))
    shutil.copy(first, first.with_name("a0-copy.json"))  # the same record under a second name
    write_record(d, rec("z9", 1e-3, 0, 0.9, 0.1))  # another run of the same config and seed
    null = rec("n0", 1e-3, 0, 0.9, 0.9)
    null["config"] = None
    (d / "null.json").write_text(json.dumps(null))
    bad = rec("m0", 1e-3, 3, 0.9, 0.9)
    bad["metrics"] = [0.9]
    (d / "bad.json").write_text(json.dumps(bad))
    out = tmp_path / "leaderboard.md"
    assert leaderboard.main(["--results", str(d), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    text = out.read_text()
    for note in ("null.json: config is null, not a mapping",
                 "bad.json: metrics is list, not a mapping",
                 "a0-copy.json (counted: ", "z9.json (counted: "):
        assert note in err and note in text, note
    (row,) = summarise(read(d).counted)
    assert row.n == 2 and row.test[0] == pytest.approx(0.55)  # seeds 0 and 1, once each
    assert "2 files skipped, 2 duplicates ignored" in text


def test_corrupt_and_foreign_files_are_reported_not_fatal(results):
    (results / "assoc_recall" / "attention" / "broken.json").write_text('{"run_id": ')
    (results / "foreign.json").write_text(json.dumps({"hello": 1}))
    text = leaderboard.build(results)
    assert "broken.json: unreadable" in text and "foreign.json: not a run record" in text
    assert "0.520 ± 0.020" in text


def test_frontier_figure_and_correlations_open_the_leaderboard(tmp_path):
    d = tmp_path / "results"
    for r in frontier():
        write_record(d, r)
    for r in frontier(seeds=1, lrs=(1e-3,), suite="older-study"):
        write_record(d, r)
    out = tmp_path / "leaderboard.md"
    assert leaderboard.main(["--results", str(d), "--out", str(out)]) == 0
    text = out.read_text()
    sections = [ln for ln in text.splitlines() if ln.startswith("## ")]
    assert sections[:2] == ["## Recall against state size: suite `frontier`",
                            "## At a glance: suite `frontier`"]
    head = text.split("## At a glance")[0]
    assert "![Test accuracy per key-value slice against state size]" \
           "(plots/recall_vs_state_size.png)" in head
    corr = table_lines(head, "Spearman correlation")
    assert [ln.split(" | ")[0] for ln in corr[1:]] == ["| all", "| fixed-state",
                                                       "| growing-state"]
    assert all("[" in ln.split(" | ")[2] for ln in corr[1:])  # intervals
    png = tmp_path / "plots" / "recall_vs_state_size.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    frontier_rows = table_lines(text.split("## Suite `frontier`")[1], "### state_size:")
    assert frontier_rows[0].startswith("| architecture | d | test acc | kv=4 | kv=8 | kv=16 |")
    assert len(frontier_rows) == 1 + 11 * 3  # the header, forms x widths
    assert all(len(ln) <= 120 for ln in table_lines(text, "## At a glance"))


def test_committed_leaderboard_opens_with_the_figure_and_a_matrix_in_120_columns():
    text = (REPO / "leaderboard.md").read_text()
    sections = [ln for ln in text.splitlines() if ln.startswith("## ")]
    assert sections[0].startswith("## Recall against state size")
    assert sections[1].startswith("## At a glance")
    assert "![" in text.split(sections[1])[0]
    matrix = table_lines(text, sections[1])
    assert len(matrix) > 3 and all(len(ln) <= 120 for ln in matrix)


def test_import_needs_neither_torch_nor_lightning():
    code = ("import sys, zoo.leaderboard; "
            "bad = [m for m in ('torch', 'lightning') if m in sys.modules]; assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_a_thousand_records(tmp_path):
    """The size issue 16 measures the build at (python -m zoo.leaderboard under 5 s); no
    timing here, only that it builds."""
    d = tmp_path / "results"
    for r in many(1000):
        write_record(d, r)
    out = tmp_path / "leaderboard.md"
    assert leaderboard.main(["--results", str(d), "--out", str(out)]) == 0
    assert "from the 1000 run records" in out.read_text()


def test_user_runs_never_write_the_committed_leaderboard(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_record("results", rec("p0", 1e-3, 0, 0.9, 0.9))
    write_record("runs", rec("u0", 1e-3, 0, 0.9, 0.1, layer="gla"))
    assert leaderboard.main([]) == 0
    published = Path("leaderboard.md").read_bytes()
    assert b"gla" not in published
    assert leaderboard.main(["--results", "runs"]) == 0  # -> runs/leaderboard.md, runs/plots
    assert leaderboard.main(["--suite", "s"]) == 0  # -> leaderboard-s.md
    assert Path("runs/leaderboard.md").exists() and Path("leaderboard-s.md").exists()
    assert Path("leaderboard.md").read_bytes() == published
    assert leaderboard.main(["--check"]) == 0


def test_suite_option_keeps_one_suite(tmp_path):
    d = tmp_path / "results"
    write_record(d, _suite_rec("x", "assoc_recall", "gla", 0, 0.3, suite="one"))
    write_record(d, _suite_rec("y", "assoc_recall", "mamba", 0, 0.3, suite="two"))
    text = leaderboard.build(d, suite="two")
    assert "| mamba |" in text and "| gla |" not in text


def test_budget_stop_reasons_and_no_throughput_in_ranking_tables(tmp_path):
    d = tmp_path / "results"
    for seed, stop in enumerate(("solved", "solved", "max_steps")):
        r = _suite_rec(f"s{seed}", "assoc_recall", "gla", seed, 0.9)
        r["stop_reason"] = stop
        write_record(d, r)
    write_record(d, _suite_rec("o0", "assoc_recall", "mamba", 0, 0.2))  # no stop_reason
    text = leaderboard.build(d)
    assert "Budget: 300 steps x 32 = 9,600 examples" in text
    lines = table_lines(text, "### assoc_recall:")
    assert lines[0].endswith("| stop | failed |")
    assert lines[1].endswith("| 2S 1M | 0 |") and lines[2].endswith("| ? | 0 |")
    ranking = text.split("## Details")[0]
    assert "tokens/s" not in ranking and "tokens/s" in text.split("## Details")[1]


def test_per_length_table_marks_the_training_length(tmp_path):
    d = tmp_path / "results"
    for seed, (a64, a128) in enumerate([(0.9, 0.5), (1.0, 0.7)]):
        r = rec(f"L{seed}", 1e-3, seed, 0.9, a64)
        r["metrics"].update({"test/acc@len=64": a64, "test/acc@len=128": a128,
                             "test/exact_match@len=64": a64 / 2, "test/exact_match@len=128": 0.0})
        write_record(d, r)
    text = leaderboard.build(d)
    assert "| architecture | len=64 (trained) | len=128 |" in text
    assert "| attention | 0.950 / 0.475 | 0.600 / 0.000 |" in text


def test_runs_of_two_suites_are_separate_rows(tmp_path):
    """The same setting and architecture in two suites (the tier and a longer study) gives two
    rows: a longer run of one suite is never selected into the other's row."""
    d = tmp_path / "results"
    for seed in range(3):
        write_record(d, _suite_rec(f"t{seed}", "state_size", "gla", seed, 0.2))
    study = _suite_rec("s0", "state_size", "gla", 0, 0.8, suite="study")
    study["config"]["trainer"] = {"max_steps": 2000}
    write_record(d, study)
    by_suite = {r.suite: r for r in summarise(read(d).counted)}
    assert by_suite["s"].n == 3 and by_suite["s"].test[0] == pytest.approx(0.2)
    assert by_suite["study"].n == 1 and by_suite["study"].test[0] == pytest.approx(0.8)


def test_records_are_immutable(results):
    with pytest.raises(FileExistsError):
        write_record(results, rec("a0", 1e-3, 0, 0.1, 0.1))
    assert json.loads((results / "assoc_recall" / "attention" / "a0.json").read_text())[
        "metrics"]["val/acc"] == 0.90


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
    records = read(results)
    assert len(records.entries) == 200 and not records.problems
    assert not list(results.rglob("*.tmp")), "temp files left behind"


def test_plots_are_drawn_linked_and_check_writes_nothing(results, tmp_path):
    out = tmp_path / "site" / "leaderboard.md"
    out.parent.mkdir()
    for r in frontier(seeds=1, lrs=(1e-3,)):
        write_record(results, r)
    r = rec("L0", 1e-3, 0, 0.9, 0.9)
    r["metrics"].update({"test/acc@len=64": 0.9, "test/acc@len=128": 0.5})
    write_record(results, r)
    assert leaderboard.main(["--results", str(results), "--out", str(out)]) == 0
    plots = out.parent / "plots"
    pngs = sorted(p.name for p in plots.glob("*.png"))
    assert pngs == ["accuracy_vs_state_size.png", "ess_vs_accuracy.png",
                    "length_generalisation.png", "recall_vs_state_size.png"]
    for p in plots.glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
        assert f"](plots/{p.name})" in out.read_text()
    first = {p.name: p.read_bytes() for p in plots.glob("*.png")}
    for p in plots.glob("*.png"):
        p.unlink()
    assert leaderboard.main(["--results", str(results), "--out", str(out), "--check"]) == 0
    assert not list(plots.glob("*.png")), "--check must not draw"
    leaderboard.main(["--results", str(results), "--out", str(out)])
    assert {p.name: p.read_bytes() for p in plots.glob("*.png")} == first


def test_lower_is_better_selection_and_perplexity_column(tmp_path):
    d = tmp_path / "results"
    for i, (lr, val_ppl, test_ppl) in enumerate([(1e-3, 30.0, 31.0), (3e-3, 20.0, 40.0)]):
        r = rec(f"p{i}", lr, 0, 0.1, 0.1)
        r["config"]["early_stopping"] = {"monitor": "val/ppl", "mode": "min"}
        r["metrics"].update({"val/ppl": val_ppl, "test/ppl": test_ppl})
        write_record(d, r)
    (row,) = summarise(read(d).counted)
    assert row.hp["optim.lr"] == 3e-3 and row.selected_on == "val/ppl"  # lowest val ppl
    assert row.stat("test/ppl")[0] == 40.0  # its test perplexity, however bad
    assert "| architecture | test ppl | test acc |" in leaderboard.build(d)


def test_committed_leaderboard_is_up_to_date(tmp_path):
    """leaderboard.md on main is what `python -m zoo.leaderboard` builds from the records
    committed under results/ (not from the runs of this checkout)."""
    try:
        tracked = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "results"],
                                 capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: which records are committed is unknown")
    for name in filter(None, tracked.split("\0")):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, tmp_path / name)
    assert leaderboard.main(["--results", str(tmp_path / "results"),
                             "--out", str(REPO / "leaderboard.md"), "--check"]) == 0, \
        "run `python -m zoo.leaderboard` and commit leaderboard.md and plots/"
    for line in (REPO / "leaderboard.md").read_text().splitlines():
        if "](plots/" in line:
            assert (REPO / line.split("](", 1)[1].split(")")[0]).exists(), line


def test_committed_records_carry_the_state_at_the_last_position():
    """Every committed record says its state at T - 1 (state_size_prev), so the leaderboard
    classes fixed- and growing-state mixers without building a model."""
    records = read(REPO / "results")
    missing = [p for p, r in records.entries if not isinstance(r.get("state_size_prev"), int)]
    assert not missing, missing[:5]


def test_committed_records_give_ess_in_floats():
    """Every committed record's ESS totals are in zoo.ess's units (floats: heads x value
    channels x per-head ESS, summed over layers), slice by slice, as the leaderboard compares
    them with the state size."""
    measured = [r for r in read(REPO / "results").counted if isinstance(r.get("ess"), dict)]
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


def test_a_learning_rate_stage_is_never_the_headline_or_the_matrix(tmp_path):
    """frontier/final takes its rate from suite frontier-lr (lr_from): that stage's many
    short runs only choose a rate, so the headline and the matrix come from another suite."""
    d = tmp_path / "results"
    for r in frontier(suite="frontier-lr"):
        write_record(d, r)
    for r in frontier(seeds=1, lrs=(1e-3,), suite="older-study"):
        write_record(d, r)
    out = tmp_path / "leaderboard.md"
    assert leaderboard.main(["--results", str(d), "--out", str(out)]) == 0
    sections = [ln for ln in out.read_text().splitlines() if ln.startswith("## ")]
    assert sections[:2] == ["## Recall against state size: suite `older-study`",
                            "## At a glance: suite `older-study`"]
    assert "## Suite `frontier-lr`" in sections
