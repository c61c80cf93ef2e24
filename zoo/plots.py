"""The zoo's PNG figures: the leaderboard's, drawn from a ``zoo.selection.Board`` (selected
runs only, except the ESS study, whose points are every trained model), and one model's ESS by
position (``ess_by_position``, for ``python -m zoo.ess``).

    recall_vs_state_size.png    the headline (Zoology's MQAR plot): test accuracy on each
                                key-value slice against state size in bytes, a line per
                                architecture through its widths, a panel per slice
    accuracy_vs_state_size.png  the matrix's suite: test accuracy against state size per task
    length_generalisation.png   accuracy against evaluation length, the training length marked
    ess_vs_accuracy.png         the headline suite's slice accuracy against ESS and TSS per
                                key-value pair: all mixers, fixed-state, growing-state
    icl_by_examples.png         in-context tasks (icl_*): test error (or accuracy) against the
                                number of examples before the query, a line per architecture,
                                the task's reference estimators dashed (Garg et al.'s plot)
    recall_vs_ratio.png         hybrids of attention and one other mixer (experiment=
                                hybrid_recall): test accuracy on each key-value slice against
                                the ratio of that mixer's blocks to attention's, a line per
                                mixer, attention alone at 0:1

One colour (and marker) per architecture label in every figure. Which rows the ratio figure
draws, and on which suite, is ``zoo.hybrid_ratio``'s. ``planned`` says which files
a board yields without drawing (``--check`` uses it); ``draw_all`` draws them. PNGs carry no
timestamp or version metadata, so unchanged records redraw the same bytes on the same
matplotlib.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .ess_study import FIXED, GROWING
from .hybrid_ratio import FULL, ratio_lines, ratio_suite
from .labels import train_length
from .selection import Board, Row, by_setting, by_suite, icl_groups, reference_estimators

PNG_META = {"Software": None}
HEADLINE = "recall_vs_state_size.png"
ICL = "icl_by_examples.png"
RATIO = "recall_vs_ratio.png"
MARKERS = "os^Dv<>P"
PANEL_W, PANEL_H = 4.2, 3.4  # inches


def _length_rows(rows: list[Row]) -> list[Row]:
    return [r for r in rows if len(r.variants("len=")) > 1]


def _slices(rows: list[Row]) -> list[str]:
    return sorted({v for r in rows for v in r.variants("kv=")},
                  key=lambda v: int(v[3:]) if v[3:].isdigit() else 0)


def planned(board: Board, out_dir: Path) -> list[tuple[str, Path]]:
    """(title, path) of each figure the board yields, the headline first."""
    out: list[tuple[str, Path]] = []
    if board.recall:
        out.append((f"Recall against state size: suite {board.recall}, accuracy per "
                    "key-value slice", out_dir / HEADLINE))
    if board.matrix:
        out.append((f"Test accuracy against state size: suite {board.matrix.suite}, per task",
                    out_dir / "accuracy_vs_state_size.png"))
    if _length_rows(board.rows):
        out.append(("Length generalisation: test accuracy against evaluation length",
                    out_dir / "length_generalisation.png"))
    if board.recall and board.study.get(board.recall):
        out.append((f"Slice accuracy against ESS and TSS per key-value pair: suite "
                    f"{board.recall}", out_dir / "ess_vs_accuracy.png"))
    if icl_groups(board.rows):
        out.append(("In-context learning: test error (accuracy) against the number of "
                    "examples, a line per model, the estimators dashed", out_dir / ICL))
    suite = ratio_suite(board.rows)
    if suite:
        out.append((f"Recall against the ratio of linear to attention blocks: suite {suite}, "
                    "accuracy per key-value slice", out_dir / RATIO))
    return out


def styles(labels: list[str], plt: Any) -> dict[str, tuple[Any, str]]:
    """A colour and marker per label, in the order given: tab20's ten dark colours, then its
    ten light ones (neighbours differ in hue), then the next marker."""
    cmap = plt.get_cmap("tab20")
    return {lab: (cmap((2 * i) % 20 + (i // 10) % 2), MARKERS[(i // 20) % len(MARKERS)])
            for i, lab in enumerate(labels)}


def _grid(n: int, plt: Any, cols: int = 3, width: float = PANEL_W,
          height: float = PANEL_H) -> tuple[Any, list[Any]]:
    cols = min(n, cols)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows),
                             squeeze=False)
    flat = [a for row in axes for a in row]
    for a in flat[n:]:
        a.set_visible(False)
    return fig, flat[:n]


def _finish(fig: Any, style: dict[str, tuple[Any, str]], shown: set[str], plt: Any,
            path: Path, title: str | None = None, left: float = 0.07) -> None:
    """A title above and one legend (a colour per label shown) below the panels; fixed
    margins (tight_layout costs a full draw); save; free the figure."""
    handles = [plt.Line2D([], [], color=c, marker=m, ls="-", ms=5, label=lab)
               for lab, (c, m) in sorted(style.items()) if lab in shown]
    ncol = max(1, min(len(handles), int(fig.get_figwidth() // 2.1)))
    legend_rows = -(-len(handles) // ncol)
    height = fig.get_figheight()
    fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=left, right=0.98, top=1 - (0.65 if title else 0.35) / height,
                        bottom=(0.55 + 0.2 * legend_rows) / height, wspace=0.3, hspace=0.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, metadata=PNG_META)
    plt.close(fig)


def _axes(ax: Any, title: str, xlabel: str, ylabel: str, logx: bool = True) -> None:
    if logx:
        ax.set_xscale("log")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel, ylim=(-0.02, 1.02))
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3, lw=0.5)


def _by_label(rows: list[Row]) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = {}
    for r in rows:
        out.setdefault(r.label, []).append(r)
    return dict(sorted(out.items()))


def _recall(board: Board, style: dict[str, tuple[Any, str]], plt: Any, path: Path) -> None:
    rows = [r for r in by_suite(board.rows).get(board.recall, []) if r.test and r.state_bytes]
    slices = _slices(rows)
    fig, axes = _grid(len(slices), plt, cols=2 if len(slices) == 4 else 3)
    for ax, sl in zip(axes, slices):
        for lab, group in _by_label(rows).items():
            pts = sorted((r.state_bytes, r.stat(f"test/acc@{sl}")) for r in group
                         if r.stat(f"test/acc@{sl}"))
            c, m = style[lab]
            ax.errorbar([p[0] for p in pts], [p[1][0] for p in pts],
                        yerr=[p[1][1] for p in pts], color=c, marker=m, ms=4, lw=1,
                        capsize=2)
        _axes(ax, f"{sl.replace('=', ' = ')} key-value pairs", "state size (bytes, fp32)",
              "test accuracy")
    _finish(fig, style, {r.label for r in rows}, plt, path,
            f"suite {board.recall}: one line per architecture through its widths")


def _state(board: Board, style: dict[str, tuple[Any, str]], plt: Any, path: Path) -> None:
    rows = [r for r in board.rows if r.suite == board.matrix.suite and r.test and r.state_bytes]
    settings = by_setting(rows)
    fig, axes = _grid(len(settings), plt)
    for ax, ((task, _), group) in zip(axes, settings.items()):
        for lab, rs in _by_label(group).items():
            c, m = style[lab]
            ax.errorbar([r.state_bytes for r in rs], [r.test[0] for r in rs],
                        yerr=[r.test[1] for r in rs], color=c, marker=m, ms=5, lw=1, ls="none")
        _axes(ax, task, "state size (bytes, fp32)", "test accuracy")
    _finish(fig, style, {r.label for r in rows}, plt, path)


def _lengths(board: Board, style: dict[str, tuple[Any, str]], plt: Any, path: Path) -> None:
    panels = {k: _length_rows(rs) for k, rs in by_suite(board.rows).items()}
    panels = {(s, key): rs for s, srows in panels.items()
              for key, rs in by_setting(srows).items()}
    titles = [f"{task} ({suite or 'no suite'})" for suite, (task, _) in panels]
    titles = [t + (f" #{titles[:i].count(t) + 1}" if titles.count(t) > 1 else "")
              for i, t in enumerate(titles)]
    fig, axes = _grid(len(panels), plt)
    for ax, title, rows in zip(axes, titles, panels.values()):
        for r in rows:
            pts = [(int(v[4:]), r.stat(f"test/acc@{v}")) for v in r.variants("len=")]
            pts = [(x, s[0]) for x, s in pts if s]
            c, m = style[r.label]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=c, marker=m, ms=4, lw=1)
        trained = train_length(rows[0].cfg["task"])
        if isinstance(trained, (int, float)):
            ax.axvline(trained, color="0.4", ls=":", lw=1)
            ax.annotate("trained", (trained, 0.98), fontsize=7, color="0.3",
                        xytext=(3, 0), textcoords="offset points", va="top")
        _axes(ax, title, "evaluation length", "test accuracy", logx=False)
    _finish(fig, style, {r.label for rs in panels.values() for r in rs}, plt, path)


def _fmt_corr(c: dict[str, Any] | None, measure: str) -> str:
    rho = (c or {}).get(measure, {}).get("spearman")
    if not rho:
        return ""
    return f": Spearman {rho[0]:+.2f} [{rho[1]:+.2f}, {rho[2]:+.2f}]"


def _ess(board: Board, style: dict[str, tuple[Any, str]], plt: Any, path: Path) -> None:
    pts = [p for p in board.points if p["suite"] == board.recall]
    groups = {"all mixers": (pts, "all"), FIXED: ([p for p in pts if p["fixed"] is True], FIXED),
              GROWING: ([p for p in pts if p["fixed"] is False], GROWING)}
    corr = board.study.get(board.recall, {})
    fig, axes = _grid(6, plt, cols=2)
    names = {"ess_per_kv": "ESS per key-value pair (floats)",
             "tss_per_kv": "TSS per key-value pair (floats)"}
    for i, (title, (gp, key)) in enumerate(groups.items()):
        for j, measure in enumerate(names):
            ax = axes[2 * i + j]
            for lab in sorted({p["label"] for p in gp}):
                mine = [p for p in gp if p["label"] == lab]
                c, m = style[lab]
                ax.scatter([p[measure] for p in mine], [p["acc"] for p in mine], color=c,
                           marker=m, s=14, alpha=0.8)
            _axes(ax, title + _fmt_corr(corr.get(key), measure), names[measure],
                  "test accuracy of the slice")
    _finish(fig, style, {p["label"] for p in pts}, plt, path)


ESTIMATOR_LINES = ("--", ":", "-.", (0, (5, 1, 1, 1)), (0, (1, 3)), (0, (8, 2)),
                   (0, (3, 1, 1, 1, 1, 1)), (0, (2, 2)))


def _icl(board: Board, style: dict[str, tuple[Any, str]], plt: Any, path: Path) -> None:
    groups = icl_groups(board.rows)
    fig, axes = _grid(len(groups), plt, cols=2, width=6.4, height=4.2)
    for ax, (suite, task, setting, rows) in zip(axes, groups):
        metric = rows[0].own_metric
        refs = reference_estimators(rows)
        same: dict[str, list[str]] = {}  # least squares is ridge without noise: drawn once
        for name, curve in refs.items():
            first = next((k for k in same if refs[k] == curve), None)
            same.setdefault(first or name, []).extend([] if first is None else [name])
        for i, (name, others) in enumerate(same.items()):
            ax.plot(list(refs[name]), list(refs[name].values()), color="0.2", lw=1,
                    ls=ESTIMATOR_LINES[i % len(ESTIMATOR_LINES)],
                    label=" = ".join([name, *others]))
        for r in rows:
            pts = r.by_examples()
            c, m = style[r.label]
            ax.plot(list(pts), [s[0] for s in pts.values()], color=c, marker=m, ms=3, lw=1)
        _axes(ax, f"{task} ({suite or 'no suite'})\n{setting}", "in-context examples n",
              f"test {metric}", logx=False)
        ax.title.set_fontsize(7)
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        # averaging's error near n = 0 runs far above the rest
        ax.set_ylim(*((0, 1.3) if metric == "mse" else (0.45, 1.0)))
        ax.legend(fontsize=6, frameon=False, title="estimators", title_fontsize=6,
                  loc="upper right" if metric == "mse" else "lower right")
    _finish(fig, style, {r.label for g in groups for r in g[3]}, plt, path, left=0.1)


def _pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (files only, no display), imported on first use."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _ratio(board: Board, style: dict[str, tuple[Any, str]], plt: Any, path: Path) -> None:
    suite = ratio_suite(board.rows)
    lines = ratio_lines(by_suite(board.rows)[suite])
    widths, depths = ({k[i] for k in lines} for i in (1, 2))
    names = {k: (k[0] or FULL) + (f" x{k[2]}" if len(depths) > 1 else "")
             + (f" d{k[1]}" if len(widths) > 1 else "") for k in lines}
    own = styles(list(names.values()), plt)
    ratios = sorted({x for v in lines.values() for x in v})
    slices = _slices([r for v in lines.values() for r in v.values()])
    fig, axes = _grid(len(slices), plt, cols=2 if len(slices) == 4 else 3)
    for ax, sl in zip(axes, slices):
        for (words, w, n), points in lines.items():
            if words:  # each line starts at attention alone of its shape, where trained
                points = {**lines.get(("", w, n), {}), **points}
            pts = [(x, r.stat(f"test/acc@{sl}")) for x, r in points.items()]
            pts = [(math.log2(1 + x), st) for x, st in pts if st]  # 0:1, 1:1, 3:1, 7:1 evenly
            c, m = own[names[(words, w, n)]]
            ax.errorbar([p[0] for p in pts], [p[1][0] for p in pts],
                        yerr=[p[1][1] for p in pts], color=c, marker=m, ms=4, lw=1,
                        capsize=2, ls="-" if words else "none")
        _axes(ax, f"{sl.replace('=', ' = ')} key-value pairs", "blocks of the mixer : attention",
              "test accuracy", logx=False)
        ax.set_xticks([math.log2(1 + x) for x in ratios], [f"{x}:1" for x in ratios])
    _finish(fig, own, set(own), plt, path,
            f"suite {suite}: a line per mixer hybridised with attention, by its ratio")


def draw_all(board: Board, out_dir: Path) -> list[tuple[str, Path]]:
    plt = _pyplot()
    todo = planned(board, out_dir)
    style = styles(board.labels, plt)
    draw = {HEADLINE: _recall, "accuracy_vs_state_size.png": _state,
            "length_generalisation.png": _lengths, "ess_vs_accuracy.png": _ess, ICL: _icl,
            RATIO: _ratio}
    for _, path in todo:
        draw[path.name](board, style, plt, path)
    return todo


def ess_by_position(per_layer: list[dict[str, Any] | None], path: Path, title: str = "") -> str:
    """ESS by position of one model (``zoo.ess.layer_ess``'s entries, None for a layer that is
    not a linear operator), one column per linear-operator layer: tolerance-ESS on top,
    entropy-ESS below; each head faint (mean over sequences), the mean over heads bold.
    Returns the line to print."""
    entries = [(i, e) for i, e in enumerate(per_layer) if e is not None]
    if not entries:
        return "no linear-operator layers: no plot written"
    plt = _pyplot()
    fig, axes = plt.subplots(2, len(entries), figsize=(4 * len(entries), 5.5), squeeze=False,
                             sharex=True)
    for col, (i, e) in enumerate(entries):
        res = e["ess"]
        for row, (kind, values) in enumerate([("tolerance", res.tolerance),
                                              ("entropy", res.entropy)]):
            ax, per_head = axes[row][col], values.mean(0)  # [heads, P]
            for h in range(per_head.shape[0]):
                ax.plot(res.positions, per_head[h], lw=0.7, alpha=0.35, color="C0")
            ax.plot(res.positions, per_head.mean(0), lw=2.0, color="C0", label="mean of heads")
            ax.set_ylabel(f"{kind}-ESS")
            if row == 0:
                ax.set_title(f"layer {i}: {e['mixer']} ({e['heads']} heads)")
            else:
                ax.set_xlabel("position")
    axes[0][0].legend(fontsize=7, title="faint: one head", title_fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"plot written to {path}"
