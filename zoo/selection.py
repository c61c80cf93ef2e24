"""Selecting: counted run records (``zoo.reading``) -> leaderboard rows and the board.

Selection: a row is a task setting, architecture (label), width and suite. Within it the
hyper-parameters with the best mean validation metric over seeds are chosen (ties to the
smaller key: deterministic and blind to test); the row reports the test metrics of that
choice over its seeds. Failed runs are counted, never ranked. A run that extends another (the
budget ladder) is one choice of hyper-parameters with it (``ladder_hp``).
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf

from .labels import CONFIG_DIR, describe_task, hp_key, label, row_key, width
from .reading import Records

STOPS = {"solved": "S", "plateau": "P", "max_steps": "M", "non_finite": "N"}


def ladder_hp(rec: dict[str, Any]) -> str:
    """A record's hyper-parameters, a run that extends another's at its ladder's first step
    cap: the runs of one ladder are one choice of hyper-parameters."""
    cfg = rec["config"]
    root = (rec.get("extends") or {}).get("root_max_steps")
    if root is not None:
        cfg = {**cfg, "trainer": {**(cfg.get("trainer") or {}), "max_steps": root}}
    return hp_key(cfg)


def selection(cfg: dict[str, Any]) -> tuple[str, bool]:
    """The validation metric a row is selected on and whether higher is better: the one the
    runs early-stopped and kept checkpoints on (``early_stopping``), else ``val/acc``."""
    es = cfg.get("early_stopping") or {}
    monitor = es.get("monitor")
    if isinstance(monitor, str) and monitor.startswith("val/"):
        return monitor, es.get("mode") != "min"
    return "val/acc", True


def finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def stat(recs: list[dict[str, Any]], metric: str) -> tuple[float, float, int] | None:
    """Mean, sample std (0 for one value) and count of a metric over the records that have it."""
    xs = [r["metrics"][metric] for r in recs if finite(r["metrics"].get(metric))]
    if not xs:
        return None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0), len(xs)


def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one mapping of dotted keys."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@dataclass
class Row:
    """One task setting x architecture x width x suite, and its selected runs."""
    key: str
    suite: str | None
    task: str
    setting: str
    label: str
    width: int | None
    cfg: dict[str, Any]
    runs: list[dict[str, Any]]
    done: list[dict[str, Any]] = field(default_factory=list)
    chosen: list[dict[str, Any]] = field(default_factory=list)
    hp: dict[str, Any] = field(default_factory=dict)
    selected_on: str = "val/acc"
    higher: bool = True

    @property
    def failed(self) -> int:
        return len(self.runs) - len(self.done)

    @property
    def n(self) -> int:
        return len(self.chosen)

    def stat(self, metric: str) -> tuple[float, float, int] | None:
        return stat(self.chosen, metric)

    @property
    def test(self) -> tuple[float, float, int] | None:
        return self.stat("test/acc")

    def first(self, key: str) -> Any:
        """A field of the selected runs that the architecture fixes (params, state size)."""
        return next((r[key] for r in self.chosen + self.runs if r.get(key) is not None), None)

    @property
    def state_bytes(self) -> int | None:
        """The theoretical state at the training length in bytes (fp32: 4 per float)."""
        s = self.first("state_size")
        return 4 * s if isinstance(s, int) else None

    @property
    def fixed_state(self) -> bool | None:
        """Whether the state stopped growing before the end of the sequence (recurrences,
        attention windowed below the length) rather than growing with it (a KV cache): the
        recorded state at ``T - 1`` and ``T``; None for a record without ``state_size_prev``."""
        for r in self.runs:
            prev, now = r.get("state_size_prev"), r.get("state_size")
            if isinstance(prev, int) and isinstance(now, int):
                return prev == now
        return None

    def variants(self, kind: str) -> list[str]:
        """The test variants of the selected runs whose name starts with ``kind``
        (``len=``, ``kv=``), in numeric order."""
        names = {k.split("@", 1)[1] for r in self.chosen for k in r["metrics"]
                 if k.startswith("test/acc@") and k.split("@", 1)[1].startswith(kind)}
        return sorted(names, key=variant_order)

    @property
    def own_metric(self) -> str:
        """The metric the row is selected on, without its ``val/``: ``acc``, ``ppl``, ``mse``."""
        return self.selected_on.split("/", 1)[-1]

    def by_examples(self, prefix: str = "") -> dict[int, tuple[float, float, int]]:
        """The selected runs' ``test/<prefix><own metric>@n=<i>`` (the error or accuracy at
        each number of in-context examples) by ``i``; empty for a task without such slices."""
        return per_example(self.chosen, f"test/{prefix}{self.own_metric}")

    @property
    def stops(self) -> str:
        """How the selected runs stopped, e.g. ``2S 1M`` (S solved, P plateau, M max_steps,
        N non-finite, ? not recorded)."""
        c = Counter(STOPS.get(r.get("stop_reason"), "?") for r in self.chosen)
        if set(c) == {"?"}:
            return "?"
        return " ".join(f"{c[s]}{s}" for s in [*STOPS.values(), "?"] if c[s])

    @property
    def budget(self) -> str:
        return budget(self.chosen or self.runs)


def per_example(recs: list[dict[str, Any]], key: str) -> dict[int, tuple[float, float, int]]:
    """``key@n=<i>`` over ``recs`` (mean, std, count) by ``i``."""
    ns = {int(k[len(key) + 3:]) for r in recs for k in r["metrics"]
          if k.startswith(f"{key}@n=") and k[len(key) + 3:].isdigit()}
    return {n: s for n in sorted(ns) if (s := stat(recs, f"{key}@n={n}"))}


def reference_estimators(rows: list[Row]) -> dict[str, dict[int, float]]:
    """The reference estimators an in-context task scores beside the models on the same test
    prompts (``test/<name>_<metric>@n=<i>``: ridge, one gradient step, EM, ...), by name and
    ``i``: the same prompts for one seed, so one value per seed of the rows' selected runs,
    averaged over seeds."""
    metric = rows[0].own_metric if rows else ""
    pattern = re.compile(rf"^test/(\w+)_{re.escape(metric)}@n=(\d+)$")
    values: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for metrics in seed_metrics(rows):
        for k, v in metrics.items():
            m = pattern.match(k)
            if m and finite(v):
                values[m.group(1)][int(m.group(2))].append(v)
    return {name: {n: statistics.fmean(vs) for n, vs in sorted(by_n.items())}
            for name, by_n in sorted(values.items())}


def seed_metrics(rows: list[Row]) -> list[dict[str, Any]]:
    """The metrics of one selected run per seed of ``rows`` (the first): for figures that are
    the same for every architecture tested on one seed's prompts."""
    per_seed: dict[Any, dict[str, Any]] = {}
    for row in rows:
        for r in row.chosen:
            per_seed.setdefault(r["seed"], r["metrics"])
    return [per_seed[k] for k in sorted(per_seed, key=str)]


def shared_stat(rows: list[Row], metric: str) -> tuple[float, float, int] | None:
    """A figure the same for every architecture on one seed's test prompts (an estimator's
    score), over the seeds of ``rows``."""
    return stat([{"metrics": m} for m in seed_metrics(rows)], metric)


def variant_order(name: str) -> tuple:
    """len=8 < len=64 < kv=2 < kv=16 < other variants (alphabetical)."""
    kind, _, value = name.partition("=")
    if value.isdigit():
        return (0, kind, int(value))
    return (1, name, 0)


def budget(recs: list[dict[str, Any]]) -> str:
    """Training budget: steps x batch = examples (a range where the runs differ)."""
    shapes = sorted({((r["config"].get("trainer") or {}).get("max_steps"),
                      r["config"]["task"].get("batch_size")) for r in recs}, key=str)
    texts = [f"{s:,} steps x {b} = {s * b:,} examples" if isinstance(s, int) and isinstance(b, int)
             and s > 0 else f"{s if s is not None else '?'} steps x {b or '?'}"
             for s, b in shapes]
    return "; ".join(texts)


def summarise(records: list[dict[str, Any]]) -> list[Row]:
    """Rows of counted records, sorted by suite, task, setting, label and width."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rec in records:
        groups[row_key(rec["config"])].append(rec)
    rows = []
    for key, recs in groups.items():
        recs.sort(key=lambda r: (str(r["run_id"]), str(r.get("time"))))
        cfg = recs[0]["config"]
        row = Row(key, cfg.get("suite"), cfg["task"]["name"], describe_task(cfg["task"]),
                  label(cfg), width(cfg), cfg, recs)
        row.selected_on, row.higher = selection(cfg)
        row.done = [r for r in recs if r["status"] == "completed"
                    and finite(r["metrics"].get(row.selected_on))]
        by_hp: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in row.done:
            by_hp[ladder_hp(r)].append(r)
        if by_hp:
            sign = 1 if row.higher else -1
            best = min(by_hp, key=lambda h: (-sign * statistics.fmean(
                r["metrics"][row.selected_on] for r in by_hp[h]), h))
            row.chosen, row.hp = by_hp[best], flat(json.loads(best))
        rows.append(row)
    return sorted(rows, key=lambda r: (r.suite or "", r.task, r.setting, r.label,
                                       r.width or 0))


def swept(rows: list[Row]) -> dict[str, list[Any]]:
    """The hyper-parameters (dotted keys) that take more than one value among the runs of a
    row, with their values over the rows: what selection chose among."""
    values: dict[str, set[str]] = defaultdict(set)
    varied: set[str] = set()
    for row in rows:
        mine: dict[str, set[str]] = defaultdict(set)
        for r in row.runs:
            for k, v in flat(json.loads(hp_key(r["config"]))).items():
                mine[k].add(json.dumps(v, sort_keys=True))
        varied |= {k for k, vs in mine.items() if len(vs) > 1}
        for k, vs in mine.items():
            values[k] |= vs
    return {k: sorted((json.loads(v) for v in values[k]), key=lambda v: (str(type(v)), v))
            for k in sorted(varied)}


def by_suite(rows: list[Row]) -> dict[str | None, list[Row]]:
    out: dict[str | None, list[Row]] = {}
    for row in rows:
        out.setdefault(row.suite, []).append(row)
    return dict(sorted(out.items(), key=lambda kv: (kv[0] is None, kv[0] or "")))


def by_setting(rows: list[Row]) -> dict[tuple[str, str], list[Row]]:
    out: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        out.setdefault((row.task, row.setting), []).append(row)
    return dict(sorted(out.items()))


def icl_groups(rows: list[Row]) -> list[tuple[str | None, str, str, list[Row]]]:
    """(suite, task, setting, rows) of every setting whose runs are scored at each number of
    in-context examples (``test/<m>@n=<i>``)."""
    out = []
    for suite, srows in by_suite(rows).items():
        for (task, setting), group in by_setting(srows).items():
            group = [r for r in group if r.by_examples()]
            if group:
                out.append((suite, task, setting, group))
    return out


def selection_stages() -> set[str]:
    """Suites that only choose another suite's learning rate: the first stage of a two-stage
    sweep, named by a preset's ``lr_from`` (``configs/experiment``). Their rows are shown in
    their own section, never as the headline or the matrix."""
    stages = set()
    for path in sorted((CONFIG_DIR / "experiment").rglob("*.yaml")):
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        if isinstance(data, dict) and isinstance(data.get("lr_from"), str):
            stages.add(data["lr_from"])
    return stages


# The tier trained under the frontier's rule (configs/experiment/tier): the matrix once it has
# results, over suites that cover more tasks on smaller budgets.
TIER_SUITE = "tier"


def matrix_suite(rows: list[Row]) -> str | None:
    """The leaderboard's matrix: suite ``tier`` where it has results, else the named suite
    that covers the most task settings (then rows, then name)."""
    stages = selection_stages()
    counts = {s: (len(by_setting(rs)), len(rs)) for s, rs in by_suite(rows).items()
              if s is not None and s not in stages and any(r.test for r in rs)}
    if TIER_SUITE in counts:
        return TIER_SUITE
    return min(counts, key=lambda s: (-counts[s][0], -counts[s][1], s)) if counts else None


def recall_suite(rows: list[Row]) -> str | None:
    """The suite of the headline figure: ``frontier`` where it has results, else the named
    suite with the most rows tested on key-value slices (then the most widths, then name)."""
    counts: dict[str, tuple[int, int]] = {}
    stages = selection_stages()
    for s, rs in by_suite(rows).items():
        sliced = [r for r in rs if r.variants("kv=")]
        if s is not None and s not in stages and sliced:
            counts[s] = (len(sliced), len({r.width for r in sliced}))
    if "frontier" in counts:
        return "frontier"
    return min(counts, key=lambda s: (-counts[s][0], -counts[s][1], s)) if counts else None


@dataclass
class Matrix:
    """Architecture x task setting of one suite: the selected row of each cell, and the mean
    of a line's test accuracies where it has every setting (MAD-Lab's score, selected on
    validation)."""
    suite: str
    columns: list[tuple[str, str]]
    lines: list[tuple[str, int | None, dict[tuple[str, str], Row], float | None]]


def matrix(rows: list[Row], suite: str) -> Matrix:
    rows = [r for r in rows if r.suite == suite and r.test]
    columns = sorted({(r.task, r.setting) for r in rows})
    cells: dict[tuple[str, int | None], dict[tuple[str, str], Row]] = defaultdict(dict)
    for r in rows:
        cells[(r.label, r.width)][(r.task, r.setting)] = r
    lines = []
    for (lab, w), line in cells.items():
        score = (statistics.fmean(line[c].test[0] for c in columns)
                 if len(line) == len(columns) else None)
        lines.append((lab, w, line, score))
    lines.sort(key=lambda x: (x[3] is None, -(x[3] or 0.0), x[0], x[1] or 0))
    return Matrix(suite, columns, lines)


def machine(rec: dict[str, Any]) -> str:
    """The machine a run trained on, in words (throughput compares only within one)."""
    dev = rec.get("device") if isinstance(rec.get("device"), dict) else {}
    cuda = dev.get("cuda")
    if cuda:
        return ", ".join(f"{n} x{c}" for n, c in sorted(Counter(cuda).items()))
    cpu = dev.get("processor") or "unknown"
    return f"{cpu}, {dev['cpu_count']} cores" if dev.get("cpu_count") else cpu


def performance(rows: list[Row]) -> list[tuple[str, Row, int, float, float]]:
    """Per machine and row: completed runs, mean training tokens/s, mean wall seconds."""
    out = []
    for row in rows:
        per: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in row.done:
            if finite(r.get("throughput_tokens_per_s")) and finite(r.get("wall_time_s")):
                per[machine(r)].append(r)
        for m, recs in per.items():
            out.append((m, row, len(recs),
                        statistics.fmean(r["throughput_tokens_per_s"] for r in recs),
                        statistics.fmean(r["wall_time_s"] for r in recs)))
    return sorted(out, key=lambda x: (x[0], x[1].suite or "", x[1].task, x[1].setting,
                                      x[1].label, x[1].width or 0))


@dataclass
class Board:
    """Everything the leaderboard shows, computed once: the records read, the rows, the
    matrix's suite and the headline figure's (recall) suite, and the ESS study
    (``zoo.ess_study``: its points and, per suite and group, its correlations)."""
    source: str
    records: Records
    rows: list[Row]
    matrix: Matrix | None
    recall: str | None
    points: list[dict[str, Any]]
    study: dict[str, dict[str, dict[str, Any]]]

    @property
    def labels(self) -> list[str]:
        """Every label, those of named suites first (the figures' first colours)."""
        named = sorted({r.label for r in self.rows if r.suite is not None})
        return named + sorted({r.label for r in self.rows} - set(named))
