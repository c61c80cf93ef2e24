"""``python -m zoo.leaderboard``: rebuild ``leaderboard.md`` from every run record.

Honest selection: within each row (task setting x architecture) the hyper-parameters are chosen
by mean *validation* accuracy over seeds; the row then reports the *test* accuracy of that
choice as mean ± std over its seeds, with n. Failed runs are counted, never ranked. The output
is a pure function of the records (sorted, fixed formatting, no timestamps), so rebuilding
without new records changes nothing; ``--check`` exits 1 if the file is stale.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from .data import DATA_KEYS
from .record import BOOKKEEPING, load_records

RUN_KEYS = ("seed", *BOOKKEEPING)


def _canon(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def row_key(cfg: dict[str, Any]) -> str:
    """What defines a leaderboard row: the task setting, the architecture and the suite (runs
    of one setting in two suites, e.g. the tier and a longer study, are never pooled nor
    selected between)."""
    return _canon({"task": cfg["task"], "layer": cfg["layer"], "model": cfg["model"],
                   "suite": cfg.get("suite")})


def hp_key(cfg: dict[str, Any]) -> str:
    """Everything else that is not run bookkeeping: the hyper-parameters selected over."""
    rest = {k: v for k, v in cfg.items()
            if k not in ("task", "layer", "model", *RUN_KEYS)}
    return _canon(rest)


def describe_task(task_cfg: dict[str, Any]) -> str:
    skip = {"name", *DATA_KEYS}
    return " ".join(f"{k}={v}" for k, v in sorted(task_cfg.items()) if k not in skip)


def describe_model(cfg: dict[str, Any]) -> str:
    model, layer = cfg["model"], cfg["layer"]
    pattern = model.get("pattern") or [layer["name"]]
    opts = " ".join(f"{k}={v}" for k, v in sorted(layer.items()) if k != "name" and v is not None)
    ch_opts = ",".join(f"{k}={v}" for k, v in sorted((model.get("channel_options") or {}).items())
                       if v is not None)
    channel = model.get("channel", "mlp") + (f"[{ch_opts}]" if ch_opts else "")
    return (f"{'+'.join(pattern)} x{model['n_layers']} d={model['d_model']} ch={channel}"
            + (f" ({opts})" if opts else ""))


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarise(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per task, one summary per row, hyper-parameters selected on validation."""
    rows: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for rec in records:
        rows[rec["task"]][row_key(rec["config"])].append(rec)
    out: dict[str, list[dict[str, Any]]] = {}
    for task in sorted(rows):
        summaries = []
        for key in sorted(rows[task]):
            recs = rows[task][key]
            metric, sign = selection(recs[0]["config"])
            done = [r for r in recs if r["status"] == "completed" and metric in r["metrics"]]
            failed = len(recs) - len(done)
            by_hp: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for r in done:
                by_hp[hp_key(r["config"])].append(r)
            cfg = recs[0]["config"]
            s: dict[str, Any] = {"task": task, "layer": recs[0]["layer"],
                                 "suite": cfg.get("suite"),
                                 "setting": describe_task(cfg["task"]),
                                 "model": describe_model(cfg), "failed": failed,
                                 "n_configs": len(by_hp)}
            if by_hp:
                # Ties on validation go to the smaller key: deterministic, blind to test.
                best_hp = min(by_hp, key=lambda h: (-sign * statistics.fmean(
                    r["metrics"][metric] for r in by_hp[h]), h))
                chosen = sorted(by_hp[best_hp], key=lambda r: r["run_id"])
                s["selected_on"] = metric
                s["val"] = _mean_std([r["metrics"].get("val/acc", float("nan")) for r in chosen])
                if any("test/ppl" in r["metrics"] for r in chosen):
                    s["ppl"] = _mean_std([r["metrics"].get("test/ppl", float("nan"))
                                          for r in chosen])
                s["test"] = _mean_std([r["metrics"].get("test/acc", float("nan")) for r in chosen])
                s["exact"] = _mean_std([r["metrics"].get("test/exact_match", float("nan"))
                                        for r in chosen])
                s["n"] = len(chosen)
                variants = sorted({k.split("@", 1)[1] for r in chosen for k in r["metrics"]
                                   if k.startswith("test/acc@")}, key=_variant_order)
                s["by_variant"] = {v: tuple(statistics.fmean(
                    r["metrics"].get(f"test/{m}@{v}", float("nan")) for r in chosen)
                    for m in ("acc", "exact_match")) for v in variants}
                s["params"] = chosen[0]["params"]
                s["state_size"] = chosen[0]["state_size"]
                s["throughput"] = statistics.fmean(r["throughput_tokens_per_s"] for r in chosen)
                s["wall"] = statistics.fmean(r["wall_time_s"] for r in chosen)
                s["ess"] = _mean_ess(chosen)
                # every trained model is a point of the ESS study, whatever its lr: the
                # correlation describes models, it selects nothing
                s["slices"] = _slice_points(sorted(done, key=lambda r: r["run_id"]))
                if s["slices"]:
                    s["fixed_state"] = fixed_state(cfg)
                s["hp"] = json.loads(best_hp).get("optim", {})
            summaries.append(s)
        out[task] = summaries
    return out


def selection(cfg: dict[str, Any]) -> tuple[str, int]:
    """The validation metric a row is selected on, and +1 (higher is better) or -1: the one
    the runs themselves early-stopped and kept checkpoints on (``early_stopping``), else
    ``val/acc``."""
    es = cfg.get("early_stopping") or {}
    monitor = es.get("monitor")
    if isinstance(monitor, str) and monitor.startswith("val/"):
        return monitor, (-1 if es.get("mode") == "min" else 1)
    return "val/acc", 1


def _mean_ess(recs: list[dict[str, Any]]) -> float | None:
    """The model's tolerance-ESS in floats (``record["ess"]["total"]``, see zoo.ess), mean over
    the runs that measured it."""
    vals = [r["ess"]["total"]["tolerance_ess"] for r in recs
            if isinstance(r.get("ess"), dict) and r["ess"].get("total")]
    return statistics.fmean(vals) if vals else None


FIXED, GROWING = "[fixed-state mixers]", "[growing-state mixers]"  # sort before mixer names


def fixed_state(cfg: dict[str, Any]) -> bool | None:
    """Whether every sequence mixer of a run's model has a state that stopped growing before
    the end of the task's sequences (by the layers' own ``state_size`` at ``T - 1`` and ``T``):
    the recurrences, and attention with a window shorter than ``T``; a KV cache over the whole
    sequence grows. None for a model this checkout cannot build (a layer or option it does not
    have). (Builds the model: torch is imported only for rows with ESS slices.)"""
    from .model import Backbone, model_kwargs
    T = cfg["task"]["seq_len"]
    try:
        blocks = Backbone(**model_kwargs(cfg, 2)).blocks
    except (ValueError, TypeError, KeyError):
        return None
    return all(b.mixer.state_size(T - 1) == b.mixer.state_size(T) for b in blocks)


def _slice_points(recs: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Per run and slice of the state-size task: the slice's test accuracy, ESS and TSS per
    key-value pair (``record["ess"]["slices"]``, see zoo.ess); empty for other tasks."""
    points = []
    for r in recs:
        slices = (r.get("ess") or {}).get("slices") or {}
        for name, sl in sorted(slices.items()):
            acc = r["metrics"].get(f"test/acc@{name}")
            if acc is not None and sl.get("ess_per_kv") and sl.get("tss_per_kv"):
                points.append({"slice": name, "acc": acc, "ess_per_kv": sl["ess_per_kv"],
                               "tss_per_kv": sl["tss_per_kv"], "seed": r["seed"]})
    return points


def _ranks(xs: list[float]) -> list[float]:
    """Ranks 1..n, ties sharing their mean rank."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ranks = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def pearson(xs: list[float], ys: list[float]) -> float | None:
    if len(xs) < 3:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    return sxy / (sxx * syy) ** 0.5 if sxx > 0 and syy > 0 else None


def spearman(xs: list[float], ys: list[float]) -> float | None:
    return pearson(_ranks(xs), _ranks(ys))


def _variant_order(name: str) -> tuple:
    """len=8 < len=64 < len=512 < other variants (alphabetical)."""
    if name.startswith("len="):
        return (0, int(name[4:]), "")
    return (1, 0, name)


def _row_head(r: dict[str, Any]) -> str:
    """The columns that name a row: layer, model, setting, suite."""
    return f"| {r['layer']} | {r['model']} | {r['setting']} | {r['suite'] or '–'} "


def _best(values: list[float | None], higher: bool) -> float | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return max(vals) if higher else min(vals)


def _fmt_ms(ms: tuple[float, float] | None, n: int | None = None) -> str:
    if ms is None:
        return "–"
    text = f"{ms[0]:.4f} ± {ms[1]:.4f}"
    return text + (f" (n={n})" if n is not None else "")


def render(summary: dict[str, list[dict[str, Any]]], n_records: int,
           problems: list[str], plots: Sequence[tuple[str, str]] = ()) -> str:
    lines = ["# Leaderboard", "",
             f"Generated by `python -m zoo.leaderboard` from {n_records} run records in "
             "`results/`; do not edit by hand.",
             "Each row is one task setting, architecture and suite. Hyper-parameters are "
             "selected on the mean over seeds of the validation metric the runs early-stopped on (val/acc "
             "unless a config names another; val/ppl for language modelling); test metrics "
             "are reported for that choice as "
             "mean ± std over seeds (n). **Bold** marks the best value of a column within a "
             "task (highest accuracy and throughput, lowest parameters and state size).",
             "State size is the theoretical state (floats) of all sequence mixers at the "
             "training length; ESS is the measured effective state size (tolerance-ESS, "
             "python -m zoo.ess) in floats, like the state size: each head's rank times the "
             "value channels it mixes, summed over heads and layers, mean over positions; "
             "throughput is training tokens/s on the machine of the run, and "
             "wall s the whole run (data, training, validation, test) in seconds; both depend on "
             "what else the machine was running.", ""]
    for task, rows in summary.items():
        ok = [r for r in rows if "test" in r]
        ppl = any("ppl" in r for r in ok)  # language modelling: perplexity leads
        lines += [f"## {task}", "",
                  "| layer | model | setting | suite | " + ("test ppl | " if ppl else "")
                  + "test acc | test exact match | val acc | params "
                  "| state size | ESS | tokens/s | wall s | lr | failed |",
                  "|---|---|---|---|" + ("---|" if ppl else "")
                  + "---|---|---|---|---|---|---|---|---|---|"]
        best_test = _best([r["test"][0] for r in ok], True)
        best_ppl = _best([r["ppl"][0] for r in ok if "ppl" in r], False)
        best_params = _best([r["params"] for r in ok], False)
        best_state = _best([r["state_size"] for r in ok], False)
        best_tp = _best([r["throughput"] for r in ok], True)

        def mark(text: str, value: Any, best: Any) -> str:
            return f"**{text}**" if value is not None and value == best else text

        def order(r: dict[str, Any]) -> tuple:
            head = (r["ppl"][0] if "ppl" in r else math.inf) if ppl else -r.get(
                "test", (-1.0,))[0]
            return (head, r["layer"], r["model"], r["setting"], r["suite"] or "")

        for r in sorted(rows, key=order):
            if "test" not in r:
                lines.append(_row_head(r) + "| – | – | – | – " + ("| – " if ppl else "")
                             + f"| – | – | – | – | – | {r['failed']} |")
                continue
            lines.append(
                _row_head(r)
                + (f"| {mark(_fmt_ms(r['ppl'], r['n']), r['ppl'][0], best_ppl)} "
                   if ppl else "")
                + f"| {mark(_fmt_ms(r['test'], r['n']), r['test'][0], best_test)} "
                f"| {_fmt_ms(r['exact'])} | {_fmt_ms(r['val'])} "
                f"| {mark(format(r['params'], ','), r['params'], best_params)} "
                f"| {mark(format(r['state_size'], ','), r['state_size'], best_state)} "
                f"| {'–' if r['ess'] is None else format(r['ess'], ',.1f')} "
                f"| {mark(format(r['throughput'], ',.0f'), r['throughput'], best_tp)} "
                f"| {r['wall']:,.0f} | {r['hp'].get('lr', '–')} | {r['failed']} |")
        lines.append("")
        lines += _variant_table(rows)
    lines += _aggregate_table(summary)
    lines += _correlation_section(summary)
    if plots:
        lines += ["## Plots", ""] + [f"- [{title}]({path})" for title, path in plots] + [""]
    if problems:
        lines += ["## Skipped files", ""] + [f"- {p}" for p in problems] + [""]
    return "\n".join(lines)


def aggregate(summary: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per suite: the task settings it covers and, per architecture, the selected test accuracy
    on each and their mean (MAD-Lab's aggregate score, but selected on validation). The score
    is given only to architectures that have every setting of the suite."""
    suites: dict[str, dict[str, Any]] = {}
    for task, rows in summary.items():
        for r in rows:
            if not r.get("suite") or "test" not in r:
                continue
            su = suites.setdefault(r["suite"], {"columns": [], "archs": defaultdict(dict)})
            col = f"{task}: {r['setting']}"
            if col not in su["columns"]:
                su["columns"].append(col)
            arch = f"{r['layer']} | {_arch(r['model'])}"
            su["archs"][arch][col] = r["test"][0]
    for su in suites.values():
        su["columns"].sort()
        su["score"] = {a: (statistics.fmean(cells.values())
                           if len(cells) == len(su["columns"]) else None)
                       for a, cells in su["archs"].items()}
    return suites


def _arch(model: str) -> str:
    """The model description without the layer's options (the architecture, not its knobs)."""
    return model.split(" (", 1)[0]


def _aggregate_table(summary: dict[str, list[dict[str, Any]]]) -> list[str]:
    lines: list[str] = []
    for name, su in sorted(aggregate(summary).items()):
        cols = su["columns"]
        best = _best(list(su["score"].values()), True)
        lines += [f"## Aggregate: suite `{name}`", "",
                  "Mean over the suite's task settings of the test accuracy selected on "
                  "validation (MAD-Lab's aggregate, selected honestly); only architectures with "
                  "every setting get a score. Settings: "
                  + "; ".join(f"({i + 1}) {c}" for i, c in enumerate(cols)), "",
                  "| layer | architecture | score | " + " | ".join(
                      f"({i + 1}) {c.split(':')[0]}" for i, c in enumerate(cols)) + " |",
                  "|---|---|---|" + "---|" * len(cols)]
        order = sorted(su["archs"], key=lambda a: (su["score"][a] is None,
                                                    -(su["score"][a] or 0), a))
        for a in order:
            sc = su["score"][a]
            text = "–" if sc is None else f"{sc:.4f}"
            text = f"**{text}**" if sc is not None and sc == best else text
            cells = [f"{su['archs'][a][c]:.4f}" if c in su["archs"][a] else "–" for c in cols]
            lines.append(f"| {a} | {text} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _correlate(points: list[dict[str, float]]) -> dict[str, Any]:
    """Rank and log-linear correlation of the points' accuracy with ESS and TSS per pair."""
    acc = [p["acc"] for p in points]
    out: dict[str, Any] = {"n": len(points)}
    for k in ("ess_per_kv", "tss_per_kv"):
        logs = [math.log(p[k]) for p in points]
        out[k] = {"spearman": spearman(logs, acc), "pearson_log": pearson(logs, acc)}
    return out


def correlations(summary: dict[str, list[dict[str, Any]]]) -> dict[str, Any] | None:
    """Across every (completed run, slice) point of the state-size task, all hyper-parameters
    and seeds: rank and log-linear correlation of accuracy with ESS per key-value pair and
    with TSS per key-value pair. ``groups`` repeats it within each suite, within the suite's
    mixers of fixed and of growing state (``fixed_state``), and within each mixer of a suite
    (where a row's width or other options vary the state)."""
    rows = [r for rs in summary.values() for r in rs if r.get("slices")]
    points = [p for r in rows for p in r["slices"]]
    if len(points) < 3:
        return None
    out = _correlate(points)
    by: dict[tuple[str, str], list[dict[str, float]]] = defaultdict(list)
    for r in rows:
        suite = r.get("suite") or "-"
        by[(suite, "")] += r["slices"]
        if r["fixed_state"] is not None:
            by[(suite, FIXED if r["fixed_state"] else GROWING)] += r["slices"]
        by[(suite, r["layer"])] += r["slices"]
    out["groups"] = {k: _correlate(v) for k, v in sorted(by.items()) if len(v) >= 3}
    return out


def _correlation_section(summary: dict[str, list[dict[str, Any]]]) -> list[str]:
    c = correlations(summary)
    if c is None:
        return []

    def f(v: float | None) -> str:
        return "–" if v is None else f"{v:+.3f}"

    def row(name: str, g: dict[str, Any]) -> str:
        e, t = g["ess_per_kv"], g["tss_per_kv"]
        better = "–"
        if e["spearman"] is not None and t["spearman"] is not None:
            es, ts = round(e["spearman"], 3), round(t["spearman"], 3)  # as printed
            better = "ESS" if es > ts else "TSS" if ts > es else "tie"
        return (f"| {name} | {g['n']} | {f(e['spearman'])} | {f(t['spearman'])} | {better} | "
                f"{f(e['pearson_log'])} | {f(t['pearson_log'])} |")

    lines = ["## Effective state size against accuracy (state_size task)", "",
             f"Over {c['n']} points (every completed run of `task=state_size`, all learning "
             "rates and seeds, x key-value slice): "
             "the correlation of the slice's test accuracy with the state per key-value pair, "
             "measured (ESS, tolerance, in floats) and theoretical (TSS, floats). arXiv 2504.19561 finds ESS per "
             "pair the better predictor. Below the pooled row, the same within each suite, within "
             "the suite's mixers of fixed state (recurrences, attention with a window shorter "
             "than the sequence: TSS is a capacity they fill) and of growing state (a KV cache "
             "over the whole sequence), and within each mixer of a suite.", "",
             "| points | n | ESS / kv Spearman | TSS / kv Spearman | higher | "
             "ESS / kv Pearson (log x) | TSS / kv Pearson (log x) |",
             "|---|---|---|---|---|---|---|", row("all", c)]
    for (suite, layer), g in c["groups"].items():
        lines.append(row(f"{suite}: {layer}" if layer else f"suite {suite}", g))
    return lines + [""]


def _variant_table(rows: list[dict[str, Any]]) -> list[str]:
    """Test accuracy per length (and other test variants) of the selected runs, when any row
    was tested on more than its training length."""
    rows = [r for r in rows if len(r.get("by_variant", {})) > 1]
    if not rows:
        return []
    variants = sorted({v for r in rows for v in r["by_variant"]}, key=_variant_order)
    lines = ["Test token accuracy / exact match (whole example right) by evaluation length or "
             "variant, selected runs, mean over seeds:", "",
             "| layer | model | setting | suite | " + " | ".join(variants) + " |",
             "|---|---|---|---|" + "---|" * len(variants)]
    for r in sorted(rows, key=lambda r: (r["layer"], r["model"], r["setting"], r["suite"] or "")):
        cells = [f"{r['by_variant'][v][0]:.3f} / {r['by_variant'][v][1]:.3f}"
                 if v in r["by_variant"] else "–" for v in variants]
        lines.append(_row_head(r) + "| " + " | ".join(cells) + " |")
    return lines + [""]


def build(results_dir: str | Path, plots_dir: str | Path | None = None,
          relative_to: str | Path = ".", draw: bool = True) -> str:
    """The leaderboard text; with ``plots_dir`` the PNGs are linked and, if ``draw``, (re)drawn
    there. The links are a pure function of the records, so ``--check`` (``draw=False``)
    compares the text while touching no file."""
    from . import plots as P  # matplotlib itself is imported only to draw
    records, problems = load_records(results_dir)
    summary = summarise(records)
    links: list[tuple[str, str]] = []
    if plots_dir is not None:
        todo = (P.draw_all(summary, Path(plots_dir), correlations(summary)) if draw
                else P.planned(summary, Path(plots_dir)))
        links = [(title, os.path.relpath(path, relative_to)) for title, path in todo]
    return render(summary, len(records), problems, links)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", default="results", help="directory of run records")
    ap.add_argument("--out", default="leaderboard.md", help="file to write")
    ap.add_argument("--plots", default="plots",
                    help="directory for the PNG plots, relative to --out's directory ('' for none)")
    ap.add_argument("--check", action="store_true", help="exit 1 if --out is stale, write nothing")
    args = ap.parse_args(argv)
    out = Path(args.out)
    plots_dir = (out.parent / args.plots) if args.plots else None
    text = build(args.results, plots_dir, out.parent, draw=not args.check)
    if args.check:
        current = out.read_text() if out.exists() else None
        if current != text:
            print(f"{out} is stale: run `python -m zoo.leaderboard`", file=sys.stderr)
            return 1
        print(f"{out} is up to date")
        return 0
    if not out.exists() or out.read_text() != text:
        out.write_text(text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
