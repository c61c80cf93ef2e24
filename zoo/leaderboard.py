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
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from .data import DATA_KEYS
from .record import load_records

RUN_KEYS = ("seed", "out_dir", "results_dir", "progress_refresh_rate", "logger")


def _canon(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def row_key(cfg: dict[str, Any]) -> str:
    """What defines a leaderboard row: the task setting and the architecture."""
    return _canon({"task": cfg["task"], "layer": cfg["layer"], "model": cfg["model"]})


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
            done = [r for r in recs if r["status"] == "completed" and "val/acc" in r["metrics"]]
            failed = len(recs) - len(done)
            by_hp: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for r in done:
                by_hp[hp_key(r["config"])].append(r)
            cfg = recs[0]["config"]
            s: dict[str, Any] = {"task": task, "layer": recs[0]["layer"],
                                 "setting": describe_task(cfg["task"]),
                                 "model": describe_model(cfg), "failed": failed,
                                 "n_configs": len(by_hp)}
            if by_hp:
                # Ties on validation go to the smaller key: deterministic, blind to test.
                best_hp = min(by_hp, key=lambda h: (-statistics.fmean(
                    r["metrics"]["val/acc"] for r in by_hp[h]), h))
                chosen = sorted(by_hp[best_hp], key=lambda r: r["run_id"])
                s["val"] = _mean_std([r["metrics"]["val/acc"] for r in chosen])
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
                s["hp"] = json.loads(best_hp).get("optim", {})
            summaries.append(s)
        out[task] = summaries
    return out


def _mean_ess(recs: list[dict[str, Any]]) -> float | None:
    """Tolerance-ESS per head, summed over layers, mean over the runs that measured it."""
    vals = [sum(layer["tolerance"] * layer["heads"] for layer in r["ess"]["layers"].values())
            for r in recs if isinstance(r.get("ess"), dict) and r["ess"].get("layers")]
    return statistics.fmean(vals) if vals else None


def _variant_order(name: str) -> tuple:
    """len=8 < len=64 < len=512 < other variants (alphabetical)."""
    if name.startswith("len="):
        return (0, int(name[4:]), "")
    return (1, 0, name)


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
           problems: list[str]) -> str:
    lines = ["# Leaderboard", "",
             f"Generated by `python -m zoo.leaderboard` from {n_records} run records in "
             "`results/`; do not edit by hand.",
             "Each row is one task setting and architecture. Hyper-parameters are selected on "
             "mean validation accuracy; test accuracy is reported for that choice as "
             "mean ± std over seeds (n). **Bold** marks the best value of a column within a "
             "task (highest accuracy and throughput, lowest parameters and state size).",
             "State size is the theoretical state (floats) of all sequence mixers at the "
             "training length; ESS is the measured effective state size (tolerance-ESS, "
             "python -m zoo.ess) summed over heads and layers, mean over positions; throughput is training tokens/s on the machine of the run, and "
             "wall s the whole run (data, training, validation, test) in seconds; both depend on "
             "what else the machine was running.", ""]
    for task, rows in summary.items():
        lines += [f"## {task}", "",
                  "| layer | model | setting | test acc | test exact match | val acc | params "
                  "| state size | ESS | tokens/s | wall s | lr | failed |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        ok = [r for r in rows if "test" in r]
        best_test = _best([r["test"][0] for r in ok], True)
        best_params = _best([r["params"] for r in ok], False)
        best_state = _best([r["state_size"] for r in ok], False)
        best_tp = _best([r["throughput"] for r in ok], True)

        def mark(text: str, value: Any, best: Any) -> str:
            return f"**{text}**" if value is not None and value == best else text

        for r in sorted(rows, key=lambda r: (-(r["test"][0] if "test" in r else -1),
                                             r["layer"], r["model"], r["setting"])):
            if "test" not in r:
                lines.append(f"| {r['layer']} | {r['model']} | {r['setting']} | – | – | – | – "
                             f"| – | – | – | – | – | {r['failed']} |")
                continue
            lines.append(
                f"| {r['layer']} | {r['model']} | {r['setting']} "
                f"| {mark(_fmt_ms(r['test'], r['n']), r['test'][0], best_test)} "
                f"| {_fmt_ms(r['exact'])} | {_fmt_ms(r['val'])} "
                f"| {mark(format(r['params'], ','), r['params'], best_params)} "
                f"| {mark(format(r['state_size'], ','), r['state_size'], best_state)} "
                f"| {'–' if r['ess'] is None else format(r['ess'], ',.1f')} "
                f"| {mark(format(r['throughput'], ',.0f'), r['throughput'], best_tp)} "
                f"| {r['wall']:,.0f} | {r['hp'].get('lr', '–')} | {r['failed']} |")
        lines.append("")
        lines += _variant_table(rows)
    if problems:
        lines += ["## Skipped files", ""] + [f"- {p}" for p in problems] + [""]
    return "\n".join(lines)


def _variant_table(rows: list[dict[str, Any]]) -> list[str]:
    """Test accuracy per length (and other test variants) of the selected runs, when any row
    was tested on more than its training length."""
    rows = [r for r in rows if len(r.get("by_variant", {})) > 1]
    if not rows:
        return []
    variants = sorted({v for r in rows for v in r["by_variant"]}, key=_variant_order)
    lines = ["Test token accuracy / exact match (whole example right) by evaluation length or "
             "variant, selected runs, mean over seeds:", "",
             "| layer | model | setting | " + " | ".join(variants) + " |",
             "|---|---|---|" + "---|" * len(variants)]
    for r in sorted(rows, key=lambda r: (r["layer"], r["model"], r["setting"])):
        cells = [f"{r['by_variant'][v][0]:.3f} / {r['by_variant'][v][1]:.3f}"
                 if v in r["by_variant"] else "–" for v in variants]
        lines.append(f"| {r['layer']} | {r['model']} | {r['setting']} | " + " | ".join(cells) + " |")
    return lines + [""]


def build(results_dir: str | Path) -> str:
    records, problems = load_records(results_dir)
    return render(summarise(records), len(records), problems)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", default="results", help="directory of run records")
    ap.add_argument("--out", default="leaderboard.md", help="file to write")
    ap.add_argument("--check", action="store_true", help="exit 1 if --out is stale, write nothing")
    args = ap.parse_args(argv)
    text = build(args.results)
    out = Path(args.out)
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
