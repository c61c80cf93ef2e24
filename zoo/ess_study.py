"""The effective state-size study: does the test accuracy on a key-value slice of the
state-size task track the measured state per pair (ESS / kv, arXiv 2504.19561) better than the
theoretical state per pair (TSS / kv)?

Points: every completed run of a suite's state-size rows (all learning rates and seeds: the
correlation describes trained models, it selects nothing) x each key-value slice, with the
slice's test accuracy and the run's ESS and TSS per pair on that slice
(``record["ess"]["slices"]``, see zoo.ess). Groups, within a suite: all points, the mixers of
fixed state (recurrences, attention windowed below the length: TSS is a capacity they fill),
those of growing state (a KV cache), and each architecture.

Statistics from scipy: Spearman's rho, and Pearson's r against the log of ESS or TSS, each with
a 95% percentile-bootstrap interval (paired resampling of the points, fixed seed, so the
build is deterministic; resamples where the statistic is undefined, e.g. constant accuracy,
are left out). ESS or TSS is called the better predictor only where their Spearman intervals
do not overlap.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from scipy import stats

from .selection import Row, finite

MEASURES = ("ess_per_kv", "tss_per_kv")
FIXED, GROWING = "fixed-state", "growing-state"
MIN_POINTS = 4
RESAMPLES = 2000


def points(rows: list[Row]) -> list[dict[str, Any]]:
    """One point per completed state-size run and slice with accuracy, ESS and TSS per pair."""
    out = []
    for row in (r for r in rows if r.task == "state_size"):
        for r in sorted(row.done, key=lambda r: str(r["run_id"])):
            slices = (r.get("ess") or {}).get("slices") if isinstance(r.get("ess"), dict) else {}
            for name, sl in sorted((slices or {}).items()):
                acc = r["metrics"].get(f"test/acc@{name}")
                if (finite(acc) and isinstance(sl, dict)
                        and all(finite(sl.get(m)) and sl[m] > 0 for m in MEASURES)):
                    out.append({"suite": row.suite, "label": row.label, "width": row.width,
                                "fixed": row.fixed_state, "slice": name, "acc": acc,
                                **{m: sl[m] for m in MEASURES}})
    return out


def resampled_ranks(dense: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Average ranks (1-based, ties sharing their mean rank: ``scipy.stats.rankdata``'s
    default) within each resample ``idx[b]`` of values given by their dense ranks ``dense``
    (0-based). Counting instead of sorting: a resample only repeats the original values, so
    a value's rank is the count of smaller values drawn plus its own count's middle."""
    u = int(dense.max()) + 1
    d = dense[idx]  # [..., n]
    rows = d.reshape(-1, d.shape[-1])
    b = len(rows)
    counts = np.bincount((rows + u * np.arange(b)[:, None]).ravel(),
                         minlength=b * u).reshape(b, u)  # [B, u]
    mean_rank = np.cumsum(counts, axis=1) - counts + (counts + 1) / 2
    return np.take_along_axis(mean_rank, rows, axis=1).reshape(d.shape)


def pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson's r along the last axis (NaN where a side is constant): the bootstrap's
    statistic over thousands of resamples at once, where ``scipy.stats.pearsonr`` would also
    compute a p-value for each (the point estimates use scipy; a test keeps the two equal)."""
    x = x - x.mean(-1, keepdims=True)
    y = y - y.mean(-1, keepdims=True)
    return (x * y).sum(-1) / np.sqrt((x * x).sum(-1) * (y * y).sum(-1))


def correlate(pts: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Spearman and log-linear Pearson of accuracy with ESS and with TSS per pair, each as
    (estimate, 2.5%, 97.5%), or None where undefined; None under ``MIN_POINTS`` points."""
    if len(pts) < MIN_POINTS:
        return None
    ess, tss, acc = (np.array([p[k] for p in pts], dtype=float) for k in (*MEASURES, "acc"))
    dense = [stats.rankdata(v, method="dense") - 1 for v in (ess, tss, acc)]
    logs = [np.log(ess), np.log(tss)]

    def statistics(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        """[Spearman with ESS, with TSS, Pearson with log ESS, with log TSS] of the points
        ``idx`` (a resample, or several along leading axes; ``axis`` is always the last)."""
        ranked = [resampled_ranks(d, idx) for d in dense]
        return np.stack([pearson(r, ranked[2]) for r in ranked[:2]]
                        + [pearson(x[idx], acc[idx]) for x in logs])

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # constant inputs: undefined, reported as such
        est = [stats.spearmanr(x, acc).statistic for x in (ess, tss)] \
            + [stats.pearsonr(x, acc).statistic for x in logs]
        boot = stats.bootstrap((np.arange(len(pts)),), statistics, vectorized=True,
                               n_resamples=RESAMPLES, method="percentile",
                               rng=np.random.default_rng(0)).bootstrap_distribution
        lo, hi = np.nanpercentile(boot, [2.5, 97.5], axis=-1)
    vals = [(float(e), float(a), float(b)) if math.isfinite(e) else None
            for e, a, b in zip(est, lo, hi)]
    return {"n": len(pts), **{m: {"spearman": vals[i], "pearson_log": vals[2 + i]}
                              for i, m in enumerate(MEASURES)}}


def verdict(c: dict[str, Any]) -> str:
    """Which of ESS and TSS per pair ranks accuracy better: only where the Spearman intervals
    separate."""
    e, t = c["ess_per_kv"]["spearman"], c["tss_per_kv"]["spearman"]
    if e is None or t is None:
        return "–"
    if e[1] > t[2]:
        return "ESS"
    if t[1] > e[2]:
        return "TSS"
    return "not separated"


def study(pts: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per suite with points: its groups (all, fixed-state, growing-state, then each
    architecture) and their correlations."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for suite in sorted({p["suite"] or "" for p in pts}, key=lambda s: (not s, s)):
        mine = [p for p in pts if (p["suite"] or "") == suite]
        groups = {"all": mine, FIXED: [p for p in mine if p["fixed"] is True],
                  GROWING: [p for p in mine if p["fixed"] is False]}
        for lab in sorted({p["label"] for p in mine}):
            groups[lab] = [p for p in mine if p["label"] == lab]
        done = {g: correlate(ps) for g, ps in groups.items()}
        out[suite] = {g: c for g, c in done.items() if c is not None}
    return out
