"""Reading and counting run records: a records directory -> ``Records``.

Reading: every ``*.json`` under the records directory. A file that is not a readable run
record of the current schema with the fields the leaderboard reads (a config mapping with
task, layer and model mappings, a metrics mapping of numbers) is reported and skipped.

Counting: one record per row, hyper-parameters and seed (``labels.row_key``, ``hp_key``,
seed): a second record of the same (a file copied under another name, a run repeated) is
reported as a duplicate and ignored.

Superseding: a run that extends another (``extends``: the budget ladder, ``zoo.two_stage``;
its shorter run stopped at its step cap while still improving) is counted in that run's place,
within the same hyper-parameters; the shorter run is listed as superseded, not counted.

Joining: an eval record (``kind: eval``, ``zoo.eval``: a run tested again, on other lengths or
another variant) adds its metrics to the run it names, so they show in that run's row: new
lengths in the per-length table, new variants in the per-variant one, free-running ``gen_``
figures beside the teacher-forced ones. A metric the run recorded itself keeps the run's value;
between eval records of one run, the later one's. An eval record of a run that is not counted
here is reported and skipped.

Which rows the counted records make, and what each row reports: ``zoo.selection``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .labels import hp_key, row_key
from .record import REQUIRED, SCHEMA_VERSION


@dataclass
class Records:
    """What a records directory holds: each readable record with its path (relative to the
    directory), the notes on files skipped, and the duplicates ignored (path -> the path of
    the record counted in its place)."""
    entries: list[tuple[str, dict[str, Any]]]
    problems: list[str]
    duplicate_of: dict[str, str]
    evals: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # joined to a run
    superseded: dict[str, str] = field(default_factory=dict)  # path -> the longer run's path

    def is_counted(self, path: str) -> bool:
        return path not in self.duplicate_of and path not in self.superseded

    @property
    def counted(self) -> list[dict[str, Any]]:
        """The records counted, each with the metrics of its eval records joined."""
        by_run: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for _, ev in self.evals:
            by_run[ev["evaluates"]["run_id"]].append(ev)
        return [joined(r, by_run.get(r["run_id"], [])) for p, r in self.entries
                if self.is_counted(p)]

    def of_suite(self, suite: str) -> Records:
        """The records of one suite and their eval records (the skipped files stay listed)."""
        keep = {p for p, r in self.entries if r["config"].get("suite") == suite}
        runs = {r["run_id"] for p, r in self.entries if p in keep}
        return Records([e for e in self.entries if e[0] in keep], self.problems,
                       {p: q for p, q in self.duplicate_of.items() if p in keep},
                       [e for e in self.evals if e[1]["evaluates"]["run_id"] in runs],
                       {p: q for p, q in self.superseded.items() if p in keep})


def joined(rec: dict[str, Any], evals: list[dict[str, Any]]) -> dict[str, Any]:
    """A run record with the metrics of its eval records added (its own win; then the later
    eval's) and their ids under ``evals``."""
    if not evals:
        return rec
    evals = sorted(evals, key=lambda e: (str(e.get("time")), str(e["run_id"])))
    metrics: dict[str, Any] = {}
    for ev in evals:
        metrics.update(ev["metrics"])
    return {**rec, "metrics": {**metrics, **rec["metrics"]},
            "evals": [ev["run_id"] for ev in evals]}


def _number(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def problem(rec: Any) -> str | None:
    """Why a parsed JSON file is not a record the leaderboard can count (None if it is)."""
    if not isinstance(rec, dict) or any(k not in rec for k in REQUIRED):
        return "not a run record"
    if rec["schema_version"] != SCHEMA_VERSION:
        return f"schema_version {rec['schema_version']} is not {SCHEMA_VERSION}"
    cfg = rec["config"]
    if not isinstance(cfg, dict):
        return f"config is {json.dumps(cfg)[:40]}, not a mapping"
    for group in ("task", "layer", "model"):
        if not isinstance(cfg.get(group), dict):
            return f"config.{group} is not a mapping"
    if not isinstance(cfg["task"].get("name"), str) or not isinstance(cfg["layer"].get("name"),
                                                                       str):
        return "config.task or config.layer has no name"
    if not isinstance(rec["metrics"], dict):
        return f"metrics is {type(rec['metrics']).__name__}, not a mapping"
    if not all(_number(v) for v in rec["metrics"].values()):
        return "metrics holds a value that is not a number"
    if not isinstance(rec["status"], str):
        return "status is not a string"
    return None


def eval_problem(rec: dict[str, Any]) -> str | None:
    """Why an eval record cannot be joined to a run (None if it can)."""
    if rec.get("schema_version") != SCHEMA_VERSION:
        return f"schema_version {rec.get('schema_version')} is not {SCHEMA_VERSION}"
    if not isinstance((rec.get("evaluates") or {}).get("run_id"), str):
        return "eval record names no run (evaluates.run_id)"
    if not isinstance(rec.get("metrics"), dict) or not all(
            _number(v) for v in rec["metrics"].values()):
        return "eval record's metrics are not a mapping of numbers"
    return None


def read(results_dir: str | Path) -> Records:
    """Every record under ``results_dir`` (by path), what was skipped, which are duplicates."""
    root = Path(results_dir)
    entries, problems, evals = [], [], []
    for path in sorted(root.rglob("*.json")):
        rel = path.relative_to(root).as_posix()
        try:
            rec = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            problems.append(f"{rel}: unreadable ({type(e).__name__})")
            continue
        is_eval = isinstance(rec, dict) and rec.get("kind") == "eval"
        why = eval_problem(rec) if is_eval else problem(rec)
        if why:
            problems.append(f"{rel}: {why}")
            continue
        (evals if is_eval else entries).append((rel, rec))
    dup = duplicates(entries)
    sup = superseded(entries, dup)
    counted = {r["run_id"]: p for p, r in entries if p not in dup and p not in sup}
    by_id = {r["run_id"]: p for p, r in entries}
    joinable = []
    for rel, ev in evals:
        run = ev["evaluates"]["run_id"]
        if run in counted:
            joinable.append((rel, ev))
        elif run in by_id:
            why = (f"a duplicate ignored (counted: {dup[by_id[run]]})" if by_id[run] in dup
                   else f"superseded by {sup[by_id[run]]}")
            problems.append(f"{rel}: evaluates run {run}, {why}")
        else:
            problems.append(f"{rel}: evaluates run {run}, which is not among these records")
    return Records(entries, problems, dup, joinable, sup)


def superseded(entries: list[tuple[str, dict[str, Any]]],
               dup: dict[str, str]) -> dict[str, str]:
    """Path -> path of the completed, counted run that extends it (``extends.run_id``)."""
    by_id = {r["run_id"]: p for p, r in entries}
    out = {}
    for path, rec in entries:
        prev = (rec.get("extends") or {}).get("run_id")
        if path not in dup and rec["status"] == "completed" and prev in by_id:
            out[by_id[prev]] = path
    return out


def identity(rec: dict[str, Any]) -> str:
    cfg = rec["config"]
    return json.dumps([row_key(cfg), hp_key(cfg), rec["seed"]])


def duplicates(entries: list[tuple[str, dict[str, Any]]]) -> dict[str, str]:
    """Path -> path of the record counted instead: per identity, a completed record before a
    failed one, then the earliest run, then the file at the record's own name
    (``<task>/<layer>/<run_id>.json``) before a copy, then the path."""
    groups: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for path, rec in entries:
        groups[identity(rec)].append((path, rec))
    out = {}
    for group in groups.values():
        group.sort(key=lambda e: (e[1]["status"] != "completed", str(e[1].get("time")),
                                  str(e[1]["run_id"]),
                                  e[0] != f"{e[1]['task']}/{e[1]['layer']}/{e[1]['run_id']}.json",
                                  e[0]))
        out.update({path: group[0][0] for path, _ in group[1:]})
    return out
