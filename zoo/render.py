"""``leaderboard.md`` as text, from a ``zoo.selection.Board``: the headline figure and the
ESS/TSS correlations beside it, the matrix, a section per suite with its budget, then the
details (per-length and per-variant tables, the whole ESS study, throughput per machine,
skipped files).

Pure formatting: every number is computed in ``zoo.selection`` and ``zoo.ess_study``. Three
decimals for accuracies, ``± std`` only over more than one seed, state sizes in bytes (fp32).
"""

from __future__ import annotations

from typing import Any, Sequence

from .ess_study import FIXED, GROWING, verdict
from .labels import train_length
from .selection import (Board, Row, by_setting, by_suite, icl_groups, performance,
                        reference_estimators, shared_stat, swept, variant_order)

SHORT = {"assoc_recall": "MQAR", "copying": "copy", "induction": "induction",
         "memorization": "memorize", "selective_copying": "sel. copy", "state_size": "kv slices",
         "lm": "lm"}
README = "README, \"Reading the leaderboard\""


def si(x: float | None) -> str:
    """Three significant digits with k / M / G (``65.5k``)."""
    if x is None:
        return "–"
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            v = x / div
            return f"{v:.3g}{unit}" if v < 100 else f"{v:.0f}{unit}"
    return f"{x:.0f}"


def acc(s: tuple[float, float, int] | None, std: bool = True) -> str:
    if s is None:
        return "–"
    return f"{s[0]:.3f}" + (f" ± {s[1]:.3f}" if std and s[2] > 1 else "")


def _num(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _table(header: Sequence[str], lines: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(cells) + " |" for cells in lines] + [""])


def _bold_best(cells: list[str], higher: bool = True) -> list[str]:
    """Bold the best value as printed (ties all bold; ``–`` is no value)."""
    shown = [None if c == "–" else float(c.split()[0]) for c in cells]
    vals = [v for v in shown if v is not None]
    if not vals:
        return cells
    best = max(vals) if higher else min(vals)
    return [f"**{c}**" if v == best else c for c, v in zip(cells, shown)]


def _corr(c: dict[str, Any] | None, measure: str, stat: str = "spearman") -> str:
    v = ((c or {}).get(measure) or {}).get(stat)
    if v is None:
        return "–"
    if v[1] != v[1] or v[2] != v[2]:  # NaN: too few resamples where it is defined
        return f"{v[0]:+.3f}"
    return f"{v[0]:+.3f} [{v[1]:+.3f}, {v[2]:+.3f}]"


def _choices(row: Row) -> str:
    """The learning rate of the selected runs, and the values selection chose for anything
    else that varied among the row's runs (``lr=0.003``)."""
    keys = ["optim.lr"] * ("optim.lr" in row.hp) + [k for k in swept([row]) if k != "optim.lr"]
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={_num(row.hp.get(k))}" for k in keys) or "–"


def _suite_note(rows: list[Row]) -> str:
    runs = sum(len(r.runs) for r in rows)
    failed = sum(r.failed for r in rows)
    grid = "; ".join(f"{k} {', '.join(_num(v) for v in vs)}" for k, vs in swept(rows).items())
    widths = ", ".join(str(w) for w in sorted({r.width for r in rows if r.width}))
    return (f"Budget: {'; '.join(sorted({r.budget for r in rows}))}; width d {widths}. "
            + (f"Selected on validation over {grid}. " if grid else "")
            + f"{runs} runs, {failed} failed.")


def headline(board: Board, figure: str | None) -> list[str]:
    if not board.recall:
        return []
    rows = by_suite(board.rows)[board.recall]
    lines = [f"## Recall against state size: suite `{board.recall}`", ""]
    if figure:
        lines += [f"![Test accuracy per key-value slice against state size]({figure})", ""]
    lines += [f"Test accuracy on each key-value slice of the state-size task against the "
              f"model's state size in bytes (fp32), one line per architecture through its "
              f"widths; hyper-parameters selected on validation, mean over "
              f"seeds. {_suite_note(rows)} Tables: section `{board.recall}` below.", ""]
    groups = board.study.get(board.recall) or {}
    if groups:
        lines += ["Spearman correlation of slice accuracy with the measured (ESS) and "
                  "theoretical (TSS) state per key-value pair, over every trained model x "
                  "slice of the suite, with 95% bootstrap intervals; one is called higher only "
                  "where the intervals separate:", ""]
        lines += _table(["mixers", "points", "ESS / kv", "TSS / kv", "higher"],
                        [[g, str(c["n"]), _corr(c, "ess_per_kv"), _corr(c, "tss_per_kv"),
                          verdict(c)] for g in ("all", FIXED, GROWING)
                         if (c := groups.get(g))])
    return lines


def _column_names(columns: list[tuple[str, str]]) -> list[str]:
    names = [SHORT.get(t, t) for t, _ in columns]
    return [f"{n} {names[:i].count(n) + 1}" if names.count(n) > 1 else n
            for i, n in enumerate(names)]


def matrix_section(board: Board) -> list[str]:
    m = board.matrix
    if m is None:
        return []
    rows = [r for r in board.rows if r.suite == m.suite]
    names = _column_names(m.columns)
    several = len({w for _, w, _, _ in m.lines}) > 1
    t_max = max((r.cfg["task"].get("seq_len") or 0 for r in rows), default=0)
    header = ["architecture"] + ["d"] * several + ["state B", "mean"] + names
    lines = []
    for lab, w, cells, score in m.lines:
        state = max((c.state_bytes or 0 for c in cells.values()), default=0) or None
        lines.append([lab] + [str(w)] * several + [si(state), "–" if score is None
                                                    else f"{score:.3f}"]
                     + [f"{acc(cells[c].test, False)} ({cells[c].n})" if c in cells else "–"
                        for c in m.columns])
    for j in range(2 + several, len(header)):  # bold the best of each column
        for ln, cell in zip(lines, _bold_best([ln[j] for ln in lines])):
            ln[j] = cell
    legend = [f"- {n}: `{task}` {setting}" for n, (task, setting) in zip(names, m.columns)]
    return ([f"## At a glance: suite `{m.suite}`", "",
             f"Test accuracy of the hyper-parameters selected on validation (seeds in "
             f"brackets), per task; state B: the state size in bytes (fp32) at the longest "
             f"training length (T {t_max}); mean: over the tasks, where an architecture has "
             f"all (MAD-Lab's score, selected on validation); **bold**: the best of a column. "
             f"{_suite_note(rows)}", ""]
            + _table(header, lines) + legend + [""])


def _setting_table(rows: list[Row], budget_column: bool) -> list[str]:
    ppl = any(r.stat("test/ppl") for r in rows)
    # a task's own error, where it is selected on one (in-context regression: mse): the
    # leading column, lower is better, and no accuracy column where none has one
    own = sorted({r.own_metric for r in rows} - {"acc", "exact_match", "ppl"})[:1]
    if own and not any(r.stat(f"test/{own[0]}") for r in rows):
        own = []
    accs = not own or any(r.test for r in rows)
    kvs = sorted({v for r in rows for v in r.variants("kv=")},
                 key=lambda v: int(v[3:]) if v[3:].isdigit() else 0)
    exact = any(r.selected_on == "val/exact_match" for r in rows)
    val = sorted({r.selected_on.split("/", 1)[-1] for r in rows})

    def order(r: Row) -> tuple:
        lower = "ppl" if ppl else (own[0] if own else None)
        if lower:
            head = r.stat(f"test/{lower}")[0] if r.stat(f"test/{lower}") else float("inf")
        else:
            head = -r.test[0] if r.test else 1.0
        return (head, r.label, r.width or 0)

    rows = sorted(rows, key=order)
    several = len({r.width for r in rows}) > 1
    header = (["architecture"] + ["d"] * several + ["test ppl"] * ppl
              + [f"test {m}" for m in own] + ["test acc"] * accs + ["test exact"] * exact + kvs
              + ["n", "val " + val[0] if len(val) == 1 else "val", "state B", "params",
                 "chosen", "stop", "failed"]
              + ["budget"] * budget_column)
    lines = []
    for r in rows:
        sel = r.stat(r.selected_on)
        lines.append(
            [r.label] + [str(r.width or "–")] * several + [acc(r.stat("test/ppl"))] * ppl
            + [acc(r.stat(f"test/{m}")) for m in own] + [acc(r.test)] * accs
            + [acc(r.stat("test/exact_match"))] * exact
            + [acc(r.stat(f"test/acc@{v}"), False) for v in kvs]
            + [str(r.n), acc(sel, False), si(r.state_bytes), si(r.first("params")),
               _choices(r) if r.chosen else "–", r.stops or "–", str(r.failed)]
            + [r.budget] * budget_column)
    j = 1 + several  # the leading metric: test ppl, else the task's own error, else test acc
    for ln, cell in zip(lines, _bold_best([ln[j] for ln in lines], not (ppl or own))):
        ln[j] = cell
    return _table(header, lines)


def suite_sections(board: Board) -> list[str]:
    lines: list[str] = []
    for suite, rows in by_suite(board.rows).items():
        named = suite is not None
        lines += [f"## Suite `{suite}`" if named else "## Runs outside a suite", ""]
        lines += [_suite_note(rows) if named else
                  "Runs of no suite (each row its own budget, in its last column).", ""]
        for (task, setting), group in by_setting(rows).items():
            lines += [f"### {task}: {setting}", ""]
            lines += _setting_table(group, not named or len({r.budget for r in group}) > 1)
    return lines


def _slice_cell(row: Row, where: str, prefix: str = "") -> str:
    return (f"{acc(row.stat(f'test/{prefix}acc@{where}'), False)} / "
            f"{acc(row.stat(f'test/{prefix}exact_match@{where}'), False)}")


def _slice_table(group: list[Row], names: list[str], header: list[str]) -> list[str]:
    """Token accuracy / exact match per slice; a row that was also scored free-running (its
    ``gen_`` metrics) is followed by a ``generated`` line."""
    several = len({r.width for r in group}) > 1
    lines = []
    for r in sorted(group, key=lambda r: (r.label, r.width or 0)):
        lines.append([r.label] + [str(r.width or "–")] * several
                     + [_slice_cell(r, v) for v in names])
        if any(r.stat(f"test/gen_acc@{v}") for v in names):
            lines.append([f"{r.label}, generated"] + [str(r.width or "–")] * several
                         + [_slice_cell(r, v, "gen_") for v in names])
    return _table(["architecture"] + ["d"] * several + header, lines)


def _title(suite: str | None, task: str, setting: str) -> str:
    return f"Suite `{suite}`, {task}: {setting}" if suite else f"No suite, {task}: {setting}"


LENGTHS_NOTE = ("Token accuracy / exact match (the whole example right) of the selected runs "
                "at each evaluation length, mean over seeds, teacher-forced; a `generated` "
                "line scores instead what the model wrote free-running (greedy, from the "
                "prompt alone), where a task's rows are one prompt and its answer (copying).")
VARIANTS_NOTE = ("The same for test sets other than lengths and key-value slices: a task's own "
                 "variants (`ood`: induction at distances it never trained on) and the task "
                 "settings `zoo.eval` tested a run on, named by the knobs it changed "
                 "(`num_kv_pairs=8,len=128`).")


def _length_tables(board: Board) -> list[str]:
    lines: list[str] = []
    for suite, rows in by_suite(board.rows).items():
        for (task, setting), group in by_setting(rows).items():
            group = [r for r in group if len(r.variants("len=")) > 1]
            if not group:
                continue
            lengths = sorted({v for r in group for v in r.variants("len=")},
                             key=lambda v: int(v[4:]))
            trained = train_length(group[0].cfg["task"])
            names = [v + (" (trained)" if v == f"len={trained}" else "") for v in lengths]
            lines += [_title(suite, task, setting), ""] + _slice_table(group, lengths, names)
    if not lines:
        return []
    return ["### Test accuracy by evaluation length", "", LENGTHS_NOTE, ""] + lines


def _variant_tables(board: Board) -> list[str]:
    """Test sets other than lengths and key-value slices (those have their own columns): a
    task's own variants (``ood``) and the task settings ``zoo.eval`` tested a run on
    (``num_kv_pairs=8,len=128``)."""
    lines: list[str] = []
    for suite, rows in by_suite(board.rows).items():
        for (task, setting), group in by_setting(rows).items():
            names = sorted({v for r in group for v in r.variants("")
                            if not v.startswith(("len=", "kv=", "n="))}, key=variant_order)
            group = [r for r in group if any(r.stat(f"test/acc@{v}") for v in names)]
            if group:
                lines += [_title(suite, task, setting), ""] + _slice_table(group, names, names)
    if not lines:
        return []
    return ["### Test accuracy by variant", "", VARIANTS_NOTE, ""] + lines


ICL_NOTE = ("Where a task scores every number of in-context examples `n` before the query "
            "(`icl_*`): the selected runs' test error (mse, squared error over E|w|^2) or "
            "accuracy at each `n` (a few of them here, all in the figure; `all`: every "
            "scored query), mean over seeds, then the task's reference estimators on the "
            "same test prompts (tasks/icl.py: ridge, least squares, one gradient step with "
            "the best step per `n` or one shared step, averaging, each on the query's own "
            "segment too (`_task`); for the mixture the supervised-only estimator and its EM "
            "iterates).")


def shown_examples(ns: list[int], most: int = 12) -> list[int]:
    """Every ``n`` where few; else 0, the powers of two and the last."""
    if len(ns) <= most:
        return ns
    keep = {ns[0], ns[-1]} | {n for n in ns if n == 0 or n & (n - 1) == 0}
    return [n for n in ns if n in keep]


def _icl_tables(board: Board) -> list[str]:
    lines: list[str] = []
    for suite, task, setting, group in icl_groups(board.rows):
        metric, higher = group[0].own_metric, group[0].higher
        curves = {r.key: r.by_examples() for r in group}
        refs = reference_estimators(group)
        ns = shown_examples(sorted({n for c in curves.values() for n in c}
                                   | {n for c in refs.values() for n in c}))
        several = len({r.width for r in group}) > 1
        body = []
        for r in sorted(group, key=lambda r: ((-1 if higher else 1) * r.stat(
                f"test/{metric}")[0] if r.stat(f"test/{metric}") else float("inf"), r.label)):
            body.append([r.label] + [str(r.width or "–")] * several
                        + [acc(curves[r.key].get(n), False) for n in ns]
                        + [acc(r.stat(f"test/{metric}"), False)])
        for j in range(1 + several, len(ns) + 2 + several):  # the best model per column
            for ln, cell in zip(body, _bold_best([ln[j] for ln in body], higher)):
                ln[j] = cell
        for name, curve in refs.items():
            body.append([f"*{name}* (estimator)"] + ["–"] * several
                        + [f"{curve[n]:.3f}" if n in curve else "–" for n in ns]
                        + [acc(shared_stat(group, f"test/{name}_{metric}"), False)])
        lines += [_title(suite, task, setting) + f": test {metric} by examples n", ""]
        lines += _table(["architecture"] + ["d"] * several + [f"n={n}" for n in ns] + ["all"],
                        body)
    if not lines:
        return []
    return ["### In-context learning: by number of examples", "", ICL_NOTE, ""] + lines


def _study_table(board: Board) -> list[str]:
    if not board.study:
        return []
    lines = []
    for suite, groups in board.study.items():
        for g, c in groups.items():
            lines.append([suite or "–", g, str(c["n"]), _corr(c, "ess_per_kv"),
                          _corr(c, "tss_per_kv"), verdict(c),
                          _corr(c, "ess_per_kv", "pearson_log"),
                          _corr(c, "tss_per_kv", "pearson_log")])
    return (["### ESS and TSS per key-value pair against slice accuracy, every suite", "",
             "Every completed run of `task=state_size` (all hyper-parameters and seeds) x "
             "key-value slice: Spearman, and Pearson against the log of ESS or TSS per pair, "
             "with 95% bootstrap intervals (arXiv 2504.19561 finds ESS per pair the better "
             "predictor). Within each suite: all mixers, those of fixed state (recurrences, "
             "attention windowed below the length), those of growing state (a KV cache), then "
             "each architecture (over its widths and learning rates).", ""]
            + _table(["suite", "mixers", "points", "ESS / kv Spearman", "TSS / kv Spearman",
                      "higher", "ESS / kv Pearson (log)", "TSS / kv Pearson (log)"], lines))


def _performance(board: Board) -> list[str]:
    perf = performance(board.rows)
    if not perf:
        return []
    return (["### Throughput by machine", "",
             "Training tokens per second and wall seconds per run (data, training, validation "
             "and test), mean over a row's completed runs, by the machine that ran them. Both "
             "depend on what else the machine was running (the sweeps run two jobs at a "
             "time): compare within one machine and one sweep only.", ""]
            + _table(["machine", "suite", "task", "architecture", "d", "runs", "tokens/s",
                      "wall s"],
                     [[m, r.suite or "–", r.task, r.label, str(r.width or "–"), str(n),
                       f"{tps:,.0f}", f"{wall:,.0f}"] for m, r, n, tps, wall in perf]))


def render(board: Board, plots: Sequence[tuple[str, str]] = ()) -> str:
    recs = board.records
    n = len(recs.counted)
    evals = f" and {len(recs.evals)} eval records joined to them" if recs.evals else ""
    head = ["# Leaderboard", "",
            f"Built by `python -m zoo.leaderboard` from the {n} run records{evals} in "
            f"`{board.source}/` ({len(recs.problems)} files skipped, "
            f"{len(recs.duplicate_of)} duplicates ignored"
            f"{f', {len(recs.superseded)} runs superseded by longer ones' if recs.superseded else ''}"
            f": listed at the end); do not edit by "
            f"hand. How to read it: {README}.", ""]
    figure = next((path for title, path in plots if path.endswith("recall_vs_state_size.png")),
                  None)
    lines = head + headline(board, figure) + matrix_section(board) + suite_sections(board)
    lines += ["## Details", ""] + _length_tables(board) + _variant_tables(board) \
        + _icl_tables(board) + _study_table(board) + _performance(board)
    if plots:
        lines += ["### Plots", ""] + [f"- [{t}]({p})" for t, p in plots] + [""]
    if recs.problems:
        lines += ["### Skipped files", ""] + [f"- {p}" for p in recs.problems] + [""]
    if recs.duplicate_of:
        lines += ["### Duplicates ignored", "",
                  "Records of a row, hyper-parameters and seed already counted:", ""]
        lines += [f"- {d} (counted: {k})" for d, k in sorted(recs.duplicate_of.items())] + [""]
    if recs.superseded:
        lines += ["### Runs superseded by longer ones", "",
                  "Runs that stopped at their step cap while still improving, each trained "
                  "again at a larger cap (`extend=true`), which is counted in its place:", ""]
        lines += [f"- {d} (counted: {k})" for d, k in sorted(recs.superseded.items())] + [""]
    return "\n".join(lines)
